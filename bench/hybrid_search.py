"""Search modes on the Debian data: dense (vector) vs BM25 (fts) vs hybrid (reciprocal-rank fusion of both).

Builds the table the way a user would (the bulk pipeline `embed_corpus`, with its ANN and full-text indexes), then
asks every query through `store.search`, the function behind `/v1/search` and `causal2vec search`, in each
mode, and scores the top 10 with the local evaluator's `ranking_metrics`. Queries get the training instruction;
documents none. Also counts the queries each mode finds (positive in the top 10) that the other misses: hybrid can
only beat both when dense and BM25 miss different queries.

    python bench/hybrid_search.py --data ../shared/data/debian-pkgs --model bench/work/train_quality/model \\
        --split test --queries 1000 --corpus-size 10000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import RESULTS, command, hardware, pyplot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
MODES = ("vector", "fts", "hybrid")
TASK = "Given a Debian package synopsis, retrieve its description"  # as bench/train_quality.py trains it


def build_table(task, model: str, dtype: str, work: Path) -> str:
    from causal2vec.embed.config import load_config
    from causal2vec.embed.job import embed_corpus

    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({"id": task.corpus_ids, "text": task.corpus}), corpus)
    spec = f"{work / 'lancedb'}::debian"
    embed_corpus(load_config(None, {"model": model, "input": [str(corpus)], "table": spec, "dtype": dtype,
                                    "fts": True, "sub_batch_size": 64, "batch_size": 1024}))
    return spec


def run(args: argparse.Namespace, work: Path) -> dict:
    from causal2vec import Causal2Vec
    from causal2vec import store
    from causal2vec.eval.retrieval import RetrievalTask, query_instruction, ranking_metrics

    task = RetrievalTask.from_files(args.data / "corpus.parquet", args.data / f"{args.split}.parquet",
                                    name=f"debian-{args.split}", description=TASK, corpus_id="doc_id",
                                    limit_queries=args.queries)
    if args.corpus_size:
        task = task.with_corpus_limit(args.corpus_size)
    print(f"==> embedding {len(task.corpus)} docs into LanceDB (ANN + full-text index)", flush=True)
    t0 = time.perf_counter()
    spec = build_table(task, args.model, args.dtype, work)
    table_seconds = time.perf_counter() - t0
    model = Causal2Vec.from_pretrained(args.model, device="cpu", dtype=args.dtype)
    table = store.open_table(spec)
    print(f"==> {len(task.queries)} queries x {len(MODES)} modes", flush=True)
    vectors = model.encode(task.queries, instruction=query_instruction(TASK), batch_size=64)
    ranked: dict[str, list[list[str]]] = {m: [] for m in MODES}
    seconds = dict.fromkeys(MODES, 0.0)
    for query, vector in zip(task.queries, vectors):
        for mode in MODES:
            t = time.perf_counter()
            rows = store.search(table, model, query, k=10, mode=mode, query_vector=vector)
            seconds[mode] += time.perf_counter() - t
            ranked[mode].append([r["id"] for r in rows])
    metrics = {m: ranking_metrics(ranked[m], task.query_ids, task.qrels, ks=(1, 10)) |
               {"ms_per_query": 1000 * seconds[m] / len(task.queries)} for m in MODES}
    hits = {m: {q for q, docs in zip(task.query_ids, ranked[m]) if set(docs) & set(task.qrels.get(q, {}))}
            for m in MODES}
    judged = metrics["vector"]["judged_queries"]
    return {"model": args.model, "dtype": args.dtype, "split": args.split, "queries": len(task.queries),
            "corpus_size": len(task.corpus), "table_seconds": round(table_seconds, 1), "metrics": metrics,
            "found_at_10": {"vector_only": len(hits["vector"] - hits["fts"]),
                            "fts_only": len(hits["fts"] - hits["vector"]), "both": len(hits["vector"] & hits["fts"]),
                            "neither": judged - len(hits["vector"] | hits["fts"]),
                            "hybrid": len(hits["hybrid"])}}


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = ["ndcg_at_10", "recall_at_10", "mrr_at_10"]
    width = 0.27
    for i, mode in enumerate(MODES):
        bars = ax.bar([j + (i - 1) * width for j in range(len(names))], [result["metrics"][mode][n] for n in names],
                      width, label=mode)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(names)), ["nDCG@10", "Recall@10", "MRR@10"])
    ax.set_ylim(0, 1)
    f = result["found_at_10"]
    ax.set_title(f"{result['model']} ({result['dtype']}), Debian {result['split']}: {result['queries']} queries vs "
                 f"{result['corpus_size']} docs\nfound in top 10 by vector only {f['vector_only']}, "
                 f"by BM25 only {f['fts_only']}, both {f['both']}, neither {f['neither']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus + splits)")
    parser.add_argument("--model", required=True, help="a trained model directory (or a preset)")
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--queries", type=int, default=1000, help="the first N queries of the split")
    parser.add_argument("--corpus-size", type=int, help="judged docs plus distractors, N in all (default: all)")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--output", default=str(RESULTS / "hybrid_search.json"))
    args = parser.parse_args()

    import ray

    from causal2vec.cli import quiet_third_party

    quiet_third_party(verbose=False)
    ray.init(num_cpus=2 * (os.cpu_count() or 1) + 2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="hybrid-") as tmp:
            result = run(args, Path(tmp))
    finally:
        ray.shutdown()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command(), "hardware": hardware(), **result}, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    print("\n| mode | nDCG@10 | Recall@10 | MRR@10 | ms/query |\n|---|---|---|---|---|")
    for mode, m in result["metrics"].items():
        print(f"| {mode} | {m['ndcg_at_10']:.4f} | {m['recall_at_10']:.4f} | {m['mrr_at_10']:.4f} | "
              f"{m['ms_per_query']:.1f} |")
    print("found in the top 10:", result["found_at_10"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
