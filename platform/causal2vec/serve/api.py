"""The HTTP ingress: an OpenAI-compatible embeddings API, vector search over LanceDB, models, health, metrics and
its OpenAPI document.

Everything a client can get wrong is checked here (protocol.py), before anything reaches a batch that other
requests share: the ingress parses, validates, tokenizes and checks truncation (in a worker thread: a big request
must not stall the event loop that answers everyone else), then hands the request to StageCalls
(serve/stage_calls.py), which merges it with the requests arriving with it into one call per stage.

The ingress holds no model: the model's LanceDB identity (what search checks tables against) is built at start-up
from the decoder replica's description and a probe text sent through both stages.
"""

# No `from __future__ import annotations` here: Serve pickles the ingress class by value, and FastAPI must see the
# routes' `Request` annotations as objects, not as names it would look up in a pickled, partial module namespace.
import asyncio
import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from ray import serve

from causal2vec import store
from causal2vec.errors import Causal2VecError
from causal2vec.model.sources import ModelSource, load_builder
from causal2vec.readers import text_problem
from causal2vec.serve.config import ServeArgs
from causal2vec.serve.protocol import (APIError, EmbeddingRequest, SearchRequest, encode_vector, jsonable,
                                       lone_surrogate, node_metrics, openapi_routes, parse_texts, read_api_keys,
                                       reason, route_path, validation_error)
from causal2vec.serve.stage_calls import StageCalls
from causal2vec.serve.wire import Prepared
from causal2vec.store.identity import PROBE_TEXT, describe

log = logging.getLogger(__name__)

PUBLIC_PATHS = {"/health"}  # everything else needs a key when keys are configured
ROUTES = {"/v1/embeddings", "/v1/search", "/v1/models", "/health", "/metrics", "/openapi.json"}


@serve.deployment(name="API")  # options (max_ongoing_requests, replicas) come from build_app
@serve.ingress()
class EmbeddingAPI:
    """FastAPI ingress over the encoder and decoder deployments (see the module docstring)."""

    async def __init__(self, encoder, decoder, args: ServeArgs):
        """`decoder` is the Decoder deployment (split) or the one Model deployment (fused); `encoder` is None when
        fused or without a CTX token."""
        self.args = args
        self.stages = StageCalls(encoder, decoder, args)
        self.builder = load_builder(args.model)  # tokenizers + config only: the ingress never runs the model
        self.info = await decoder.info.remote()
        self.api_keys = read_api_keys(args.api_keys_env, args.api_keys_file)
        self._tables: dict[str, Any] = {}
        self._init_metrics()
        probe = (await self.stages.run(self.prepare([PROBE_TEXT], None, True, None)))[0]
        self.identity = describe(self.builder.config, self.info["embedding_dim"], self.info["dtype"], probe,
                                 ModelSource.of(args.model).label)
        log.info("serving %s as %r (dim %d), auth %s", args.model, args.served_model_name,
                 self.info["embedding_dim"], "on" if self.api_keys else "off")

    def _init_metrics(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.m_requests = Counter("causal2vec_requests", description="HTTP requests by route and status.",
                                  tag_keys=("path", "status"))
        self.m_items = Counter("causal2vec_items", description="Texts embedded.")
        self.m_tokens = Counter("causal2vec_prompt_tokens", description="Decoder tokens of the texts embedded.")
        self.m_failures = Counter("causal2vec_failures", description="Failed requests by reason.",
                                  tag_keys=("reason",))
        self.m_latency = Histogram("causal2vec_request_seconds", description="Request latency by route.",
                                   boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
                                   tag_keys=("path",))
        self.m_request_items = Histogram("causal2vec_request_items", description="Texts per embeddings request.",
                                         boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])

    # -- the ASGI app, built per replica so routes see this instance's settings ------------------------------------
    def __serve_build_asgi_app__(self):
        from starlette.exceptions import HTTPException

        app = FastAPI(title="causal2vec", description="OpenAI-compatible embeddings and vector search "
                                                       "(Causal2Vec)", docs_url=None, redoc_url=None,
                      openapi_url="/openapi.json")  # behind the API key when keys are set, like every route

        @app.middleware("http")
        async def guard(request: Request, call_next):
            start = time.perf_counter()
            path = route_path(request)
            try:
                self._check_auth(request, path)
                self._check_size(request)
                response = await call_next(request)
            except APIError as exc:
                response = exc.response()
            except Exception as exc:  # noqa: BLE001 - a bug must still answer in the envelope
                log.exception("unexpected error")
                response = APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()
            status = response.status_code
            route = path if path in ROUTES else "other"  # bounded label values, whatever clients request
            self.m_requests.inc(tags={"path": route, "status": str(status)})
            self.m_latency.observe(time.perf_counter() - start, tags={"path": route})
            if status >= 400:
                self.m_failures.inc(tags={"reason": reason(status)})
            return response

        @app.exception_handler(APIError)
        async def api_error(_: Request, exc: APIError):
            return exc.response()

        @app.exception_handler(HTTPException)
        async def http_error(_: Request, exc: HTTPException):
            return APIError(exc.status_code, str(exc.detail)).response()

        docs = openapi_routes(self.args.served_model_name, sorted(self.args.tasks))

        @app.post("/v1/embeddings", **docs["embeddings"])
        async def embeddings(request: Request):
            body = await self._json(request, EmbeddingRequest)
            return JSONResponse(await self.embed(body))

        @app.post("/v1/search", **docs["search"])
        async def search(request: Request):
            body = await self._json(request, SearchRequest)
            return JSONResponse(await self.search(body))

        @app.get("/v1/models", **docs["other"])
        async def models():
            return {"object": "list", "data": [self._model_card()]}

        @app.get("/v1/models/{name:path}", **docs["other"])
        async def model(name: str):
            self._check_model(name)
            return self._model_card()

        @app.get("/health", **docs["health"])
        async def health():
            problem = await self.stages.not_ready()
            if problem:
                return APIError(503, problem, type="service_unavailable", code="not_ready").response()
            return {"status": "ok", "model": self.args.served_model_name}

        @app.get("/metrics", **docs["other"])
        async def metrics():
            text = await asyncio.to_thread(node_metrics)
            return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

        return app

    # -- checks --------------------------------------------------------------------------------------------------
    def _check_auth(self, request, path: str) -> None:
        if not self.api_keys or path in PUBLIC_PATHS:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "missing API key: send `Authorization: Bearer <key>`", type="authentication_error",
                           code="missing_api_key")
        if not any(hmac.compare_digest(key.strip().encode(), k.encode()) for k in self.api_keys):
            raise APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key")

    def _check_size(self, request) -> None:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.args.max_body_bytes:
            raise APIError(413, f"request body of {int(length)} bytes is over the limit of "
                                f"{self.args.max_body_bytes} bytes; split the input", code="payload_too_large")

    async def _json(self, request, model: type[BaseModel]):
        raw = await request.body()
        if len(raw) > self.args.max_body_bytes:  # a chunked body has no Content-Length
            raise APIError(413, f"request body is over the limit of {self.args.max_body_bytes} bytes; split the "
                                "input", code="payload_too_large")
        return await asyncio.to_thread(_parse_body, raw, model)  # megabytes of JSON: off the event loop

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.args.served_model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.args.served_model_name!r}", param="model", code="model_not_found")

    def _instruction(self, instruction: str | None, task: str | None) -> str | None:
        if task is None:
            return instruction or None
        if instruction is not None:
            raise APIError(422, "pass `instruction` or `task`, not both", param="task")
        if task not in self.args.tasks:
            raise APIError(422, f"unknown task {task!r}; known tasks: {', '.join(sorted(self.args.tasks))}",
                           param="task", code="unknown_task")
        return self.args.tasks[task] or None

    def _model_card(self) -> dict:
        return {"id": self.args.served_model_name, "object": "model", "created": 0, "owned_by": "causal2vec",
                "embedding_dim": self.info["embedding_dim"], "max_input_tokens": self.info["max_decoder_length"],
                "fingerprint": self.info["fingerprint"]}

    # -- embeddings ----------------------------------------------------------------------------------------------
    def prepare(self, texts: list[str], instruction: str | None, truncate: bool, normalize: bool | None) -> Prepared:
        """Tokenize for both stages and check lengths (CPU work: callers on the event loop run it in a thread)."""
        builder = self.builder
        try:
            dec_ids = builder.tokenize_for_decoder(texts)
            lengths, dec_truncated = builder.decoder_lengths(dec_ids, instruction)
            enc_ids = builder.tokenize_for_encoder(texts) if builder.config.use_ctx_token else None
            enc_truncated = builder.encoder_truncated(enc_ids) if enc_ids is not None else [False] * len(texts)
        except Causal2VecError as exc:
            raise APIError(422, str(exc), param="instruction") from exc
        if not truncate:
            over = next((i for i, (a, b) in enumerate(zip(dec_truncated, enc_truncated)) if a or b), None)
            if over is not None:
                cfg = builder.config
                raise APIError(422, f"`input[{over}]` is longer than the model's limit of {cfg.max_decoder_length} "
                                    f"decoder / {cfg.max_encoder_length} encoder tokens; shorten it or send "
                                    "truncate=true", param="input", code="input_too_long")
        return Prepared(enc_ids, dec_ids, lengths, instruction, normalize)

    async def embed(self, body: EmbeddingRequest) -> dict:
        self._check_model(body.model)
        texts = parse_texts(body.input)
        if len(texts) > self.args.max_items_per_request:
            raise APIError(422, f"{len(texts)} inputs is over the limit of {self.args.max_items_per_request} per "
                                "request; split the request", param="input", code="too_many_inputs")
        dim = self.info["embedding_dim"]
        if body.dimensions is not None and body.dimensions != dim:
            raise APIError(422, f"this model produces {dim}-dimensional embeddings and declares no shorter sizes "
                                "(the leading dimensions of [h_ctx ; h_eos] are all CTX, so slicing would be "
                                f"wrong); omit `dimensions` or send {dim}", param="dimensions",
                           code="unsupported_dimensions")
        instruction = self._instruction(body.instruction, body.task)
        request = await asyncio.to_thread(self.prepare, texts, instruction, body.truncate, body.normalize)
        self.m_request_items.observe(len(texts))
        vectors = await self.stages.run(request)
        self.m_items.inc(len(texts))
        self.m_tokens.inc(request.tokens)
        return {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                         for i, v in enumerate(vectors)],
                "model": self.args.served_model_name,
                "usage": {"prompt_tokens": request.tokens, "total_tokens": request.tokens}}

    # -- search --------------------------------------------------------------------------------------------------
    async def search(self, body: SearchRequest) -> dict:
        self._check_model(body.model)
        if not self.args.lancedb_uri:
            raise APIError(404, "search is not configured on this server (no lancedb_uri)", code="no_search")
        if problem := text_problem(body.query):
            raise APIError(400, f"`query` is {problem}", param="query")
        table = await asyncio.to_thread(self._table, body.table)
        instruction = self._instruction(body.instruction, body.task)
        vector = None
        if body.mode != "fts":
            request = await asyncio.to_thread(self.prepare, [body.query], instruction, True, None)
            vector = (await self.stages.run(request))[0]
        try:
            rows = await asyncio.to_thread(store.search, table, self.identity, body.query, k=body.k, mode=body.mode,
                                           filter=body.filter, query_vector=vector)
        except Causal2VecError as exc:
            raise APIError(422, str(exc), param="filter" if body.filter else "mode") from exc
        return {"object": "list", "data": [jsonable(r) for r in rows], "model": self.args.served_model_name,
                "table": body.table, "mode": body.mode}

    def _table(self, name: str):
        """A table under lancedb_uri, checked against the served model (409 on a mismatch); handles are cached,
        and re-checked out on use so rows appended since are seen."""
        if not name or "/" in name or "\\" in name or "::" in name or name.startswith("."):
            raise APIError(400, f"invalid table name {name!r}", param="table")
        table = self._tables.get(name)
        if table is not None:
            table.checkout_latest()
            return table
        try:
            table = store.open_table(f"{self.args.lancedb_uri}::{name}")
        except Causal2VecError as exc:
            raise APIError(404, f"no table {name!r} under this server's LanceDB directory", param="table",
                           code="table_not_found") from exc
        try:
            store.check_model(table, self.identity)
        except Causal2VecError as exc:
            raise APIError(409, str(exc), param="table", code="model_mismatch") from exc
        self._tables[name] = table
        return table


def _parse_body(raw: bytes, model: type[BaseModel]):
    """A request body as `model`: 400 for anything that is not a JSON object of valid Unicode (JSON nested past
    Python's recursion limit and integers of thousands of digits are refused by the parser, not crashed on)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise APIError(400, f"the body is not valid JSON: {why}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    where = lone_surrogate(data)
    if where is not None:
        raise APIError(400, f"`{where}` is not valid Unicode (a lone UTF-16 surrogate escape such as \\ud800)",
                       param=where.partition("[")[0] or None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc
