"""The FastAPI app around a :class:`~mtl_ray.serving.gateway.Gateway`: routes, auth, error bodies, OpenAPI.

    POST /v1/predict   {"texts": [...]} | {"pairs": [[a, b], ...]}, optional "tasks"
    GET  /v1/tasks     served tasks: names, types, input kind, labels, max_length
    GET  /healthz      liveness of the ingress (no auth, for load balancers)
    GET  /docs         OpenAPI UI (no auth; it holds the schema, no data)

Built per ingress replica (``__serve_build_asgi_app__``), and in unit tests with ``TestClient``.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer

import mtl_ray
from mtl_ray.serving.gateway import ApiError, Gateway
from mtl_ray.serving.schemas import ErrorResponse, HealthResponse, PredictRequest, PredictResponse, TasksResponse

logger = logging.getLogger(__name__)

_ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Body is not UTF-8 JSON",
        401: "Missing or invalid API key (when auth is on)",
        413: "Body or number of inputs over the limit",
        422: "Invalid request: wrong types, empty inputs, unknown task, task of the other input kind",
        503: "A deployment is temporarily unavailable",
    }.items()
}


# Declared for the OpenAPI document ("Authorize" in /docs); the gateway does the checking.
_API_KEY = Security(APIKeyHeader(name="X-API-Key", auto_error=False))
_BEARER = Security(HTTPBearer(auto_error=False))


def build_http_api(gateway: Gateway) -> FastAPI:
    api = FastAPI(
        title="mtl-ray",
        version=mtl_ray.__version__,
        description="Multi-task NLP: one shared encoder pass per request, one head per task.",
    )

    async def require_key(request: Request, _k: str | None = _API_KEY, _b: object = _BEARER) -> None:
        gateway.authorize(request.headers)

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        # A message may quote the client's input; lone surrogates in it would not encode as UTF-8.
        detail = exc.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return JSONResponse({"detail": detail}, status_code=exc.status, headers=exc.headers)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @api.get("/healthz", response_model=HealthResponse, tags=["ops"])
    async def healthz() -> dict:
        gateway.request_started()
        return {"status": "ok"}

    @api.get(
        "/v1/tasks", response_model=TasksResponse, dependencies=[Depends(require_key)], responses=_ERRORS, tags=["v1"]
    )
    async def tasks() -> dict:
        return await gateway.task_list()

    @api.post(
        "/v1/predict",
        dependencies=[Depends(require_key)],
        responses={200: {"model": PredictResponse, "description": "Predictions per task"}, **_ERRORS},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
        tags=["v1"],
    )
    async def predict(request: Request) -> JSONResponse:
        # Read and validated by hand, so non-JSON / non-UTF-8 bodies get a precise 400.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > gateway.limits.max_body_bytes:
            raise ApiError(
                413,
                f"request body is {length} bytes; the limit is {gateway.limits.max_body_bytes} (limits.max_body_bytes)",
            )
        parsed = gateway.parse(await request.body())
        return JSONResponse(await gateway.predict(parsed))

    return api
