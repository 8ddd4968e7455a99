"""Quality run on one accelerator, in one process: a longer training budget than this project's CPUs allow.

The lent GPU machine has no Ray and no DeepSpeed, so this is not the job bench/train_quality.py runs: the same config
(jobs/configs/smollm2.yaml, its global batch in one process) and the Debian training split in the job's seeded order,
trained by the library's single-process loop (`causal2vec.train.single`: the Ray loop's model, loss, parameter
groups, schedules, clipping and dev evaluation), with bf16 autocast. A short timing run first fits the step count to
--train-budget-s. Then: dev nDCG@10 along the way (the curve), the whole test split against the whole corpus, and
the same-pairs anchor (bench/anchor.py) trained and scored on the same device. Each finished phase is kept in
--work/state.json, so a rerun continues where the last one stopped.

    python bench/gpu_quality.py --data ../shared/data/debian-pkgs --train-budget-s 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, command, hardware
from train_quality import BASELINES, ROOT, TASK, beats, model_label, plot, score, training_pairs

from causal2vec.model.devices import resolve_device
from causal2vec.train.config import load_config


def build_config(args, pairs: Path):
    """The config as the job would run it, its global batch (micro-batch x workers x accumulation) in one process."""
    config = load_config(args.config, args.set)
    o = config.optim
    batch = o.micro_batch_size * config.ray.num_workers * o.grad_accumulation
    return load_config(args.config, [
        f"data.train=[{{path: '{pairs}', instruction: \"Instruct: {TASK}\\nQuery: \"}}]",
        f"data.dev.corpus={args.data / 'corpus.parquet'}", f"data.dev.queries={args.data / 'dev.parquet'}",
        f"data.dev.limit_queries={args.dev_queries}", f"data.dev.limit_corpus={args.dev_corpus}",
        f"optim.micro_batch_size={batch}", "optim.grad_accumulation=1",
        "ray.num_workers=1", f"output_dir={args.work / 'model'}", *args.set])


def dev_every(config, steps: int | None):
    """The config with dev nDCG@10 every `steps` steps (None: no dev evaluation)."""
    dev = steps and config.data.dev.model_copy(update={"every_steps": steps})
    return config.model_copy(update={"data": config.data.model_copy(update={"dev": dev or None})})


def fitted_steps(args, config, rows, device) -> tuple[int, float]:
    """Steps that fit --train-budget-s at the rate a short run measures (its first window, with warm-up, dropped)."""
    from causal2vec.train.single import train_single

    n = args.probe_steps
    _, history = train_single(dev_every(config, None), rows, device, steps=2 * n, report_every=n)
    rate = history[-1]["samples_per_s"]
    epoch = rows.num_rows // config.optim.micro_batch_size
    budget = int(args.train_budget_s * rate / config.optim.micro_batch_size)
    return max(1, min(args.max_steps or epoch, budget)), rate


def train(args, config, device) -> dict:
    from causal2vec.train.single import train_single, training_rows

    started = time.perf_counter()
    rows = training_rows(config)
    steps, probe_rate = fitted_steps(args, config, rows, device)
    print(f"{rows.num_rows} rows; {probe_rate:.1f} samples/s measured: {steps} steps of "
          f"{config.optim.micro_batch_size}", flush=True)

    def progress(row: dict) -> None:
        dev = f"  dev nDCG@10 {row['dev_ndcg_at_10']:.4f}" if "dev_ndcg_at_10" in row else ""
        print(f"step {row['step']}/{steps}  loss {row['loss']:.3f}  {row['samples_per_s']:.1f} samples/s  "
              f"peak {row['peak_memory_gb']:.1f} GB{dev}", flush=True)

    config = dev_every(config, max(1, steps // args.dev_points))
    t0 = time.perf_counter()
    model, history = train_single(config, rows, device, steps=steps, report_every=max(1, steps // 40),
                                  on_report=progress)
    train_s = time.perf_counter() - t0
    model.save_pretrained(config.export_dir, merge_lora=config.merge_lora)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    steady = history[1:] or history
    return {"steps": steps, "samples": steps * config.optim.micro_batch_size,
            "global_batch": config.optim.micro_batch_size, "pairs_available": rows.num_rows,
            "train_s": round(train_s, 1), "setup_s": round(t0 - started, 1),
            "samples_per_s": round(sum(h["samples_per_s"] for h in steady) / len(steady), 1),
            "peak_memory_gb": max(h["peak_memory_gb"] for h in history), "export_dir": str(config.export_dir),
            "history": history}


def anchor(args, config, pairs: Path, samples: int, device) -> dict:
    from anchor import load_anchor, train_anchor

    row = train_anchor(pairs, args.work / "anchor", samples=samples, batch_size=config.optim.micro_batch_size,
                       max_length=config.model.max_encoder_length or 128, negatives=config.data.num_hard_negatives,
                       bf16=device.type == "cuda", device=str(device))
    return row | {"test": score(args, load_anchor(row["model_dir"], args.eval_dtype), args.work / "eval_cache")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/train/dev/test)")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more training overrides")
    parser.add_argument("--train-budget-s", type=float, default=150.0, help="training time to fit the steps to")
    parser.add_argument("--max-steps", type=int, help="at most this many steps (default: one epoch)")
    parser.add_argument("--probe-steps", type=int, default=10, help="steps per window of the timing run (2 windows)")
    parser.add_argument("--dev-points", type=int, default=8, help="dev nDCG@10 this many times along the run")
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--dev-corpus", type=int, default=5000)
    parser.add_argument("--eval-dtype", default="fp32", help="dtype for embedding the test split (fp32, bf16)")
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--corpus-size", type=int, default=None, help="judged documents + distractors (partial)")
    parser.add_argument("--skip-anchor", action="store_true")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "gpu_quality")
    parser.add_argument("--output", type=Path, default=RESULTS / "train_quality_smollm2_gpu.json")
    args = parser.parse_args()
    args.data, args.work = args.data.resolve(), args.work.resolve()
    device = resolve_device(None)
    pairs = training_pairs(args.data, "train", args.work / "train_pairs.parquet")
    config = build_config(args, pairs)
    state_file = args.work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}

    def phase(name: str, run) -> dict:
        if name not in state:
            state[name] = run()
            state_file.write_text(json.dumps(state, indent=1, default=str))
            write(args, state, device)
        return state[name]

    trained = phase("train", lambda: train(args, config, device))
    phase("test", lambda: score(args, Path(trained["export_dir"]), args.work / "eval_cache"))
    if not args.skip_anchor:
        phase("anchor", lambda: anchor(args, config, pairs, trained["samples"], device))
    anchor_test = state.get("anchor", {}).get("test", {})
    print(json.dumps({"test": state["test"]["ndcg_at_10"], "anchor": anchor_test.get("ndcg_at_10")}))
    return 0


def write(args, state: dict, device) -> None:
    """The results so far (JSON + PNG): written after every phase, so a run cut short still reports."""
    trained, test, anchor_row = state["train"], state.get("test"), state.get("anchor")
    baselines = {} if args.corpus_size else BASELINES
    result = {"command": command(), "hardware": hardware(), "device": str(device), "model": model_label(args),
              "runner": "one process, causal2vec.train.single (no Ray, no DeepSpeed on the lent GPU machine)",
              "train_config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
              "overrides": args.set, "eval_dtype": args.eval_dtype,
              "train": {k: v for k, v in trained.items() if k != "history"}, "test": test, "anchor": anchor_row,
              "baselines_test": baselines, "history": trained["history"]}
    if test:
        result["beats"] = beats(test, baselines, anchor_row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str))
    if test:
        label = f"{model_label(args)} on {device.type}"
        plot(trained["history"], test, anchor_row and anchor_row["test"], baselines, label,
             args.output.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
