"""Train a Causal2Vec model with Ray Train + DeepSpeed.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/tiny.yaml [--set optim.max_steps=20]
    python jobs/train.py --config jobs/configs/tiny.yaml          # local Ray, started here

Prints progress while it trains, then the exported model directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a YAML training config (jobs/configs/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.max_steps=50 --set ray.num_workers=1")
    args = parser.parse_args(argv)

    from causal2vec.errors import Causal2VecError
    from causal2vec.train.config import load_config

    try:
        config = load_config(args.config, args.overrides)
    except Causal2VecError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2

    from causal2vec.ray_init import ensure_ray
    from causal2vec.train.trainer import run_training

    ensure_ray()  # the job's cluster inside `ray job submit`, else a local one
    try:
        result = run_training(config)
    except Causal2VecError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    summary = result.return_value or {}
    history = summary.get("history", [])
    final = history[-1] if history else {}
    print("\nstep  loss    samples/s  dev nDCG@10")
    for h in history:
        dev = f"{h['dev_ndcg_at_10']:.4f}" if "dev_ndcg_at_10" in h else ""
        print(f"{h['step']:>4}  {h.get('loss', float('nan')):.4f}  {h.get('samples_per_s', float('nan')):9.1f}  {dev}")
    print(f"exported model: {summary.get('export_dir')}")
    report = {"final": final, "history": history, "export_dir": summary.get("export_dir"),
              "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}
    print("RESULT_JSON " + json.dumps(report, default=str))  # one line, for scripts and tests
    return 0


if __name__ == "__main__":
    sys.exit(main())
