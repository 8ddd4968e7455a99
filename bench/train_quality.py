"""Quality run: train `minilm-small` on the Debian training split with the real job, score it on the test split.

Trains through `jobs/train.py` (Ray Train + DeepSpeed, exactly what `ray job submit` runs), then embeds the test
queries against the full 63k-document corpus with the exported model and puts nDCG@10 / Recall@10 next to the data
set's reference baselines (BM25, all-MiniLM-L6-v2 zero-shot and fine-tuned alone). Writes
bench/results/train_quality.json and a PNG with the training curve.

    python bench/train_quality.py --data ../shared/data/debian-pkgs
    python bench/train_quality.py --data ../shared/data/debian-pkgs --skip-train   # re-score an exported model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import RESULTS, command, hardware, pyplot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
TASK = "Given a Debian package synopsis, retrieve its description"
# From the data set's README: test split, whole corpus (nDCG@10 / Recall@10 / Recall@100 / MRR@10).
BASELINES = {
    "BM25 (bm25s)": {"ndcg_at_10": 0.6515, "recall_at_10": 0.7816, "recall_at_100": 0.8951, "mrr_at_10": 0.6147},
    "all-MiniLM-L6-v2 zero-shot": {"ndcg_at_10": 0.6186, "recall_at_10": 0.7824, "recall_at_100": 0.9168,
                                   "mrr_at_10": 0.5721},
    "all-MiniLM-L6-v2 fine-tuned alone (25 min)": {"ndcg_at_10": 0.7366, "recall_at_10": 0.8723,
                                                    "recall_at_100": 0.9615, "mrr_at_10": 0.6971},
}


def training_pairs(data: Path, split: str, out: Path) -> Path:
    """The Debian split as training pairs: each synopsis with the description of its package."""
    if out.exists():
        return out
    corpus = pq.read_table(data / "corpus.parquet", columns=["doc_id", "text"])
    text_of = dict(zip(corpus["doc_id"].to_pylist(), corpus["text"].to_pylist()))
    queries = pq.read_table(data / f"{split}.parquet", columns=["query", "doc_id"])
    rows = [(q, text_of[d]) for q, d in zip(queries["query"].to_pylist(), queries["doc_id"].to_pylist())
            if d in text_of]
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"query": [q for q, _ in rows], "positive": [p for _, p in rows]}), out)
    return out


def train(args, work: Path, pairs: Path) -> dict:
    overrides = {
        "data.train": json.dumps([{"path": str(pairs), "instruction": f"Instruct: {TASK}\nQuery: "}]),
        "data.dev.corpus": str(args.data / "corpus.parquet"),
        "data.dev.queries": str(args.data / "dev.parquet"),
        "optim.max_steps": str(args.max_steps),
        "ray.storage_path": str(work / "runs"),
        "output_dir": str(work / "model"),
        **dict(item.split("=", 1) for item in args.set),
    }
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", str(args.config)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    report = None
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT_JSON "):
                report = json.loads(line[len("RESULT_JSON "):])
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0 or report is None:
        raise SystemExit(f"training failed (exit {proc.returncode})")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (work / "train_report.json").write_text(json.dumps(report, indent=1))
    return report


def score(args, model_dir: Path) -> dict:
    from causal2vec import Causal2Vec
    from causal2vec.eval.retrieval import RetrievalTask, evaluate

    task = RetrievalTask.from_files(args.data / "corpus.parquet", args.data / "test.parquet", name="debian-test",
                                    description=TASK, corpus_id="doc_id", limit_queries=args.limit_queries)
    model = Causal2Vec.from_pretrained(str(model_dir), dtype=args.eval_dtype)
    return evaluate(model, task, batch_size=64, show_progress=True)


def plot(history: list[dict], test: dict, path: Path) -> None:
    plt = pyplot()
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [h["step"] for h in history if "loss" in h]
    lines = curve.plot(steps, [h["loss"] for h in history if "loss" in h], label="train loss (InfoNCE)",
                       color="tab:blue")
    curve.set_xlabel("optimizer step (global batch 64)")
    curve.set_ylabel("loss")
    dev = [(h["step"], h["dev_ndcg_at_10"]) for h in history if "dev_ndcg_at_10" in h]
    if dev:
        right = curve.twinx()
        lines += right.plot(*zip(*dev), "o-", color="tab:orange", label="dev nDCG@10 (300 q, 2k docs)")
        right.set_ylabel("dev nDCG@10")
    curve.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    curve.set_title("minilm-small training on Debian pairs")
    names = [*BASELINES, "Causal2Vec minilm-small (ours)"]
    values = [*(b["ndcg_at_10"] for b in BASELINES.values()), test["ndcg_at_10"]]
    bars.barh(names, values, color=["grey"] * len(BASELINES) + ["tab:green"])
    for y, v in enumerate(values):
        bars.text(v + 0.005, y, f"{v:.4f}", va="center")
    bars.set_xlim(0, max(values) + 0.1)
    bars.set_xlabel(f"test nDCG@10 ({test['queries']} queries, {test['corpus_size']} docs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/train/dev/test)")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "minilm-small.yaml")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more training overrides")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "train_quality")
    parser.add_argument("--skip-train", action="store_true", help="score the model already exported in --work")
    parser.add_argument("--eval-dtype", default="bf16", help="dtype for embedding the test corpus (fp32, bf16)")
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--note", help="anything a reader of the results should know about this run")
    parser.add_argument("--output", type=Path, default=RESULTS / "train_quality.json")
    args = parser.parse_args()
    args.data = args.data.resolve()
    work = args.work.resolve()

    pairs = training_pairs(args.data, "train", work / "train_pairs.parquet")
    report = (json.loads((work / "train_report.json").read_text()) if args.skip_train else train(args, work, pairs))
    started = time.perf_counter()
    test = score(args, Path(report["export_dir"]))
    test["eval_s"] = round(time.perf_counter() - started, 1)
    history = report["history"]
    final = report["final"]
    result = {
        "command": command(),
        "hardware": hardware(),
        "model": "minilm-small (all-MiniLM-L6-v2 encoder + MiniLM weights as a causal decoder, LoRA r16)",
        "train_config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "train": {"steps": final.get("step"), "samples": final.get("samples"), "wall_s": report.get("wall_s"),
                  "pairs_available": pq.read_metadata(pairs).num_rows},
        "eval_dtype": args.eval_dtype,
        "test": test,
        "baselines_test": BASELINES,
        "beats": {name: test["ndcg_at_10"] > b["ndcg_at_10"] for name, b in BASELINES.items()},
        "history": history,
        **({"note": args.note} if args.note else {}),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str))
    plot(history, test, args.output.with_suffix(".png"))
    print(f"\ntest nDCG@10 {test['ndcg_at_10']:.4f}  Recall@10 {test['recall_at_10']:.4f}")
    for name, b in BASELINES.items():
        print(f"  vs {name}: nDCG@10 {b['ndcg_at_10']:.4f}  Recall@10 {b['recall_at_10']:.4f}")
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
