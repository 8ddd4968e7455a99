"""The `causal2vec` console script, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
CLI = str(Path(sys.executable).parent / "causal2vec")  # the console script installed beside this interpreter


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_embed_prints_json_and_writes_npy(tiny, tmp_path):
    out = run("embed", "--model", "tiny", "vim editor", "apt package manager")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    vectors = np.array([row["embedding"] for row in payload["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, tiny.encode(["vim editor", "apt package manager"]), atol=1e-6)

    (tmp_path / "texts.txt").write_text("first text\nsecond text\n")
    out = run("embed", "--model", "tiny", "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "e.npy"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), tiny.encode(["first text", "second text"]), atol=1e-6)


def test_embed_errors_name_the_problem(tmp_path):
    out = run("embed", "--model", "gpt-17", "x")
    assert out.returncode == 2 and "cannot load Causal2Vec model 'gpt-17'" in out.stderr
    assert "preset" in out.stderr
    out = run("embed", "--model", "tiny", "ok", "   ")
    assert out.returncode == 2 and "text #1 is empty" in out.stderr
    out = run("embed", "--model", "tiny")
    assert out.returncode == 2 and "nothing to embed" in out.stderr
    out = run("embed", "--model", "tiny", "--input", str(tmp_path / "missing.txt"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_serve_verb_serves_the_app_until_interrupted(ray_session, tiny, tmp_path):
    """`causal2vec serve` with a Serve config file and generated flags, on the session's cluster (RAY_ADDRESS); a
    SIGTERM deletes the application and exits 0."""
    import httpx
    from ray import serve

    from causal2vec.tools.processes import free_port

    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    cmd = [CLI, "serve", "--config", str(ROOT / "serve_configs" / "local.yaml"), "--port", str(port), "--name",
           "cli-serve", "--model", "tiny", "--dtype", "fp32", "--served-model-name", "cli-tiny",
           "--decoder-rows-per-pass", "2",
           "--set", "encoder.autoscaling_config.max_replicas=1", "--set", "decoder.autoscaling_config.max_replicas=1"]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        response = httpx.post(f"{url}/v1/embeddings", json={"model": "cli-tiny", "input": ["vim editor", "apt"]},
                              timeout=60)
        assert response.status_code == 200, response.text
        vectors = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, tiny.encode(["vim editor", "apt"]), atol=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        assert "deleted the Serve application 'cli-serve'" in (tmp_path / "serve.log").read_text()
        assert "cli-serve" not in serve.status().applications
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        serve.shutdown()  # the verb started Serve on the session's cluster: later tests start their own


def test_serve_and_train_verbs_refuse_bad_settings_with_exit_2(tmp_path):
    out = run("serve", "--model", "tiny", "--decoder-max-batch-tokens", "10")
    assert out.returncode == 2 and "max_batch_tokens (10) is below the model's max_decoder_length" in out.stderr
    out = run("serve", "--set", "decoder.max_replica=3")
    assert out.returncode == 2 and "decoder.max_replica: Extra inputs are not permitted" in out.stderr
    out = run("train", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_bench_verb_lists_and_names_the_benches():
    out = run("bench")
    assert out.returncode == 0, out.stderr
    names = {line.split()[0] for line in out.stdout.splitlines()}
    assert {"bulk_embed", "serve_load", "train_throughput"} <= names and "common" not in names
    out = run("bench", "no_such_bench")
    assert out.returncode == 2 and "no bench 'no_such_bench'" in out.stderr and "bulk_embed" in out.stderr
