"""The same-run anchor on its own: all-MiniLM-L6-v2 fine-tuned alone on as many Debian training pairs as a
Causal2Vec run sees (`bench/train_quality.py`'s anchor, same config-derived batch and max length), scored on the
training job's dev evaluation and on the whole test corpus.

A Causal2Vec run reports its dev nDCG@10 while it trains; its whole-corpus score takes hours of embedding the
corpus with the LLM on a CPU. This puts the anchor's figures on both beside that dev score in half an hour, so a
run can be judged against the bar it has to clear before (or without) its whole-corpus scoring.
Writes bench/results/anchor_<pairs>.json.

    python bench/anchor_quality.py --data ../shared/data/debian-pkgs --pairs 3200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, command, hardware
from train_quality import ROOT, anchor, debian_task, training_pairs

from causal2vec.model.devices import native_dtype_name
from causal2vec.train.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/train/dev/test)")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml",
                        help="the Causal2Vec training config whose batch, max length and negatives the anchor takes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides of --config")
    parser.add_argument("--pairs", type=int, required=True, help="training pairs, as many as the Causal2Vec run saw")
    parser.add_argument("--eval-dtype", default=native_dtype_name())
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "anchor_quality")
    parser.add_argument("--output", type=Path, help="default: bench/results/anchor_<pairs>.json")
    args = parser.parse_args()
    args.data, work = args.data.resolve(), args.work.resolve()
    args.limit_queries = args.corpus_size = None  # the anchor's test score: the whole split, the whole corpus
    data_config = load_config(args.config, args.set).data
    if data_config.num_hard_negatives:
        raise SystemExit("--set data.num_hard_negatives: mine them through bench/train_quality.py")

    pairs = training_pairs(args.data, "train", work / "train_pairs.parquet")
    row = anchor(args, work, pairs, {"final": {"samples": args.pairs}})
    dev = data_config.dev
    row["dev"] = _dev_score(args, row["model_dir"], dev.limit_queries, dev.limit_corpus, work / "eval_cache")
    output = args.output or RESULTS / f"anchor_{args.pairs}.json"
    output.write_text(json.dumps({"command": command(), "hardware": hardware(), "eval_dtype": args.eval_dtype,
                                  "anchor": row}, indent=1))
    for split in ("dev", "test"):
        m = row[split]
        print(f"{split} ({m['queries']} queries x {m['corpus_size']} docs): nDCG@10 {m['ndcg_at_10']:.4f}  "
              f"Recall@10 {m['recall_at_10']:.4f}  Recall@100 {m['recall_at_100']:.4f}  MRR@10 {m['mrr_at_10']:.4f}")
    print(f"wrote {output}")
    return 0


def _dev_score(args, model_dir: str, limit_queries: int, limit_corpus: int, cache: Path) -> dict:
    """The training job's dev evaluation (its first `limit_queries` dev queries, judged documents + distractors)."""
    from anchor import load_anchor

    from causal2vec.eval.retrieval import evaluate

    task = debian_task(args.data, "dev", limit_queries, limit_corpus)
    return evaluate(load_anchor(model_dir, args.eval_dtype), task, batch_size=64, cache=cache)


if __name__ == "__main__":
    sys.exit(main())
