"""Serving: the real app on local Ray Serve, real HTTP, the real `openai` client; `tiny` model.

One app (`c2v-test`, route /, split stages) serves most tests; `c2v-fused` (route /fused) runs both model stages
in one deployment and answers the same API tests; `c2v-secure` (route /secure) has API keys and tight queue limits
for the auth, overload and replica-loss tests. All are deleted, and Serve shut down, at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from causal2vec import Causal2VecError
from causal2vec.tools.processes import free_port

ROOT = Path(__file__).parents[1]
APP, FUSED, SECURE = "c2v-test", "c2v-fused", "c2v-secure"
KEYS_FILE_KEY, ENV_KEY = "file-key-123", "env-key-456"
TEXTS = ["a text editor for the terminal", "network monitoring daemon with a web interface",
         "library for parsing XML documents", "x", "fast compression tool " * 12, "a game of tetris"]
STAGE = {"ray_actor_options": {"num_cpus": 0.1}, "num_replicas": 1}


_TEXT_POOL = [" ".join(np.random.default_rng(i).choice(TEXTS[:3], size=12)) for i in range(64)]


@pytest.fixture(scope="module")
def lancedb_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lancedb")


@pytest.fixture(scope="module")
def serve_url(ray_session, lancedb_dir):
    """Serve on a free port with the main app at / (searching the tables in `lancedb_dir`); yields the base URL."""
    from ray import serve

    from causal2vec.serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": "tiny", "lancedb_uri": str(lancedb_dir), "max_body_bytes": 256 * 1024,
            "encoder": {**STAGE, "max_batch_size": 16, "batch_wait_timeout_s": 0.02},
            "decoder": {**STAGE, "max_batch_tokens": 2048, "batch_wait_timeout_s": 0.02},
            "ingress": STAGE}
    serve.run(build_app(args), name=APP, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    for name in (APP, FUSED, SECURE):
        try:
            serve.delete(name)
        except Exception:  # noqa: BLE001 - the other apps may never have been deployed
            pass
    serve.shutdown()


@pytest.fixture(scope="module")
def fused_url(serve_url):
    """The same API with both model stages in one deployment (and the default 8 MiB body limit)."""
    from ray import serve

    from causal2vec.serve.app import build_app

    args = {"model": "tiny", "stages": "fused", "encoder": {"max_batch_size": 16},
            "decoder": {**STAGE, "max_batch_tokens": 2048, "batch_wait_timeout_s": 0.02}, "ingress": STAGE}
    serve.run(build_app(args), name=FUSED, route_prefix="/fused")
    return f"{serve_url}/fused"


@pytest.fixture(params=["split", "fused"])
def app_url(request) -> str:
    return request.getfixturevalue("serve_url" if request.param == "split" else "fused_url")


@pytest.fixture(scope="module")
def secure_url(serve_url, tmp_path_factory):
    """A second app with API keys (a file and an environment variable) and a decoder that queues almost nothing."""
    from ray import serve

    from causal2vec.serve.app import build_app

    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# comment\n{KEYS_FILE_KEY}\n")
    args = {"model": "tiny", "api_keys_file": str(keys), "api_keys_env": "C2V_TEST_KEYS",
            "encoder": {**STAGE, "max_batch_size": 2, "max_ongoing_requests": 2, "max_queued_requests": 1},
            "decoder": {**STAGE, "max_ongoing_requests": 2, "max_queued_requests": 1},
            "ingress": {**STAGE, "ray_actor_options": {"num_cpus": 0.1,
                                                       "runtime_env": {"env_vars": {"C2V_TEST_KEYS": ENV_KEY}}}}}
    serve.run(build_app(args), name=SECURE, route_prefix="/secure")
    return f"{serve_url}/secure"


def _post(url: str, body, **kwargs) -> httpx.Response:
    """JSON with non-ASCII escaped, as json.dumps writes it: lone surrogates travel as `\\ud800` escapes."""
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(url, content=json.dumps(body), headers=headers, timeout=60, **kwargs)


def _error(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


# -- the OpenAI-compatible API ---------------------------------------------------------------------------------------
def test_openai_client_gets_the_models_vectors_in_float_and_base64(app_url, tiny):
    from openai import OpenAI

    client = OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0)
    expected = tiny.encode(TEXTS)
    # by default the client asks for base64 and decodes it itself; an explicit format comes back as sent
    for fmt in (None, "float", "base64"):
        out = client.embeddings.create(model="tiny", input=TEXTS, **({"encoding_format": fmt} if fmt else {}))
        assert [d.index for d in out.data] == list(range(len(TEXTS)))
        got = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if fmt == "base64" else d.embedding
               for d in out.data]
        np.testing.assert_allclose(np.array(got), expected, atol=1e-5)
    assert out.model == "tiny"
    assert out.usage.prompt_tokens == out.usage.total_tokens == sum(tiny.builder.count_decoder_tokens(TEXTS))

    single = client.embeddings.create(model="tiny", input=TEXTS[0])
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-5)

    # extensions: query-side instruction (or a named task), normalisation
    instruction = "Instruct: find the package\nQuery: "
    out = client.embeddings.create(model="tiny", input=TEXTS[:2], extra_body={"instruction": instruction})
    np.testing.assert_allclose([d.embedding for d in out.data], tiny.encode(TEXTS[:2], instruction=instruction),
                               atol=1e-5)
    from causal2vec.config import QUERY_INSTRUCTION

    out = client.embeddings.create(model="tiny", input=TEXTS[:2], extra_body={"task": "query"})
    np.testing.assert_allclose([d.embedding for d in out.data],
                               tiny.encode(TEXTS[:2], instruction=QUERY_INSTRUCTION), atol=1e-5)
    out = client.embeddings.create(model="tiny", input=TEXTS[:2], extra_body={"normalize": False})
    np.testing.assert_allclose([d.embedding for d in out.data], tiny.encode(TEXTS[:2], normalize=False), atol=1e-5)
    full = client.embeddings.create(model="tiny", input="x", dimensions=tiny.embedding_dim)
    assert len(full.data[0].embedding) == tiny.embedding_dim

    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_concurrent_requests_each_get_their_own_vectors(app_url, tiny):
    """200 concurrent requests of 1..8 texts of mixed lengths, merged into shared batches: no cross-talk."""
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta compiler kernel driver font editor shell parser network daemon".split()
    pool = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 60, size=120)]
    reference = dict(zip(pool, tiny.encode(pool)))
    requests = [list(rng.choice(pool, size=int(n))) for n in rng.integers(1, 9, size=200)]

    async def run():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(client.post(f"{app_url}/v1/embeddings", json={"model": "tiny", "input": r})
                                          for r in requests))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(requests)
    for texts, response in zip(requests, responses):
        got = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(got, np.stack([reference[t] for t in texts]), atol=1e-5)


def test_a_request_larger_than_one_batch_is_split_by_the_ingress(app_url, tiny):
    """100 texts against batches of 16 texts / 2,048 decoder tokens: the ingress sends chunks that fit."""
    texts = [f"package number {i} " + "with a longer description " * (i % 9) for i in range(100)]
    response = _post(f"{app_url}/v1/embeddings", {"model": "tiny", "input": texts})
    assert response.status_code == 200, response.text[:300]
    np.testing.assert_allclose([d["embedding"] for d in response.json()["data"]], tiny.encode(texts), atol=1e-5)


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": "", "model": "tiny"}, 400, "input", None),
    ({"input": [], "model": "tiny"}, 400, "input", None),
    ({"input": ["ok", "   "], "model": "tiny"}, 400, "input", None),
    ({"input": ["ok", 3.5], "model": "tiny"}, 400, "input", None),
    ({"input": {"text": "hi"}, "model": "tiny"}, 400, "input", None),
    ({"model": "tiny"}, 400, "input", None),
    ({"input": "hi"}, 400, "model", None),
    ({"input": "hi", "model": "tiny", "normalise": True}, 400, "normalise", None),
    ({"input": "hi", "model": "tiny", "encoding_format": "int8"}, 400, "encoding_format", None),
    ({"input": [1, 2, 3], "model": "tiny"}, 422, "input", "token_ids_unsupported"),
    ({"input": [[1, 2], [3]], "model": "tiny"}, 422, "input", "token_ids_unsupported"),
    ({"input": "hi", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"input": "hi", "model": "tiny", "dimensions": 64}, 422, "dimensions", "unsupported_dimensions"),
    ({"input": ["hi"] * 257, "model": "tiny"}, 422, "input", "too_many_inputs"),
    ({"input": ["ok", "word " * 400], "model": "tiny", "truncate": False}, 422, "input", "input_too_long"),
    ({"input": "hi", "model": "tiny", "task": "nope"}, 422, "task", "unknown_task"),
    ({"input": "hi", "model": "tiny", "instruction": "please " * 300}, 422, "instruction", None),
    ({"input": ["ok", "bad \ud800 text"], "model": "tiny"}, 400, "input", None),
    ({"input": "hi", "model": "tiny", "instruction": "\udfff"}, 400, "instruction", None),
])
def test_bad_requests_get_the_documented_error(serve_url, body, status, param, code):
    response = _post(f"{serve_url}/v1/embeddings", body)
    assert response.status_code == status, response.text
    error = _error(response)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"


def test_body_size_json_and_routing_errors(serve_url, tiny):
    url = f"{serve_url}/v1/embeddings"
    too_big = _post(url, {"model": "tiny", "input": ["word " * 1000] * 60})  # ~300 KB > 256 KiB
    assert too_big.status_code == 413 and _error(too_big)["code"] == "payload_too_large"
    deep = b'{"model": "tiny", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    huge_int = b'{"model": "tiny", "input": "x", "dimensions": ' + b"9" * 5000 + b"}"
    for raw in (b"{not json", b"[1, 2]", deep, huge_int, b'{"model": "tiny", "input": "x", "\\ud800": 1}'):
        response = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert response.status_code == 400 and _error(response), (raw[:60], response.text[:300])
    assert _error(httpx.get(f"{serve_url}/v1/nothing-here", timeout=60))["message"] == "Not Found"
    # truncate=true (the default) embeds what the truncate=false request refused, as model.encode does
    long_text = "word " * 400
    response = _post(url, {"model": "tiny", "input": long_text})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], tiny.encode([long_text])[0], atol=1e-5)


def test_a_failing_item_does_not_fail_the_requests_batched_with_it(serve_url, tiny):
    """Items the ingress would never send (token ids past the vocabulary) go straight to the deployments, mixed into
    the same batches as good HTTP requests: each bad item fails alone, its neighbours succeed, the replica lives."""
    from ray import serve

    from causal2vec.serve.wire import DecoderCall, TokenRows

    encoder = serve.get_deployment_handle("ContextEncoder", APP)
    decoder = serve.get_deployment_handle("Decoder", APP)
    ctx = np.zeros((1, tiny.hidden_size), dtype=np.float32)
    expected = tiny.encode(TEXTS)
    bad_rows = TokenRows.pack([[10**7, 5]])

    async def run():
        bad = [encoder.remote(bad_rows) for _ in range(4)] + \
              [decoder.remote(DecoderCall(bad_rows, [None], [None], 4), ctx) for _ in range(4)]
        async with httpx.AsyncClient(timeout=120) as client:
            good = [client.post(f"{serve_url}/v1/embeddings", json={"model": "tiny", "input": TEXTS})
                    for _ in range(8)]
            results = await asyncio.gather(*good, *(_awaited(b) for b in bad), return_exceptions=True)
        return results[:8], results[8:]

    good, bad = asyncio.run(run())
    assert all(isinstance(b, Exception) for b in bad), bad
    for response in good:
        assert response.status_code == 200, response.text
        np.testing.assert_allclose([d["embedding"] for d in response.json()["data"]], expected, atol=1e-5)
    after = _post(f"{serve_url}/v1/embeddings", {"model": "tiny", "input": TEXTS[:1]})
    assert after.status_code == 200


async def _awaited(response):
    return await response


def test_the_ingress_merges_concurrent_requests_and_isolates_a_bad_one(serve_url, tiny):
    """The ingress's side of the stages, on the real deployments: requests sent together share calls; one that
    fails in the model (token ids past the vocabulary, which HTTP never lets through) fails alone."""
    from ray import serve

    from causal2vec.serve.config import parse_args
    from causal2vec.serve.stage_calls import StageCalls
    from causal2vec.serve.wire import Prepared

    builder = tiny.builder

    def prepared(texts):
        dec = builder.tokenize_for_decoder(texts)
        return Prepared(builder.tokenize_for_encoder(texts), dec, builder.decoder_lengths(dec)[0], None, None)

    good = [prepared(TEXTS[i:i + 2]) for i in range(0, 6, 2)]
    bad = Prepared([[10**7, 5]], [[10**7, 5]], [4], None, None)

    async def run():
        stages = StageCalls(serve.get_deployment_handle("ContextEncoder", APP),
                            serve.get_deployment_handle("Decoder", APP), parse_args({"model": "tiny"}))
        return await asyncio.gather(*(stages.run(r) for r in [good[0], bad, *good[1:]]), return_exceptions=True)

    out = asyncio.run(run())
    assert isinstance(out[1], Exception) and getattr(out[1], "status", None) == 500, out[1]
    np.testing.assert_allclose(np.concatenate([out[0], *out[2:]]), tiny.encode(TEXTS), atol=1e-5)


def test_requests_arriving_while_the_calls_are_out_go_out_together(serve_url, tiny):
    """With one merged call allowed out and no merging window, 12 requests sent 3 ms apart: the first goes alone,
    the ones that arrive while it is out wait and go out together when it returns (without the cap: ~12 calls)."""
    from ray import serve

    from causal2vec.serve.config import parse_args
    from causal2vec.serve.stage_calls import StageCalls
    from causal2vec.serve.wire import Prepared

    builder = tiny.builder
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(12)]

    async def run(cap: int):
        stages = StageCalls(serve.get_deployment_handle("ContextEncoder", APP),
                            serve.get_deployment_handle("Decoder", APP),
                            parse_args({"model": "tiny", "ingress": {"max_calls_in_flight": cap,
                                                                     "coalesce_wait_s": 0}}))
        pending = []
        for text in texts:
            dec = builder.tokenize_for_decoder([text])
            request = Prepared(builder.tokenize_for_encoder([text]), dec, builder.decoder_lengths(dec)[0], None, None)
            pending.append(asyncio.ensure_future(stages.run(request)))
            await asyncio.sleep(0.003)
        return await asyncio.gather(*pending), stages.calls_sent

    capped, calls = asyncio.run(run(cap=1))
    assert calls <= 4, calls
    np.testing.assert_allclose(np.concatenate(capped), tiny.encode(texts), atol=1e-5)
    assert asyncio.run(run(cap=100))[1] > 6


def test_each_replica_loads_only_its_part_of_the_model(serve_url, tiny):
    """The encoder replica holds no decoder weights and the decoder replica no encoder: counted in the replicas."""
    from ray import serve

    def parameters(module) -> int:
        return sum(p.numel() for p in module.parameters())

    encoder = serve.get_deployment_handle("ContextEncoder", APP).info.remote().result()
    decoder = serve.get_deployment_handle("Decoder", APP).info.remote().result()
    assert (encoder["part"], encoder["parameters"]) == ("encoder", parameters(tiny.context_encoder))
    assert (decoder["part"], decoder["parameters"]) == ("decoder", parameters(tiny.decoder))
    assert encoder["parameters"] + decoder["parameters"] == parameters(tiny)


def test_huge_texts_do_not_hold_up_other_requests(fused_url, tiny):
    """Three ~8 MB single-text requests (under the 8 MiB body limit) and a small one sent meanwhile: the ingress
    reads only what the model can use of each text, off its event loop, so all answer and the small one promptly
    (the ingress tokenized whole texts on its event loop before: 83 s, and the small request waited 82 s)."""
    huge = ["lorem ipsum dolor sit amet " * 300_000] * 3  # 8.1 MB each

    async def run():
        async with httpx.AsyncClient(timeout=300) as client:
            big = [asyncio.ensure_future(client.post(f"{fused_url}/v1/embeddings", json={"model": "tiny", "input": t}))
                   for t in huge]
            await asyncio.sleep(0.2)
            started = time.monotonic()
            small = await client.post(f"{fused_url}/v1/embeddings", json={"model": "tiny", "input": "small"})
            return small, time.monotonic() - started, await asyncio.gather(*big)

    small, waited, big = asyncio.run(run())
    assert small.status_code == 200 and waited < 15, (small.status_code, waited)
    assert [r.status_code for r in big] == [200] * 3, [r.text[:200] for r in big]
    np.testing.assert_allclose(big[0].json()["data"][0]["embedding"], tiny.encode(huge[:1])[0], atol=1e-5)


def test_openapi_document_describes_the_api(serve_url, secure_url):
    doc = httpx.get(f"{serve_url}/openapi.json", timeout=60).json()
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "model"} <= set(body["properties"]) and body["additionalProperties"] is False
    assert "error" in doc["paths"]["/v1/search"]["post"]["responses"]["400"]["content"]["application/json"][
        "schema"]["properties"]
    assert httpx.get(f"{secure_url}/openapi.json", timeout=60).status_code == 401  # behind the key, like the API


def test_health_and_metrics(serve_url):
    health = httpx.get(f"{serve_url}/health", timeout=60)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = httpx.get(f"{serve_url}/metrics", timeout=60)
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    # traffic of its own, so the test does not depend on earlier ones; Ray exports metrics every few seconds
    assert _post(f"{serve_url}/v1/embeddings", {"model": "tiny", "input": TEXTS}).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{serve_url}/metrics", timeout=60).text
        if "causal2vec_requests" in text and "causal2vec_batch_items" in text and "serve_" in text:
            break
        time.sleep(2)
    assert "causal2vec_requests" in text and "causal2vec_batch_items" in text and "serve_" in text


# -- auth and overload -----------------------------------------------------------------------------------------------
def test_api_keys_guard_every_route_but_health(secure_url, tiny):
    from openai import AuthenticationError, OpenAI

    body = {"model": "tiny", "input": "hello"}
    missing = _post(f"{secure_url}/v1/embeddings", body)
    assert missing.status_code == 401 and _error(missing)["code"] == "missing_api_key"
    wrong = _post(f"{secure_url}/v1/embeddings", body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and _error(wrong)["type"] == "authentication_error"
    for route in ("/v1/models", "/metrics"):
        assert httpx.get(f"{secure_url}{route}", timeout=60).status_code == 401
        assert httpx.get(f"{secure_url}{route}", headers={"Authorization": f"Bearer {ENV_KEY}"},
                         timeout=60).status_code == 200
    assert httpx.get(f"{secure_url}/health", timeout=60).status_code == 200

    for key in (KEYS_FILE_KEY, ENV_KEY):
        client = OpenAI(base_url=f"{secure_url}/v1", api_key=key, max_retries=0)
        out = client.embeddings.create(model="tiny", input=["hello"])
        np.testing.assert_allclose(out.data[0].embedding, tiny.encode(["hello"])[0], atol=1e-5)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{secure_url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="tiny",
                                                                                             input="x")


def test_overload_is_503_and_the_app_recovers(secure_url):
    """The secure app's deployments hold 2 items and queue 1: a 64-text request is refused with 503, not queued."""
    headers = {"Authorization": f"Bearer {ENV_KEY}"}
    response = _post(f"{secure_url}/v1/embeddings", {"model": "tiny", "input": [f"text {i}" for i in range(64)]},
                     headers=headers)
    assert response.status_code == 503, response.text[:300]
    assert _error(response)["code"] == "overloaded" and response.headers.get("retry-after")
    time.sleep(float(response.headers["retry-after"]))  # what the 503 asks: the refused request's admitted rows drain
    ok = _post(f"{secure_url}/v1/embeddings", {"model": "tiny", "input": "one"}, headers=headers)
    assert ok.status_code == 200


@pytest.mark.parametrize("app, stage", [(APP, "ContextEncoder"), (APP, "Decoder"), (FUSED, "Model")])
def test_a_lost_replica_is_a_retryable_503_and_health_comes_back(serve_url, fused_url, app, stage):
    """Kill an app's only replica of a stage while clients keep it busy: every answer is a 200 or a 503 with
    Retry-After (a request in flight on the lost replica is never a 500 blamed on the input), /health reports the
    stage not ready until Serve has replaced it, and requests succeed again."""
    import threading

    import ray

    url = serve_url if app == APP else fused_url
    answers: list[httpx.Response] = []
    stop = threading.Event()
    texts = _TEXT_POOL[:32]

    def client():
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                answers.append(http.post(f"{url}/v1/embeddings", json={"model": "tiny", "input": texts}))

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1)
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith(f"SERVE_REPLICA::{app}#{stage}#"))
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed_at = len(answers)
        for _ in range(50):  # ray.kill is asynchronous: the replica may answer a moment longer
            down = httpx.get(f"{url}/health", timeout=60)
            if down.status_code != 200:
                break
            time.sleep(0.2)
        for _ in range(120):
            if httpx.get(f"{url}/health", timeout=60).status_code == 200 and \
                    any(a.status_code == 200 for a in answers[killed_at:]):
                break
            time.sleep(1)
        else:
            pytest.fail("the stage was not replaced and answering within 2 minutes of its replica's death")
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert down.status_code == 503, down.text[:300]
    part = {"ContextEncoder": "encoder", "Decoder": "decoder", "Model": "model"}[stage]
    assert _error(down)["code"] == "not_ready" and part in _error(down)["message"]
    for answer in answers:
        assert answer.status_code == 200 or (answer.status_code == 503 and answer.headers.get("retry-after")), \
            answer.text[:300]


# -- search ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_table(ray_session, lancedb_dir, tmp_path_factory):
    """A table built by the bulk pipeline into the app's LanceDB directory: (name, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from causal2vec.embed.config import load_config
    from causal2vec.embed.job import embed_corpus
    from causal2vec.samples import CORPUS

    rows = pq.read_table(CORPUS).slice(0, 40).to_pylist()
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": str(r["id"]), "text": r["text"]} for r in rows]), path)
    config = load_config(overrides={"model": "tiny", "input": [str(path)], "table": f"{lancedb_dir}::docs",
                                    "stages": "fused", "fts": True, "tokenize.num_cpus": 0.5,
                                    "decoder.num_cpus": 0.5, "batch_size": 16})
    embed_corpus(config)
    return "docs", [{"id": str(r["id"]), "text": r["text"]} for r in rows]


def test_search_finds_a_document_by_its_own_text(serve_url, corpus_table):
    name, rows = corpus_table
    url = f"{serve_url}/v1/search"
    for doc in rows[:5]:
        hits = _post(url, {"query": doc["text"], "table": name, "k": 3}).json()["data"]
        assert hits[0]["id"] == doc["id"], hits
        assert "vector" not in hits[0] and hits[0]["text"] == doc["text"]
    doc = rows[7]
    for mode in ("fts", "hybrid"):
        response = _post(url, {"query": doc["text"], "table": name, "k": 5, "mode": mode})
        assert response.status_code == 200, response.text
        assert doc["id"] in [h["id"] for h in response.json()["data"]]
    only = _post(url, {"query": doc["text"], "table": name, "k": 5, "filter": f"id = '{rows[3]['id']}'"})
    assert [h["id"] for h in only.json()["data"]] == [rows[3]["id"]]


def test_search_refuses_unknown_and_mismatched_tables(serve_url, corpus_table, lancedb_dir, tiny):
    from causal2vec import store

    name, _ = corpus_table
    url = f"{serve_url}/v1/search"
    unknown = _post(url, {"query": "x", "table": "nope"})
    assert unknown.status_code == 404 and _error(unknown)["code"] == "table_not_found"
    assert _post(url, {"query": "x", "table": "../etc"}).status_code == 400
    assert _post(url, {"query": "x", "table": name, "model": "other"}).status_code == 404
    assert _post(url, {"query": "x", "table": name, "mode": "nearest"}).status_code == 400
    assert _post(url, {"query": "x", "table": name, "filter": "no_such_column > 3"}).status_code == 422

    # a table written by another model (same dim, different weights): refused, not silently searched
    identity = store.model_identity(tiny, "tiny")
    other = {**identity, "model": "other", "probe": list(-np.asarray(identity["probe"]))}
    store.connect(str(lancedb_dir)).create_table("foreign", schema=store.table_schema(other))
    mismatch = _post(url, {"query": "x", "table": "foreign"})
    assert mismatch.status_code == 409 and _error(mismatch)["code"] == "model_mismatch"


# -- configuration ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_serve_configs_parse_into_typed_args_and_serves_schema(name):
    from ray.serve.schema import ServeDeploySchema

    from causal2vec.serve.app import parse_args

    config = yaml.safe_load((ROOT / "serve_configs" / name).read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "causal2vec.serve.app:build_app" and not app.deployments
    args = parse_args(app.args)
    for stage in (args.encoder, args.decoder):
        assert stage.autoscaling_config and stage.autoscaling_config["max_replicas"] >= 2
    if name == "gpu.yaml":
        assert args.decoder.ray_actor_options["num_gpus"] >= 1 and args.encoder.ray_actor_options["num_gpus"] < 1
    else:
        assert all(s.ray_actor_options["num_cpus"] < 1 for s in (args.encoder, args.decoder, args.ingress))


def test_build_app_refuses_bad_configs():
    from causal2vec.serve.app import build_app, parse_args

    with pytest.raises(Causal2VecError, match="unknown autoscaling_config key.*max_replica"):
        parse_args({"decoder": {"autoscaling_config": {"max_replica": 4}}})
    with pytest.raises(Causal2VecError, match="not both"):
        parse_args({"encoder": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 4}}})
    with pytest.raises(Causal2VecError, match="max_replicas"):
        parse_args({"encoder": {"autoscaling_config": {"min_replicas": 4, "max_replicas": 2}}})
    with pytest.raises(Causal2VecError, match="stages"):
        parse_args({"stages": "merged"})
    with pytest.raises(Causal2VecError, match="max_decoder_length"):
        build_app({"model": "tiny", "decoder": {"max_batch_tokens": 100}})
    with pytest.raises(Causal2VecError, match="modle: Extra inputs"):
        parse_args({"modle": "tiny"})
