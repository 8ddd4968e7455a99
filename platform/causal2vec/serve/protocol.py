"""The HTTP side of the ingress: OpenAI's error envelope, the request bodies and their checks, API keys, and the
small conversions between HTTP and the model stages.

Errors use OpenAI's envelope {"error": {"message", "type", "param", "code"}}:
400 malformed/empty input, 401 auth, 404 unknown model/table/route, 413 body over the limit, 422 semantic
(token-id input, too many items, over-long input with truncate=false, unsupported `dimensions`, unknown task,
mismatched table), 503 overloaded (Serve back-pressure) or not ready.
"""

# No `from __future__ import annotations` (see api.py): Serve pickles the ingress, and these types with it.
import base64
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from causal2vec.config import SearchMode, problems
from causal2vec.errors import Causal2VecError
from causal2vec.readers import text_problem, unicode_problem

log = logging.getLogger(__name__)


class APIError(Exception):
    """An HTTP error in OpenAI's envelope."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


# -- request bodies -----------------------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request plus `instruction` / `task`, `truncate` and `normalize`."""

    model_config = ConfigDict(extra="forbid")

    input: Any
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    instruction: str | None = None
    task: str | None = None
    truncate: bool = True
    normalize: bool | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    table: str
    k: int = Field(10, ge=1, le=1000)
    filter: str | None = None
    mode: SearchMode = "vector"
    model: str | None = None
    instruction: str | None = None
    task: str | None = None


def parse_texts(value: Any) -> list[str]:
    """`input` as a list of embeddable strings; token ids get a 422 (the model has two tokenizers)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise APIError(400, "`input` must be a string or a list of strings", param="input")
    if not value:
        raise APIError(400, "`input` is an empty list; send at least one string", param="input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or \
            all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
        raise APIError(422, "token-id input is not supported: a Causal2Vec model has two tokenizers (encoder and "
                            "decoder), so send text", param="input", code="token_ids_unsupported")
    for i, text in enumerate(value):
        problem = text_problem(text)
        if problem:
            raise APIError(400, f"`input[{i}]` is {problem}", param="input")
    return value


def lone_surrogate(data: Any) -> str | None:
    """Where parsed JSON holds a string (or key) that is not valid Unicode, e.g. `input[3]`; None if nowhere. Such a
    string fails the tokenizer and cannot even be echoed back in an error, so the whole body is refused up front.
    Iterative: the parser already accepted the nesting depth."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and unicode_problem(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not key.isascii() and unicode_problem(key):
                    return f"a key of {path or 'the body'}"
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def validation_error(exc: ValidationError) -> APIError:
    """A request body pydantic refused, as a 400 naming its first problem."""
    param, kind, message = problems(exc)[0]
    param = param or None
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument: {param}", param=param)
    if kind == "missing":
        return APIError(400, f"missing required argument: {param}", param=param)
    return APIError(400, f"invalid value for {param}: {message}", param=param)


def encode_vector(vector: np.ndarray, encoding_format: str):
    if encoding_format == "base64":  # little-endian float32, what the OpenAI client decodes
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def read_api_keys(env_name: str | None, path: str | None) -> set[str]:
    keys: set[str] = set()
    if env_name and os.environ.get(env_name):
        keys |= {k.strip() for k in os.environ[env_name].split(",") if k.strip()}
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise Causal2VecError(f"api_keys_file {path!r} does not exist on this node")
        keys |= {line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")}
    return keys


def model_error(exc: BaseException) -> APIError:
    """A failure from the model deployments, as the client should see it: a lost replica or an overload is a
    retryable 503 with Retry-After, never blamed on the input."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    chain = _causes(exc)
    if any(isinstance(e, BackPressureError) for e in chain):
        return APIError(503, "the server is overloaded; retry after a short wait", type="overloaded_error",
                        code="overloaded", headers={"Retry-After": "1"})
    if any(isinstance(e, (RayActorError, ActorUnavailableError)) for e in chain):  # killed, or its node was lost
        return APIError(503, "a model replica was lost while serving this request; retry", type="service_unavailable",
                        code="replica_lost", headers={"Retry-After": "1"})
    if any(isinstance(e, DeploymentUnavailableError) for e in chain):
        return APIError(503, "the model is not available", type="service_unavailable", code="not_ready",
                        headers={"Retry-After": "5"})
    cause = chain[-1]
    if any(isinstance(e, Causal2VecError) for e in chain):
        return APIError(422, str(next(e for e in chain if isinstance(e, Causal2VecError))).splitlines()[-1])
    log.error("model call failed: %r", exc)
    return APIError(500, f"the model failed on this input ({type(cause).__name__})", type="server_error")


def _causes(exc: BaseException) -> list[BaseException]:
    """An exception and what it wraps (Ray's `.cause`, Python's __cause__), outermost first; bounded."""
    chain = [exc]
    while len(chain) < 10:
        inner = getattr(chain[-1], "cause", None) or chain[-1].__cause__
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    return chain


def openapi_routes(model: str, tasks: list[str]) -> dict[str, dict]:
    """The OpenAPI details FastAPI cannot see (the routes read raw bodies to check them themselves): request body
    schemas (with the one model this server serves and its task names) and the error envelope, for clients and
    fuzzers reading /openapi.json."""
    error = {"content": {"application/json": {"schema": ERROR_SCHEMA}}}
    errors = {str(code): {"description": text, **error} for code, text in (
        (400, "malformed input"), (401, "missing or invalid API key"), (404, "unknown model, table or route"),
        (413, "body over the limit"), (422, "valid JSON the model cannot serve"),
        (503, "overloaded, or a replica lost: retry after Retry-After"))}

    def body(request: type[BaseModel]) -> dict:
        schema = request.model_json_schema()
        schema["properties"]["model"] = {"type": "string", "enum": [model]}
        if "input" in schema["properties"]:  # the model reads `Any` to give its own errors; clients send text
            text = {"type": "string", "minLength": 1}
            schema["properties"]["input"] = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1}]}
        schema["properties"]["task"] = {"anyOf": [{"type": "string", "enum": tasks}, {"type": "null"}]}
        content = {"application/json": {"schema": schema}}
        return {"openapi_extra": {"requestBody": {"required": True, "content": content}}, "responses": errors}

    return {"embeddings": body(EmbeddingRequest), "search": body(SearchRequest), "other": {"responses": errors},
            "health": {"responses": {"503": {"description": "a stage is not ready", **error}}}}


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def route_path(request) -> str:
    """The path inside this app (the route prefix stripped), for auth and metric tags."""
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def reason(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "model_mismatch", 413: "too_large",
            422: "invalid_input", 429: "rate_limited", 503: "unavailable"}.get(status, f"http_{status}")


async def awaitable(response):
    return await response


def jsonable(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, (np.floating, np.integer)):
            value = value.item()
        out[key] = value
    return out


def node_metrics() -> str:
    """This node's Prometheus metrics (Serve's own and ours) from Ray's metrics export port."""
    import urllib.request

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
