"""Bulk embedding across nodes, losing the decoder stage's node mid-job.

jobs/embed_corpus.py runs with its encoder stage pinned to the head and its decoder stage to a worker node (one
`c2v_worker` each), so the two stages are on different nodes. Once the first rows are committed, the decoder's node is
killed. The job then finishes on the other nodes, or fails (a write task on the lost node fails the job: write tasks
are not retried, since a retry would add its committed chunks again), and the rerun of the same command finishes it on
the other nodes. Either way the table must end with each valid id exactly once. The lost node comes back at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from causal2vec.tools.cluster.drills import DONE, Job, Timeline, actor_nodes, stage_nodes
from causal2vec.tools.cluster.local import WORKER_RESOURCE, LocalCluster, node_resource
from causal2vec.tools.cluster.nodes import ClusterError

REJECTS = 5  # rows of write_corpus that the job must reject


def write_corpus(path: Path, docs: int) -> list[str]:
    """The first `docs` sample documents, with rows the job must reject in the middle (empty, null and blank texts,
    two repeated ids), as parquet; returns the valid ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from causal2vec.samples import CORPUS

    good = pq.read_table(CORPUS, columns=["id", "text"]).slice(0, docs).to_pylist()
    bad = [{"id": "bad-empty", "text": ""}, {"id": "bad-null", "text": None}, {"id": "bad-blank", "text": "  \n"},
           {"id": good[0]["id"], "text": "a repeated id"}, {"id": good[1]["id"], "text": "another repeated id"}]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(good[: docs // 2] + bad + good[docs // 2:]), path)
    return [row["id"] for row in good]


def table_ids(spec: str) -> list[str]:
    from causal2vec import store

    try:
        return store.open_table(spec).search().select(["id"]).limit(None).to_arrow()["id"].to_pylist()
    except Exception:  # noqa: BLE001 - not created yet, or caught mid-creation
        return []


def table_rows(spec: str) -> int:
    from causal2vec import store

    try:
        return store.open_table(spec).count_rows()
    except Exception:  # noqa: BLE001 - not created yet, or caught mid-creation
        return 0


def embed_drill(cluster: LocalCluster, work: Path, docs: int = 1000, batch: int = 50,
                timeout: float = 600) -> dict[str, Any]:
    tl = Timeline()
    valid = write_corpus(work / "corpus.parquet", docs)
    spec = f"{work / 'lancedb'}::docs"
    args = ["--model", "tiny", "--input", str(work / "corpus.parquet"), "--table", spec, "--index", "none",
            "--batch-size", str(batch), "--commit-rows", str(batch),
            "--sub-batch-size", "1",  # one row per forward pass: the job runs long enough to be interrupted
            "--set", "tokenize.num_cpus=0.5", "--set", f"encoder.resources={{{node_resource('head')}: 1}}",
            "--set", f"decoder.resources={{{WORKER_RESOURCE}: 1}}"]
    progress: list[tuple[float, int]] = []  # (t, rows in the table)

    def count() -> int:
        progress.append((tl.now(), table_rows(spec)))
        return progress[-1][1]

    job = Job(cluster, "embed_corpus.py", args)
    tl.mark("job submitted")
    deadline = time.monotonic() + timeout
    while not count():
        if job.status() in DONE or time.monotonic() > deadline:
            log = "\n".join(job.new_lines()[-30:])
            raise ClusterError(f"the embed job committed nothing ({job.status()}):\n{log}")
        time.sleep(0.2)
    placement = actor_nodes(cluster)
    encoder, decoder = stage_nodes(placement, "EncoderStage"), stage_nodes(placement, "DecoderStage")
    victim = decoder[0]
    rows_at_kill = count()
    kill = cluster.kill(victim)
    tl.mark("node killed", node=victim, rows=rows_at_kill, processes=kill["processes"])
    status = job.wait(timeout, poll=count)
    tl.mark("job ended", status=status, rows=count())
    record: dict[str, Any] = {"docs": docs, "valid_ids": len(valid), "rejects_in_input": REJECTS,
                              "encoder_nodes": encoder, "decoder_nodes": decoder, "killed": victim,
                              "rows_at_kill": rows_at_kill, "job": {"status": status, "summary": job.result()}}
    if status != "SUCCEEDED":
        record["rerun"] = _rerun(cluster, args, tl, count, timeout)
        status = record["rerun"]["status"]
    back = cluster.restart(victim)
    tl.mark("node back", node=victim, seconds_to_join=round(back["ready"] - back["time"], 1))
    ids = table_ids(spec)
    record.update(status=status, rows_final=len(ids), distinct_ids=len(set(ids)),
                  missing=sorted(set(valid) - set(ids))[:10], unexpected=sorted(set(ids) - set(valid))[:10],
                  progress=progress, timeline=tl.events)
    return record


def _rerun(cluster: LocalCluster, args: list[str], tl: Timeline, count, timeout: float) -> dict[str, Any]:
    """The documented recovery: the same command again, while the lost node is still down."""
    _settle(count)
    rows_before = count()
    job = Job(cluster, "embed_corpus.py", args)
    tl.mark("rerun submitted", rows=rows_before)
    decoder: list[str] = []

    def watch() -> None:
        count()
        if not decoder:
            decoder.extend(stage_nodes(actor_nodes(cluster), "DecoderStage"))

    status = job.wait(timeout, poll=watch)
    tl.mark("rerun ended", status=status, rows=count())
    return {"status": status, "rows_before": rows_before, "decoder_nodes": decoder, "summary": job.result()}


def _settle(count, quiet_s: float = 2, timeout: float = 30) -> None:
    """Until the table stops growing (a commit of the ended job may still be landing)."""
    deadline, rows, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = count()
        if now != rows:
            rows, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
