"""The paper's ablation in miniature: pooling `concat` vs `last` vs `ctx`, and with vs without the Contextual token.

Every variant starts from the base config's model (default `smollm2`, jobs/configs/smollm2.yaml) and gets the same
training budget (same pairs, steps, batch, seed) through the real Ray Train + DeepSpeed loop, then is scored on
Debian test queries against their documents plus distractors. The decoder-only variant has no projector to align,
so its `optim.align_steps` is 0: it trains the full objective on every step of the same budget.

    python bench/ablation.py --data ../shared/data/debian-pkgs

Each variant lands in the results JSON as it finishes; a rerun with the same budget skips the variants already there
(in the work folder, or in the committed results when the work folder is gone), so a run can span sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
from common import RESULTS, command, finished_rows, hardware, pyplot
from train_quality import ROOT, budget_run, debian_task, one_pass_pairs

from causal2vec.model.devices import native_dtype_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
VARIANTS = {  # name -> model overrides
    "concat (Causal2Vec)": {"pooling": "concat", "use_ctx_token": True},
    "last (EOS only)": {"pooling": "last", "use_ctx_token": True},
    "ctx (CTX only)": {"pooling": "ctx", "use_ctx_token": True},
    "no CTX token, last (decoder only)": {"pooling": "last", "use_ctx_token": False},
}


def train_variant(args, name: str, overrides: dict, pairs: Path, work: Path) -> dict:
    sets = [f"model.{k}={str(v).lower()}" for k, v in overrides.items()] + (
        [] if overrides["use_ctx_token"] else ["optim.align_steps=0"]) + args.set
    summary = budget_run(args.config, f"ablation-{name.split(' (')[0]}-{overrides['use_ctx_token']}", pairs, work,
                         steps=args.steps, micro_batch=args.micro_batch, sets=sets, reports=4)
    return {"overrides": overrides, "train_s": summary["train_s"],
            "final_loss": summary["history"][-1]["loss"], "export_dir": summary["export_dir"]}


def score(args, model_dir: str) -> dict:
    from causal2vec import Causal2Vec
    from causal2vec.eval.retrieval import evaluate

    task = debian_task(args.data, "test", args.test_queries, args.corpus_size)
    model = Causal2Vec.from_pretrained(model_dir, dtype=args.eval_dtype)
    return evaluate(model, task, batch_size=64)


def plot(rows: dict, model: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(rows)
    values = [rows[n]["test"]["ndcg_at_10"] for n in names]
    ax.barh(names, values, color=["tab:green"] + ["tab:grey"] * (len(names) - 1))
    for y, v in enumerate(values):
        ax.text(v + 0.005, y, f"{v:.4f}", va="center")
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) + 0.1)
    any_row = rows[names[0]]["test"]
    ax.set_xlabel(f"test nDCG@10 ({any_row['queries']} queries, {any_row['corpus_size']} docs), same training budget")
    ax.set_title(f"Causal2Vec ablation on {model}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/train/test)")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--micro-batch", type=int, default=16, help="per worker; 2 workers")
    parser.add_argument("--test-queries", type=int, default=1000)
    parser.add_argument("--corpus-size", type=int, default=5000, help="judged documents + distractors")
    parser.add_argument("--eval-dtype", default=native_dtype_name())
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides for every variant, e.g. model.gradient_checkpointing=true")
    parser.add_argument("--work", type=Path, help="default: bench/work/<the output's name>")
    parser.add_argument("--output", type=Path, help="default: bench/results/ablation_<model>.json")
    args = parser.parse_args()
    args.data = args.data.resolve()
    from causal2vec.train.config import load_config

    model = load_config(args.config, args.set).model.init
    args.output = args.output or RESULTS / f"ablation_{model}.json"
    work = (args.work or ROOT / "bench" / "work" / args.output.stem).resolve()  # one work folder per results file
    work.mkdir(parents=True, exist_ok=True)
    pairs = one_pass_pairs(args.data, work, args.steps, args.micro_batch)  # every variant sees the same pairs once

    report = {"command": command(), "hardware": hardware(), "model": model,
              "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
              "budget": {"steps": args.steps, "global_batch": 2 * args.micro_batch, "workers": 2,
                         "pairs_file_rows": pq.read_metadata(pairs).num_rows, "overrides": args.set},
              "eval": {"split": "test", "queries": args.test_queries, "corpus_size": args.corpus_size,
                       "dtype": args.eval_dtype}}
    rows = finished_rows(work / "done.json", args.output, report, ("model", "budget", "eval"), "variants")

    import ray

    ray.init(num_cpus=4, include_dashboard=False)  # more logical CPUs than cores (PLATFORM notes)
    for name in args.variants:
        if name in rows:
            print(f"{name}: done earlier, nDCG@10 {rows[name]['test']['ndcg_at_10']:.4f}", flush=True)
            continue
        print(f"== {name}", flush=True)
        row = train_variant(args, name, VARIANTS[name], pairs, work)
        row["test"] = score(args, row["export_dir"])
        rows[name] = row | {"hardware": report["hardware"]}  # a run that spans sessions may span machines
        (work / "done.json").write_text(json.dumps(rows, indent=1))
        args.output.write_text(json.dumps(report | {"variants": rows}, indent=1))  # each variant lands as it ends
        plot(rows, model, args.output.with_suffix(".png"))
        print(f"{name}: nDCG@10 {row['test']['ndcg_at_10']:.4f}  Recall@10 {row['test']['recall_at_10']:.4f}",
              flush=True)
    ray.shutdown()

    print(f"\n{'variant':38} nDCG@10  Recall@10")
    for name, row in rows.items():
        print(f"{name:38} {row['test']['ndcg_at_10']:.4f}   {row['test']['recall_at_10']:.4f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
