"""The ingress's logic, without Ray: authorize, parse and validate, tokenize, call the encoder once per
chunk, fan out to the requested heads concurrently, merge.

A :class:`Backend` is whatever computes: Serve deployment handles in production
(:mod:`mtl_ray.ray.serve.deployments`), in-process :mod:`~mtl_ray.serving.parts` in unit tests. Every
problem with a request is an :class:`ApiError` with an HTTP status and a message naming the field.

Imports no torch (the ingress replica runs without it): the tokenizer is a
:class:`~mtl_ray.serving.text_tokenizer.CheckpointTokenizer`, tasks are
:class:`~mtl_ray.serving.served_task.ServedTask` (or anything with the same attributes).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mtl_ray.inference.selection import select_tasks
from mtl_ray.serving.config import LimitsConfig
from mtl_ray.serving.wire import Encoded, TokenBatch

logger = logging.getLogger(__name__)

REQUEST_FIELDS = ("texts", "pairs", "tasks")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class TaskLike(Protocol):
    """What the gateway reads of a task (:class:`~mtl_ray.serving.served_task.ServedTask`, ``TaskSpec``)."""

    @property
    def is_pair(self) -> bool: ...

    @property
    def supervised(self) -> bool: ...

    @property
    def max_length(self) -> int: ...


class Tokenizer(Protocol):
    def tokenize(self, inputs: Sequence[Any], is_pair: bool, max_length: int) -> tuple[TokenBatch, list[bool]]: ...


class Backend(Protocol):
    """What computes. The encoder's result goes to the heads in one hop: ``submit_encode`` starts the
    encoder call and returns its *pending* result (a Serve ``DeploymentResponse``), which each head call
    takes as is; the ingress never holds the arrays. ``resolve`` reads a pending result, only to tell a
    dead encoder from a dead head after a failed head call."""

    def submit_encode(self, batch: TokenBatch) -> Any: ...

    async def resolve(self, pending: Any) -> Encoded: ...

    async def predict(self, task: str, pending: Any) -> list[dict[str, Any]]: ...

    async def spec(self, task: str) -> dict[str, Any]: ...


@dataclass
class _Chunk:
    """One encoder call and its retries, shared by the head calls reading it."""

    batch: TokenBatch
    pending: Any
    attempt: int = 0  # encoder attempts so far beyond the first
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class ParsedRequest:
    inputs: list[Any]  # str texts or [text, text_pair] pairs
    is_pair: bool
    tasks: list[str] | None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _list_refs(field: str, indices: Sequence[int], limit: int = 5) -> str:
    refs = ", ".join(f"{field}[{i}]" for i in indices[:limit])
    return refs + (f" (+{len(indices) - limit} more)" if len(indices) > limit else "")


class Gateway:
    """One per ingress replica. ``specs``: the served tasks as the ingress tokenizes for them."""

    def __init__(
        self,
        specs: Mapping[str, TaskLike],
        tokenizer: Tokenizer,
        backend: Backend,
        limits: LimitsConfig | None = None,
        *,
        max_batch_size: int = 32,
        api_key: str | None = None,
        retries: int = 1,
        retryable: tuple[type[BaseException], ...] = (),
    ):
        self.specs = dict(specs)
        self.tokenizer = tokenizer
        self.backend = backend
        self.limits = limits or LimitsConfig()
        self.max_batch_size = max_batch_size
        self.api_key = api_key
        self.retries = retries
        self.retryable = retryable
        self.on_request: Any = None  # optional zero-argument callable run at the start of every request

    def request_started(self) -> None:
        if self.on_request is not None:
            self.on_request()

    def add_task(self, name: str, spec: TaskLike) -> None:
        """Serve ``name`` from now on (its head must already answer through the backend)."""
        self.specs[name] = spec

    def remove_task(self, name: str) -> None:
        self.specs.pop(name, None)

    # ------------------------------------------------------------------ auth

    def authorize(self, headers: Mapping[str, str]) -> None:
        """401 unless auth is off or ``X-API-Key`` / ``Authorization: Bearer`` carries the key."""
        if self.api_key is None:
            return
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, token = (headers.get("authorization") or "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        challenge = {"WWW-Authenticate": 'Bearer realm="mtl-ray"'}
        if not given:
            raise ApiError(
                401, "missing API key: send header 'X-API-Key: <key>' or 'Authorization: Bearer <key>'", challenge
            )
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "invalid API key", challenge)

    # ------------------------------------------------------------------ parsing and validation

    def parse(self, body: bytes) -> ParsedRequest:
        """Body bytes -> a validated request (400 unreadable, 413 too large, 422 invalid)."""
        limit = self.limits.max_body_bytes
        if len(body) > limit:
            raise ApiError(413, f"request body is {len(body)} bytes; the limit is {limit} (limits.max_body_bytes)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(
                400, f"request body is not valid UTF-8 (byte {body[exc.start]:#04x} at offset {exc.start})"
            ) from None
        if not text.strip():
            raise ApiError(400, 'empty request body; send JSON like {"texts": ["..."]}')
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        except RecursionError:  # [[[[... thousands deep: the parser's recursion limit, not a server fault
            raise ApiError(400, "request body is nested too deeply to parse; a request is one flat object") from None
        except ValueError as exc:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        return self.validate(data)

    def validate(self, data: Any) -> ParsedRequest:
        if not isinstance(data, dict):
            raise ApiError(422, f'the body must be a JSON object like {{"texts": ["..."]}}, got {_type_name(data)}')
        unknown = sorted(set(data) - set(REQUEST_FIELDS))
        if unknown:
            raise ApiError(
                422, f"unknown field(s) {', '.join(map(repr, unknown))}; expected: texts or pairs, and optionally tasks"
            )
        has_texts, has_pairs = data.get("texts") is not None, data.get("pairs") is not None
        if has_texts == has_pairs:
            which = "both" if has_texts else "neither"
            raise ApiError(
                422,
                f"give exactly one of 'texts' (a list of strings) or 'pairs' (a list of [text, text_pair]); got {which}",
            )
        field = "pairs" if has_pairs else "texts"
        items = data[field]
        if not isinstance(items, list):
            raise ApiError(422, f"'{field}' must be an array, got {_type_name(items)}")
        if not items:
            raise ApiError(422, f"'{field}' is empty; give at least one input")
        limit = self.limits.max_inputs_per_request
        if len(items) > limit:
            raise ApiError(
                413,
                f"'{field}' has {len(items)} inputs; the limit per request is {limit} (limits.max_inputs_per_request)",
            )
        inputs = [self._check_pair(i, p) for i, p in enumerate(items)] if has_pairs else items
        if not has_pairs:
            for i, t in enumerate(items):
                self._check_text(f"texts[{i}]", t)
        tasks = data.get("tasks")
        if tasks is not None:
            if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                raise ApiError(422, f"'tasks' must be an array of task names, got {_type_name(tasks)}")
            if not tasks:
                raise ApiError(422, "'tasks' is empty; omit it for every applicable task")
        return ParsedRequest(inputs=inputs, is_pair=has_pairs, tasks=tasks)

    def _check_text(self, where: str, text: Any) -> None:
        if not isinstance(text, str):
            raise ApiError(422, f"{where}: expected a string, got {_type_name(text)}")
        if not text.strip():
            raise ApiError(422, f"{where}: empty text")
        try:  # JSON may escape a lone surrogate (\ud800): valid JSON, not text any tokenizer can read
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(
                422, f"{where}: holds an unpaired UTF-16 surrogate ({text[exc.start]!r} at character {exc.start})"
            ) from None

    def _check_pair(self, i: int, pair: Any) -> list[str]:
        if not isinstance(pair, list):
            raise ApiError(422, f"pairs[{i}]: expected [text, text_pair], got {_type_name(pair)}")
        if len(pair) != 2:
            raise ApiError(422, f"pairs[{i}]: expected exactly 2 texts [text, text_pair], got {len(pair)}")
        for j, t in enumerate(pair):
            self._check_text(f"pairs[{i}][{j}]", t)
        return list(pair)

    def resolve_tasks(self, is_pair: bool, tasks: Sequence[str] | None) -> list[str]:
        """The Predictor's rule (:func:`mtl_ray.inference.selection.select_tasks`), as 422 errors."""
        return select_tasks(self.specs, is_pair, tasks, lambda msg: ApiError(422, msg))

    # ------------------------------------------------------------------ prediction

    def prepare(self, req: ParsedRequest, names: Sequence[str]) -> tuple[list[TokenBatch], list[str]]:
        """Clip over-long texts, tokenize in chunks of at most ``max_batch_size``; warnings say what was cut."""
        max_chars = self.limits.max_chars_per_text
        clipped: list[int] = []

        def clip(i: int, text: str) -> str:
            if len(text) > max_chars:
                clipped.append(i)
                return text[:max_chars]
            return text

        if req.is_pair:
            inputs: list[Any] = [[clip(i, a), clip(i, b)] for i, (a, b) in enumerate(req.inputs)]
        else:
            inputs = [clip(i, t) for i, t in enumerate(req.inputs)]
        max_length = max(self.specs[t].max_length for t in names)
        batches, truncated = [], []
        for start in range(0, len(inputs), self.max_batch_size):
            batch, cut = self.tokenizer.tokenize(inputs[start : start + self.max_batch_size], req.is_pair, max_length)
            batches.append(batch)
            truncated += [start + i for i, c in enumerate(cut) if c]
        field = "pairs" if req.is_pair else "texts"
        warnings = []
        if clipped:
            clipped = sorted(set(clipped))
            warnings.append(
                f"{_list_refs(field, clipped)}: longer than {max_chars} characters; only the first {max_chars} "
                "were read (limits.max_chars_per_text)"
            )
        if truncated:
            warnings.append(f"{_list_refs(field, truncated)}: truncated to {max_length} tokens (the tasks' max_length)")
        return batches, warnings

    async def predict(self, req: ParsedRequest) -> dict[str, Any]:
        """``{"predictions": {task: [...]}, "warnings": [...]}`` — the same dicts as ``Predictor.predict``."""
        self.request_started()
        names = self.resolve_tasks(req.is_pair, req.tasks)
        batches, warnings = await asyncio.to_thread(self.prepare, req, names)
        chunks = [_Chunk(b, self.backend.submit_encode(b)) for b in batches]
        per_task = await asyncio.gather(*(self._predict(t, c) for t in names for c in chunks))
        predictions: dict[str, list[dict[str, Any]]] = {t: [] for t in names}
        for k, result in enumerate(per_task):  # task-major order, as gathered
            predictions[names[k // len(chunks)]].extend(result)
        return {"predictions": predictions, "warnings": warnings}

    async def _predict(self, task: str, chunk: _Chunk) -> list[dict[str, Any]]:
        """One head call on one chunk's pending encoder result. A replica that died mid-call gets
        ``retries`` more attempts: the head's, or, when the encoder died (its result fails to read), the
        encoder's, re-submitted once for all heads of the chunk. Then 503 naming which one."""
        head_attempt = 0
        while True:
            pending = chunk.pending
            try:
                return await self.backend.predict(task, pending)
            except self.retryable as exc:
                async with chunk.lock:
                    if chunk.pending is pending and await self._encoder_died(pending):
                        if chunk.attempt == self.retries:
                            logger.warning("the encoder unavailable after %d attempts: %r", chunk.attempt + 1, exc)
                            raise ApiError(503, "the encoder is temporarily unavailable; retry shortly") from None
                        chunk.attempt += 1
                        logger.info("the encoder failed (%s); retrying", type(exc).__name__)
                        await asyncio.sleep(0.05 * chunk.attempt)
                        chunk.pending = self.backend.submit_encode(chunk.batch)
                        continue
                if chunk.pending is pending:  # the head died, not the encoder
                    if head_attempt == self.retries:
                        logger.warning("task %r unavailable after %d attempts: %r", task, head_attempt + 1, exc)
                        raise ApiError(503, f"task {task!r} is temporarily unavailable; retry shortly") from None
                    head_attempt += 1
                    logger.info("task %r failed (%s); retrying", task, type(exc).__name__)
                    await asyncio.sleep(0.05 * head_attempt)

    async def _encoder_died(self, pending: Any) -> bool:
        try:
            await self.backend.resolve(pending)
        except self.retryable:
            return True
        return False

    async def task_list(self) -> dict[str, Any]:
        """The served tasks; labels come from the heads (a replaced head may have new class names)."""
        self.request_started()
        names = sorted(self.specs)
        specs = await asyncio.gather(*(self._call(f"task {t!r}", self.backend.spec, t) for t in names))
        return {
            "tasks": [
                {
                    "name": t,
                    "type": s["type"],
                    "input": "pairs" if self.specs[t].is_pair else "texts",
                    "labels": s.get("label_names"),
                    "max_length": s["max_length"],
                }
                for t, s in zip(names, specs)
            ]
        }

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, retried when its replica died mid-call; 503 when it stays unavailable."""
        for attempt in range(self.retries + 1):
            try:
                return await fn(*args)
            except self.retryable as exc:
                if attempt == self.retries:
                    logger.warning("%s unavailable after %d attempts: %r", what, attempt + 1, exc)
                    raise ApiError(503, f"{what} is temporarily unavailable; retry shortly") from None
                logger.info("%s failed (%s); retrying", what, type(exc).__name__)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


class LocalBackend:
    """In-process :class:`Backend` over :mod:`~mtl_ray.serving.parts` (unit tests, debugging)."""

    def __init__(self, encoder: Any, heads: Mapping[str, Any]):
        self.encoder = encoder  # EncoderPart
        self.heads = dict(heads)  # task -> LeanHead | HeadPart

        self.resolved = 0  # encoder results read by the gateway itself (only to diagnose a failure)

    async def encode(self, batch: TokenBatch) -> Encoded:
        return self.encoder.encode([batch])[0]

    def submit_encode(self, batch: TokenBatch) -> asyncio.Task:
        return asyncio.ensure_future(self.encode(batch))

    async def resolve(self, pending: asyncio.Task) -> Encoded:
        self.resolved += 1
        return await pending

    async def predict(self, task: str, pending: asyncio.Task) -> list[dict[str, Any]]:
        return self.heads[task].predict(await pending)

    async def spec(self, task: str) -> dict[str, Any]:
        head = self.heads[task]  # LeanHead (.task, a ServedTask) or HeadPart (.spec, a TaskSpec)
        return head.task.to_dict() if hasattr(head, "task") else head.spec.to_dict()
