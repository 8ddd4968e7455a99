"""Node failures on a real multi-node Ray cluster on this machine: what was killed when, rows before and after, steps
lost, requests failed, recovery times. Writes bench/results/multinode.json and a timeline PNG.

A head and 2 worker nodes, each `ray start` in its own network namespace (causal2vec.tools.cluster;
`--no-namespaces`: the loopback fallback), run the three drills of causal2vec.tools.cluster.drills one after the
other, each killing a worker node (kill -9 of its raylet and workers) and bringing it back:

    embed   jobs/embed_corpus.py, encoder stage on the head, decoder stage on a worker: that worker is killed mid-job
    train   jobs/train.py, 2 Train workers on the 2 worker nodes (gloo): one node is killed after a checkpoint
    serve   the Serve app, a decoder replica on each worker, under closed-loop HTTP load: one replica's node is killed

    python bench/multinode.py                        # all three, the sizes below (~10 minutes on 2 cores)
    python bench/multinode.py --drills serve --merge  # one drill, kept next to the others already in the JSON

tests/test_multinode.py runs the same drills, smaller, in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import RESULTS, command, hardware, pyplot

DRILLS = ("embed", "train", "serve")


def run(drills: list[str], namespaces: bool | None, work: Path, save=lambda out: None) -> dict:
    """The drills on one cluster; `save(out)` after each, so a later failure keeps the earlier results. A drill that
    raises is recorded with its error and the next one still runs."""
    from causal2vec.tools.cluster.drills.embed import embed_drill
    from causal2vec.tools.cluster.drills.serve import serve_drill
    from causal2vec.tools.cluster.drills.train import train_drill
    from causal2vec.tools.cluster.local import LocalCluster

    runs = {"embed": lambda c: embed_drill(c, work / "embed", docs=2500),
            "train": lambda c: train_drill(c, work / "train", steps=40, checkpoint_every=5, kill_at=12, down_s=15),
            "serve": lambda c: serve_drill(c, clients=4, before_s=10, down_s=20, after_s=10)}
    cluster = LocalCluster(workers=2, head_cpus=4, worker_cpus=2, namespaces=namespaces, start_attempts=6)
    out: dict = {}
    started = time.monotonic()
    try:
        cluster.start()
        out["cluster"] = {"namespaces": cluster.namespaces, "start_seconds": round(time.monotonic() - started, 1),
                          "nodes": {name: {"ip": n.ip, "num_cpus": n.num_cpus, "resources": n.resources}
                                    for name, n in cluster.nodes.items()}}
        for name in drills:
            t0 = time.monotonic()
            try:
                out[name] = runs[name](cluster)
                out[name]["summary"] = summary_line(name, out[name])
            except Exception as exc:  # noqa: BLE001 - recorded; the other drills still run
                out[name] = {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}",
                             "summary": f"{name}: FAILED {exc!r}"[:300]}
            out[name].update(seconds=round(time.monotonic() - t0, 1), command=command())
            print(out[name]["summary"], flush=True)
            save(compact(dict(out)))
    finally:
        out["cleanup"] = cluster.stop()
    return out


def summary_line(name: str, r: dict) -> str:
    if name == "embed":
        rerun = r.get("rerun")
        return (f"embed: killed {r['killed']} (decoder stage) at {r['rows_at_kill']} rows; job {r['job']['status']}"
                + (f", rerun {rerun['status']} from {rerun['rows_before']} rows on {rerun['decoder_nodes']}"
                   if rerun else "") + f"; final {r['rows_final']} rows, {r['distinct_ids']} distinct of "
                f"{r['valid_ids']} valid")
    if name == "train":
        return (f"train: killed {r['killed']} at step {r['step_at_kill']}, resumed from step {r['resumed_from_step']}"
                f" ({r['steps_lost']} steps lost), {r['status']} at step {r['final_step']}; loss "
                f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}")
    return (f"serve: killed {r['killed']}; {r['ok']}/{r['requests']} requests answered 200, failed "
            f"{r['failed_by_status']}; replica replaced {r['replaced_at_t'] - r['killed_at_t']:.1f}s after the kill")


def compact(result: dict) -> dict:
    """The serve drill's request log as per-second counts (the raw log is thousands of rows)."""
    serve = result.get("serve")
    if serve and "requests_log" in serve:
        per_second: dict[int, Counter] = {}
        for sent, _, status, _ in serve.pop("requests_log"):
            per_second.setdefault(int(sent), Counter())["ok" if status == 200 else str(status)] += 1
        serve["per_second"] = [{"t": t, **counts} for t, counts in sorted(per_second.items())]
    return result


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    drills = [d for d in DRILLS if d in result and "error" not in result[d]]
    if not drills:
        return
    fig, axes = plt.subplots(len(drills), 1, figsize=(10, 3.2 * len(drills)), squeeze=False)
    for ax, name in zip(axes[:, 0], drills):
        r = result[name]
        if name == "embed":
            t, rows = zip(*r["progress"]) if r["progress"] else ((), ())
            ax.step(t, rows, where="post")
            ax.set_ylabel("rows in the table")
            ax.set_title(f"bulk embedding: {r['valid_ids']} valid docs; decoder node {r['killed']} killed")
        elif name == "train":
            t, steps = zip(*r["progress"])
            ax.plot(t, steps, ".-")
            ax.set_ylabel("step reported")
            ax.set_title(f"training: 2 workers on 2 nodes; {r['killed']} killed at step {r['step_at_kill']}, "
                         f"resumed from checkpoint {r['resumed_from_step']}")
        else:
            seconds = r["per_second"]
            ax.bar([s["t"] for s in seconds], [s.get("ok", 0) for s in seconds], width=1, label="200")
            failed = [sum(v for k, v in s.items() if k not in ("t", "ok")) for s in seconds]
            ax.bar([s["t"] for s in seconds], failed, width=1, bottom=[s.get("ok", 0) for s in seconds],
                   color="red", label="failed")
            ax.set_ylabel("requests / s")
            ax.legend(loc="lower right")
            ax.set_title(f"serving: a decoder replica on each worker; {r['killed']} killed under load")
        for event in r["timeline"]:
            if event["event"] in ("node killed", "node back", "rerun submitted", "replica replaced", "job ended"):
                ax.axvline(event["t"], color="red" if event["event"] == "node killed" else "gray", ls="--", lw=1)
                ax.annotate(event["event"], (event["t"], ax.get_ylim()[1]), rotation=90, va="top", ha="right",
                            fontsize=7)
        ax.set_xlabel("seconds since the drill started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drills", nargs="+", choices=DRILLS, default=list(DRILLS))
    parser.add_argument("--no-namespaces", dest="namespaces", action="store_const", const=False, default=None,
                        help="nodes on 127.0.0.1 with distinct ports instead of network namespaces")
    parser.add_argument("--merge", action="store_true", help="keep the other drills' results already in the JSON")
    parser.add_argument("--output", type=Path, default=RESULTS / "multinode.json")
    args = parser.parse_args(argv)
    earlier = json.loads(args.output.read_text()) if args.merge and args.output.exists() else {}

    def save(result: dict) -> dict:
        record = {**earlier, **result, "hardware": hardware()}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1, default=str) + "\n")
        return record

    with tempfile.TemporaryDirectory(prefix="c2v-multinode-") as work:
        result = compact(run(args.drills, args.namespaces, Path(work), save))
    if result["cleanup"]["left"]:
        print(f"WARNING: left behind: {result['cleanup']['left']}")
    record = save(result)
    plot(record, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
