"""The HTTP API's request and response shapes (documentation at /docs, OpenAPI at /openapi.json).

Requests are validated by hand in :mod:`mtl_ray.serving.gateway` (so each error says exactly which
field is wrong and why, including bodies that are not JSON or not UTF-8); these models describe the
API for clients and the OpenAPI document.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    """Exactly one of ``texts`` and ``pairs``; ``tasks`` defaults to every task that takes that input."""

    texts: list[str] | None = Field(None, description="Single texts.", examples=[["a gripping, funny film"]])
    pairs: list[list[str]] | None = Field(
        None, description="Text pairs, each [text, text_pair].", examples=[[["Headline", "Article body"]]]
    )
    tasks: list[str] | None = Field(None, description="Task names (GET /v1/tasks); default: all applicable.")


class ClassPrediction(BaseModel):
    label: str = Field(description="The most probable class.")
    score: float = Field(description="Its probability.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")


class ValuePrediction(BaseModel):
    value: float = Field(description="The regression output, in the training labels' units.")


class EmbeddingPrediction(BaseModel):
    embedding: list[float] = Field(description="L2-normalised sentence embedding (contrastive tasks).")


class PredictResponse(BaseModel):
    predictions: dict[str, list[ClassPrediction | ValuePrediction | EmbeddingPrediction]] = Field(
        description="Per task, one prediction per input, in input order."
    )
    warnings: list[str] = Field(description="E.g. inputs truncated to the task's max_length.")


class TaskInfo(BaseModel):
    name: str
    type: str = Field(description="classification | pair_classification | regression | contrastive")
    input: Literal["texts", "pairs"]
    labels: list[str] | None = Field(description="Class names (classification types).")
    max_length: int = Field(description="Tokens per input; longer inputs are truncated.")


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong with the request.")
