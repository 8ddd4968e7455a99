"""Training throughput: the Ray Train + DeepSpeed loop against a plain single-process PyTorch loop.

Same model, same pairs, same micro-batch, same loss and optimizer, same number of CPU threads. Both tokenize before
timing; samples/s is measured over the steady-state windows only (the first window, with its warm-up, is dropped).

    python bench/train_throughput.py --model minilm-small --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, command, hardware, pyplot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "platform" / "causal2vec" / "samples" / "pairs.parquet"


def config_for(args, variant: str, workers: int, threads: int):
    from causal2vec.train.config import load_config

    return load_config(ROOT / "jobs" / "configs" / "minilm-small.yaml", [
        f"model.init={args.model}", f"data.train=[{{path: '{args.pairs}'}}]", "data.dev=null",
        f"optim.max_steps={args.steps}", f"optim.micro_batch_size={args.micro_batch}",
        f"deepspeed.bf16={str(args.bf16).lower()}", f"deepspeed.zero_stage={args.zero_stage}",
        f"ray.num_workers={workers}", f"ray.cpus_per_worker={threads}", f"ray.report_every_steps={args.window}",
        f"ray.checkpoint_every_steps={10 * args.steps}", f"ray.storage_path={args.work}",
        f"ray.name=throughput-{variant}-{time.time_ns()}", f"output_dir={args.work / variant}"])


def steady(history: list[dict], window: int) -> float:
    """Mean samples/s over report windows after the first (warm-up) one."""
    rows = [h for h in history if "samples_per_s" in h and h["step"] > window and h["step"] % window == 0]
    return sum(h["samples_per_s"] for h in rows) / len(rows)


def ray_run(args, workers: int, threads: int) -> dict:
    from causal2vec.train.trainer import run_training

    config = config_for(args, f"ray-{workers}x{threads}", workers, threads)
    history = run_training(config).return_value["history"]
    return {"samples_per_s": steady(history, args.window), "history": history}


def plain_run(args, threads: int) -> dict:
    """What the Ray loop does per step, without Ray, DeepSpeed or a process group (causal2vec.train.single)."""
    from causal2vec.train.single import train_single, training_rows

    torch.set_num_threads(threads)
    config = config_for(args, "plain", 1, threads)
    _, history = train_single(config, training_rows(config), "cpu", steps=args.steps, report_every=args.window)
    return {"samples_per_s": steady(history, args.window), "history": history}


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(results["variants"])
    values = [results["variants"][n]["samples_per_s"] for n in names]
    ax.barh(names, values, color=["tab:grey"] + ["tab:blue"] * (len(names) - 1))
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("training samples/s (pairs), steady state")
    ax.set_title(f"{results['model']}: Ray Train + DeepSpeed vs plain PyTorch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-small")
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--window", type=int, default=5, help="steps per measurement window")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "throughput")
    parser.add_argument("--output", type=Path, default=RESULTS / "train_throughput.json")
    args = parser.parse_args()
    args.work, args.pairs = args.work.resolve(), args.pairs.resolve()
    threads = os.cpu_count() or 1

    import ray

    variants = {f"plain PyTorch, 1 process x {threads} threads": plain_run(args, threads)}
    ray.init(num_cpus=max(4, threads), include_dashboard=False)  # more logical CPUs than cores (PLATFORM notes)
    variants[f"Ray Train + DeepSpeed ZeRO-{args.zero_stage}, 1 worker x {threads} threads"] = ray_run(args, 1, threads)
    variants[f"Ray Train + DeepSpeed ZeRO-{args.zero_stage}, {threads} workers x 1 thread"] = ray_run(args, threads, 1)
    ray.shutdown()

    plain = next(iter(variants.values()))["samples_per_s"]
    for name, v in variants.items():
        v["ratio_vs_plain"] = v["samples_per_s"] / plain
        print(f"{name:55} {v['samples_per_s']:7.2f} samples/s  {v['ratio_vs_plain']:.3f}x", flush=True)
    results = {"command": command(), "hardware": hardware(), "model": args.model, "pairs": str(args.pairs),
               "steps": args.steps, "micro_batch": args.micro_batch, "bf16_autocast": args.bf16,
               "variants": variants,
               "overhead_1_worker": 1 - list(variants.values())[1]["ratio_vs_plain"]}
    args.output.write_text(json.dumps(results, indent=1))
    plot(results, args.output.with_suffix(".png"))
    print(f"Ray Train overhead (1 worker, same threads): {100 * results['overhead_1_worker']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
