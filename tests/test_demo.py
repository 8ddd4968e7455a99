"""The one-command demo end to end: `jobs/demo.py --tiny` (the tiny preset, a shortened run, a 300-document slice of
the sample corpus) starts its own Ray head, trains and bulk-embeds through `ray job submit`, deploys Serve, queries
it, and shuts everything down. Checked here from the outside: every stage's output, and no process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from causal2vec import Causal2Vec
from causal2vec import store

ROOT = Path(__file__).parents[1]
DOCS = 300


def _ray_orphans() -> set[int]:
    """Live Ray processes whose parent is gone (reparented to init): what a badly stopped cluster leaves behind.
    A running cluster started with `ray start` looks like this too, so the check compares before and after."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["ppid", "name", "cmdline", "status"]):
        info = proc.info
        if info["ppid"] != 1 or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        line = " ".join(info["cmdline"] or [])
        if (info["name"] or "").startswith(("ray::", "raylet", "gcs_server")) or "site-packages/ray/" in line:
            found.add(proc.pid)
    return found


def test_demo_trains_embeds_serves_and_leaves_nothing_behind(tmp_path):
    import psutil

    before = _ray_orphans()
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS")}
    cmd = [sys.executable, str(ROOT / "jobs" / "demo.py"), "--tiny", "--output-dir", str(out),
           "--limit-docs", str(DOCS)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    console = proc.stdout
    assert proc.returncode == 0, console[-5000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"], summary.get("error")

    # each step announced, and timed
    for key in ("ray", "train", "embed", "serve", "query", "shutdown"):
        assert f"\n    [{key}: " in console, f"step {key} missing from the console:\n{console[-3000:]}"
    assert console.count("\n==> ") >= 7

    # training: a checkpoint under the run's storage path, and an exported model that loads
    train = summary["train"]
    assert train["final"]["step"] == 6 and 0 <= train["final"]["dev_ndcg_at_10"] <= 1
    # `ray job submit` brings rank 0's progress line to the console once (Ray Train's print patch tees stdout)
    assert (out / "logs" / "train.log").read_text().count("step 6/6  loss") == 1
    assert console.count("step 6/6  loss") == 1
    checkpoint = Path(train["checkpoint"])
    assert checkpoint.is_dir() and checkpoint.is_relative_to(out / "runs" / "demo") and any(checkpoint.iterdir())
    assert Path(train["export_dir"]) == out / "model"
    model = Causal2Vec.from_pretrained(train["export_dir"])

    # bulk embedding: every document of the slice, written by that model
    table = store.open_table(f"{out / 'lancedb'}::samples")
    assert table.count_rows() == summary["embed"]["table_rows"] == DOCS
    store.check_model(table, model)  # the table's identity is the exported model's
    doc_id = summary["queries"]["doc_id"]
    row = table.search().where(f"id = '{doc_id}'").select(["text", "vector"]).limit(1).to_list()[0]
    np.testing.assert_allclose(row["vector"], model.encode([row["text"]])[0], atol=1e-5)

    # serving: the embeddings have the model's dimension; a document's own text finds it first
    queries = summary["queries"]
    assert queries["embedding_dim"] == model.embedding_dim
    assert queries["self_search"][0]["id"] == doc_id, queries["self_search"]
    assert queries["queries_top10"]["queries"] > 0
    assert (out / "serve.yaml").is_file()

    # shutdown: nothing of the demo's cluster is alive, and no Ray process was orphaned
    cleanup = summary["cleanup"]
    assert cleanup["left"] == [] and cleanup["temp_dir_removed"] and cleanup["stopped"] > 5
    temp_dir = summary["ray"]["temp_dir"]
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    assert not (_ray_orphans() - before), "Ray processes were left behind"
    assert "no Ray process left behind" in console
