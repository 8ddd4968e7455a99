"""`causal2vec train` (and `jobs/train.py` under `ray job submit`): read the config, join or start Ray, train, print
the curve, the exported model and one `RESULT_JSON {...}` line for scripts."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a YAML training config (jobs/configs/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.max_steps=50 --set ray.num_workers=1")


def run_from_args(args: argparse.Namespace) -> dict:
    from causal2vec.job_result import print_result
    from causal2vec.ray_init import ensure_ray
    from causal2vec.train.config import load_config
    from causal2vec.train.trainer import run_training

    config = load_config(args.config, args.overrides)  # a bad config fails before any cluster work
    ensure_ray()  # the job's cluster inside `ray job submit`, else a local one
    result = run_training(config)
    summary = result.return_value or {}
    history = summary.get("history", [])
    print("\nstep  loss    samples/s  dev nDCG@10")
    for h in history:
        dev = f"{h['dev_ndcg_at_10']:.4f}" if "dev_ndcg_at_10" in h else ""
        print(f"{h['step']:>4}  {h.get('loss', float('nan')):.4f}  {h.get('samples_per_s', float('nan')):9.1f}  {dev}")
    print(f"exported model: {summary.get('export_dir')}")
    report = {"final": history[-1] if history else {}, "history": history, "export_dir": summary.get("export_dir"),
              "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}
    print_result(report)
    return report
