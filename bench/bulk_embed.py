"""Bulk embedding throughput: the Ray Data pipeline against a plain single-process loop, and what length-bucketing buys.

Variants, same texts, same forward batch size (--batch-size):
  pipeline           `embed_corpus`, split stages (tokenize -> encoder actor -> decoder actor), length-bucketed
                     sub-batches inside each 1024-row actor batch; written to a LanceDB table (no index)
  pipeline_unsorted  the same with bucketing off (each actor batch cut into sub-batches in input order)
  pipeline_fused     one fused actor (tokenize + encoder + decoder), bucketed
  plain_unsorted     a plain loop over `model.encode` on consecutive batches in input order (batch i = rows i*b..);
                     sorting inside one batch changes nothing, so this is the no-bucketing baseline
  plain_bucketed     `model.encode` over the whole corpus (it sorts all texts longest-first, then batches)
Ratios in docs/s, like for like: pipeline / plain_bucketed (both length-bucketed; target >= 0.95), the same for the
fused pipeline, pipeline_unsorted / plain_unsorted, and bucketed / unsorted for the plain loop (target >= 1.3) and for
the pipeline. The pipeline's time includes starting its actors (a fixed cost a large corpus amortises).
--merge keeps the other models' results already in --output, so models can run with different --limit values; every
result records the command that made it.

    python bench/bulk_embed.py --input /path/to/corpus.parquet --models tiny minilm-small [--dtypes fp32 bf16]
                               [--limit N] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import RESULTS, hardware, pyplot
from common import command as this_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
VARIANTS = ["pipeline", "pipeline_unsorted", "pipeline_fused", "plain_unsorted", "plain_bucketed"]


def load_corpus(path: str, text_column: str, id_column: str | None, limit: int | None) -> pa.Table:
    table = pq.read_table(path)
    if limit:
        table = table.slice(0, limit)
    if id_column is None:
        id_column = next((c for c in ("id", "doc_id") if c in table.column_names), None)
    ids = table[id_column].cast(pa.string()) if id_column else pa.array([str(i) for i in range(table.num_rows)])
    texts = [t if isinstance(t, str) and t.strip() else "(empty)" for t in table[text_column].to_pylist()]
    return pa.table({"id": ids, "text": texts})  # valid rows only: every variant embeds the same texts


def decoder_tokens(model, texts: list[str], batch_size: int) -> tuple[int, int, int]:
    """(real tokens, padded tokens unsorted, padded tokens bucketed) the decoder processes, truncation included."""
    b = model.builder
    lengths = []
    for i in range(0, len(texts), 1024):
        lengths += b.decoder_batch(b.tokenize_for_decoder(texts[i:i + 1024])).attention_mask.sum(1).tolist()
    padded = lambda ls: sum(len(ls[i:i + batch_size]) * max(ls[i:i + batch_size])  # noqa: E731
                            for i in range(0, len(ls), batch_size))
    return sum(lengths), padded(lengths), padded(sorted(lengths, reverse=True))


def run_plain(model, texts: list[str], batch_size: int, bucketed: bool) -> tuple[float, np.ndarray]:
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up: allocator and kernel caches
    t0 = time.perf_counter()
    if bucketed:
        vectors = model.encode(texts, batch_size=batch_size)
    else:
        vectors = np.concatenate([model.encode(texts[i:i + batch_size], batch_size=batch_size)
                                  for i in range(0, len(texts), batch_size)])
    return time.perf_counter() - t0, vectors


def run_pipeline(model_name: str, dtype: str, corpus_path: Path, work: Path, variant: str, batch_size: int,
                 block_rows: int, cores: int, overrides: dict[str, str]) -> tuple[dict, dict[str, np.ndarray]]:
    from causal2vec import store
    from causal2vec.embed.config import load_config
    from causal2vec.embed.job import embed_corpus

    settings = {"model": model_name, "input": [str(corpus_path)], "table": f"{work / 'lancedb'}::{variant}",
                "overwrite": True, "index": "none", "dtype": dtype, "batch_size": block_rows,
                "sub_batch_size": batch_size,
                "commit_rows": 4096, "bucket": variant != "pipeline_unsorted",
                "stages": "fused" if variant == "pipeline_fused" else "split",
                "tokenize.num_cpus": 0.5, "encoder.num_cpus": 1, "decoder.num_cpus": cores, **overrides}
    summary = embed_corpus(load_config(None, settings))
    rows = store.open_table(settings["table"]).search().select(["id", "vector"]).limit(None).to_arrow()
    vectors = dict(zip(rows["id"].to_pylist(), np.stack(rows["vector"].to_numpy(zero_copy_only=False))))
    return summary, vectors


def bench_model(name: str, dtype: str, corpus: pa.Table, args, work: Path, cores: int) -> dict:
    from causal2vec.model import Causal2Vec

    model = Causal2Vec.from_pretrained(name, device="cpu", dtype=dtype)
    texts, ids = corpus["text"].to_pylist(), corpus["id"].to_pylist()
    corpus_path = work / "corpus.parquet"
    pq.write_table(corpus, corpus_path)
    tokens, padded_unsorted, padded_bucketed = decoder_tokens(model, texts, args.batch_size)
    out: dict = {"model": name, "dtype": dtype, "command": this_command(), "limit": args.limit, "docs": len(texts),
                 "pipeline_overrides": args.set,
                 "decoder_tokens": tokens, "variants": {},
                 "padded_decoder_tokens": {"unsorted": padded_unsorted, "bucketed": padded_bucketed}}
    for variant in args.variants:
        print(f"==> {name} {dtype}: {variant} ({len(texts)} docs, batch {args.batch_size})", flush=True)
        if variant.startswith("plain"):
            seconds, _ = run_plain(model, texts, args.batch_size, bucketed=variant == "plain_bucketed")
            row = {"seconds": seconds, "docs_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds}
        else:
            summary, stored = run_pipeline(name, dtype, corpus_path, work, variant, args.batch_size,
                                           args.block_rows, cores, dict(item.split("=", 1) for item in args.set))
            row = {"seconds": summary["embed_seconds"], "docs_per_s": summary["docs_per_s"],
                   "tokens_per_s": summary["tokens_per_s"], "total_seconds": summary["seconds"]}
            sample = ids[:: max(1, len(ids) // 50)]
            expected = model.encode([texts[ids.index(i)] for i in sample])
            row["max_abs_diff_vs_encode"] = float(np.abs(np.stack([stored[i] for i in sample]) - expected).max())
        out["variants"][variant] = row
        print(f"    {row['docs_per_s']:9.1f} docs/s  {row['tokens_per_s']:10.0f} tokens/s  ({row['seconds']:.1f} s)",
              flush=True)
    v = out["variants"]
    pairs = {  # (numerator, denominator): like for like, so each ratio isolates one thing
        "pipeline_vs_plain": ("pipeline", "plain_bucketed"),
        "pipeline_fused_vs_plain": ("pipeline_fused", "plain_bucketed"),
        "pipeline_unsorted_vs_plain_unsorted": ("pipeline_unsorted", "plain_unsorted"),
        "bucketed_vs_unsorted": ("plain_bucketed", "plain_unsorted"),
        "pipeline_bucketed_vs_unsorted": ("pipeline", "pipeline_unsorted"),
    }
    ratios = {k: v[a]["docs_per_s"] / v[b]["docs_per_s"] for k, (a, b) in pairs.items() if a in v and b in v}
    out["ratios"] = ratios
    return out


def result_key(result: dict) -> str:
    """One entry per model, dtype, corpus size and pipeline overrides, so a variant run never overwrites another."""
    key = f"{result['model']} {result['dtype']}" + (f", first {result['limit']}" if result["limit"] else "")
    return key + "".join(f", {o}" for o in result.get("pipeline_overrides", []))


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    models = list(results)
    cols = min(2, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols + 1.5, 5 * rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, models):
        variants = results[name]["variants"]
        names = list(variants)
        bars = ax.bar(range(len(names)), [variants[n]["docs_per_s"] for n in names],
                      color=["tab:blue" if n.startswith("pipeline") else "tab:gray" for n in names])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ratios = [f"{k.replace('_vs_', ' / ')} {r:.2f}" for k, r in results[name]["ratios"].items()]
        lines = ["   ".join(ratios[i:i + 2]) for i in range(0, len(ratios), 2)]
        ax.set_title("\n".join([f"{name}: docs/s ({results[name]['docs']} docs)", *lines]), fontsize=9)
    fig.suptitle("Bulk embedding: Ray Data pipeline vs plain loop; length-bucketed vs unsorted batches", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="a parquet corpus with a text column")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", help="default: id or doc_id when present, else the row number")
    parser.add_argument("--models", nargs="+", default=["tiny", "minilm-small"])
    parser.add_argument("--limit", type=int, help="only the first N rows (input order)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass, in every variant")
    parser.add_argument("--block-rows", type=int, default=1024, help="rows per pipeline actor call (the window "
                                                                     "length-bucketing sorts within)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="every variant runs in each (this CPU has native bf16)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline config overrides, e.g. decoder.num_cpus=1 (defaults: tokenize 0.5, encoder 1, "
                             "decoder = all cores)")
    parser.add_argument("--output", default=str(RESULTS / "bulk_embed.json"))
    parser.add_argument("--merge", action="store_true", help="keep results for other model/dtype pairs in --output")
    args = parser.parse_args()

    import logging

    import ray

    from causal2vec.cli import quiet_third_party

    quiet_third_party(verbose=False)
    logging.basicConfig(level=logging.WARNING)
    cores = os.cpu_count() or 1
    # logical CPUs above the cores: the actors hold theirs for the whole run and read/write tasks still need some
    ray.init(num_cpus=2 * cores + 2, include_dashboard=False, log_to_driver=False)
    corpus = load_corpus(args.input, args.text_column, args.id_column, args.limit)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bulk-embed-") as tmp:
            for name in args.models:
                for dtype in args.dtypes:
                    work = Path(tmp) / f"{name}-{dtype}"
                    work.mkdir()
                    result = bench_model(name, dtype, corpus, args, work, cores)
                    results[result_key(result)] = result
    finally:
        ray.shutdown()
    out = Path(args.output)
    if args.merge and out.exists():
        earlier = json.loads(out.read_text())["results"].values()
        results = {**{result_key(r): r for r in earlier}, **results}
    commands = list(dict.fromkeys(r["command"] for r in results.values()))  # each result also names its own
    report = {"command": commands, "hardware": hardware(), "input": args.input, "batch_size": args.batch_size,
              "block_rows": args.block_rows, "torch_threads": torch.get_num_threads(),
              "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    print("\n| model | variant | docs/s | tokens/s |\n|---|---|---|---|")
    for name, r in results.items():
        for variant, row in r["variants"].items():
            print(f"| {name} | {variant} | {row['docs_per_s']:.1f} | {row['tokens_per_s']:.0f} |")
    for name, r in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
