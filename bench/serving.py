"""What the serving benches share: a local Ray + Serve on a free loopback port, serve_configs/local.yaml's app args
for a model, the sample texts, replica processes by role, and a client that honours Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).parents[1]
LOCAL_CONFIG = ROOT / "serve_configs" / "local.yaml"
SAMPLE_TEXTS = ROOT / "platform" / "causal2vec" / "samples" / "corpus.parquet"


def local_app_args(model: str, stages: str, config: Path = LOCAL_CONFIG, **overrides) -> dict:
    """A Serve config file's first application args, for `model` and `stages`, with top-level overrides."""
    app = yaml.safe_load(config.read_text())["applications"][0]["args"]
    return {**app, "model": model, "served_model_name": model, "stages": stages, **overrides}


def sample_texts(path: Path = SAMPLE_TEXTS, seed: int = 0) -> list[str]:
    texts = pq.read_table(path, columns=["text"])["text"].to_pylist()
    np.random.default_rng(seed).shuffle(texts)
    return texts


@contextlib.contextmanager
def local_serve(throughput_optimized: bool = False):
    """A local Ray with Serve on a free loopback port; yields the base URL. `throughput_optimized` sets Serve's own
    mode, read by every Serve process at import, so it must be set before the cluster starts."""
    import ray
    from ray import serve

    from causal2vec.cli import quiet_third_party
    from causal2vec.tools.processes import free_port

    quiet_third_party(verbose=False)
    if throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_processes(app: str, deployment: str) -> list[psutil.Process]:
    """The OS processes of a deployment's replicas (Ray titles them `ray::ServeReplica:<app>:<deployment>`)."""
    title = re.compile(rf"ray::ServeReplica:{re.escape(app)}:{re.escape(deployment)}\b")
    return [p for p in psutil.process_iter(["cmdline"]) if title.match(" ".join(p.info["cmdline"] or []))]


async def post_with_retries(http, url: str, body: dict, max_retries: int = 10) -> tuple[object, int]:
    """POST, retrying a 503 after its Retry-After (what a well-behaved client does); returns the last response, or
    the transport error, and the number of retries it took."""
    for attempt in range(max_retries + 1):
        try:
            response = await http.post(url, json=body)
        except Exception as exc:  # noqa: BLE001 - a refused or reset connection is a failed request, not a crash
            return exc, attempt
        if response.status_code != 503 or attempt == max_retries:
            return response, attempt
        await asyncio.sleep(float(response.headers.get("retry-after", 1)))
    raise AssertionError("unreachable")


def wait_until(predicate, timeout: float, period: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return False
