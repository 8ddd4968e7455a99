"""Hard-negative mining: nearest non-positives after `skip`, never the positive, usable by training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from causal2vec.samples import PAIRS
from causal2vec.train.mining import mine_hard_negatives


def test_mined_negatives_are_the_ranked_non_positives(tiny):
    pairs = pq.read_table(PAIRS).slice(0, 40).to_pylist()
    queries, positives = [p["query"] for p in pairs], [p["positive"] for p in pairs]
    corpus = positives + positives[:5]  # duplicates must not repeat among a query's negatives
    negatives = mine_hard_negatives(tiny, queries, positives, corpus, num=3, skip=2)
    docs = list(dict.fromkeys(corpus))
    scores = tiny.encode(queries) @ tiny.encode(docs).T
    for i, negs in enumerate(negatives):
        ranked = [docs[j] for j in np.argsort(-scores[i]) if docs[j] != positives[i]]
        assert negs == ranked[2:5]
        assert positives[i] not in negs and len(set(negs)) == 3


def test_cli_writes_a_training_ready_file(tmp_path):
    pq.write_table(pq.read_table(PAIRS).slice(0, 30), tmp_path / "pairs.parquet")
    out = subprocess.run([str(Path(sys.executable).parent / "causal2vec"), "mine-negatives", "--model", "tiny",
                          "--pairs", str(tmp_path / "pairs.parquet"), "--num", "2", "--output",
                          str(tmp_path / "mined.parquet")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    mined = pq.read_table(tmp_path / "mined.parquet")
    assert mined.column_names == ["query", "positive", "negatives"]
    assert mined.schema.field("negatives").type == pa.list_(pa.string())
    assert all(len(n) == 2 and row not in n for n, row in zip(mined["negatives"].to_pylist(),
                                                              mined["positive"].to_pylist()))
    pq.write_table(pa.table({"query": ["q", ""], "positive": ["p", "x"]}), tmp_path / "bad.parquet")
    out = subprocess.run([str(Path(sys.executable).parent / "causal2vec"), "mine-negatives", "--pairs",
                          str(tmp_path / "bad.parquet"), "--output", str(tmp_path / "o.parquet")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "row 1 has an empty or missing query/positive" in out.stderr


def test_training_uses_mined_hard_negatives(ray_session, tiny, tmp_path):
    from causal2vec import Causal2Vec
    from causal2vec.train.config import load_config
    from causal2vec.train.trainer import run_training

    table = pq.read_table(PAIRS).slice(0, 256)
    negatives = mine_hard_negatives(tiny, table["query"].to_pylist(), table["positive"].to_pylist(),
                                    table["positive"].to_pylist(), num=2, skip=1)
    pq.write_table(table.append_column("negatives", pa.array(negatives)), tmp_path / "mined.parquet")
    config = load_config(Path(__file__).parents[1] / "jobs" / "configs" / "tiny.yaml", [
        f"ray.storage_path={tmp_path}", "ray.name=hardneg", "data.dev=null", "optim.max_steps=4",
        "data.num_hard_negatives=2", "optim.micro_batch_size=8",
        f"data.train=[{{path: {tmp_path / 'mined.parquet'}}}]"])
    summary = run_training(config).return_value
    assert summary["state"]["step"] == 4 and np.isfinite(summary["history"][-1]["loss"])
    # 8 queries x (2 workers x (8 positives + 16 negatives)) candidates: chance-level loss is ln(48), not ln(16)
    assert summary["history"][0]["loss"] > np.log(16)
    assert Causal2Vec.from_pretrained(summary["export_dir"]).encode(["x"]).shape == (1, tiny.embedding_dim)
