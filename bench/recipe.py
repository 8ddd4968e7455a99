"""Recipe experiments on the dev split: which training settings make a decoder-only LLM learn to embed.

Each experiment is a named list of `--set` overrides on a base training config. Every experiment trains through the
real job (Ray Train + DeepSpeed, 2 workers) on the same pairs in the same order, then is scored on dev queries
against their documents plus distractors. The test split is never touched here (bench/train_quality.py reports it).

    python bench/recipe.py --data ../shared/data/debian-pkgs --experiments baseline lora-all
    python bench/recipe.py --data ../shared/data/debian-pkgs --custom my-try optim.temperature=0.02

Finished experiments are kept in bench/work/recipe/done.json (keyed by name; when that folder is gone, read back
from bench/results/recipe.json if the base config and evaluation match), so reruns only add what is missing;
`--redo NAME` runs one again. Writes bench/results/recipe.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from common import RESULTS, command, finished_rows, hardware, pyplot
from train_quality import ANCHOR, ROOT, budget_run, debian_task, hard_negative_pairs, one_pass_pairs

from causal2vec.model.devices import native_dtype_name
from causal2vec.train.config import load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# name -> (what it tests, overrides on the base config). Rounds 1-11 ran on jobs/configs/smollm2.yaml before
# round 11's settings became its defaults (model.ctx_placement/ctx_prefix/ctx_scale, optim.halves_loss_weight):
# to rerun an earlier round as it ran, pass those at their old values (after_instruction, null, 1, 0) in --common
QV = "model.lora.target_modules=null"  # peft's default: the attention's query and value projections
ALL = "model.lora.target_modules=all-linear"
EXPERIMENTS: dict[str, tuple[str, list[str]]] = {
    # round 1: the minilm-small recipe (LoRA r16 on q/v at 5e-4, encoder+projector 5e-5, t=0.05) and one change each
    "baseline": ("the minilm-small recipe as it was: LoRA r16 on the attention's q/v (peft's default), t=0.05",
                 [QV, "optim.temperature=0.05"]),
    "projector-lr": ("the fresh projector at 1e-3 instead of the pretrained encoder's 5e-5",
                     [QV, "optim.temperature=0.05", "optim.lr_projector=1.0e-3"]),
    "lora-all-linear": ("LoRA on every linear layer of the decoder (attention and MLP)",
                        [ALL, "optim.temperature=0.05"]),
    # round 2: on top of LoRA on all linear layers
    "all-linear+temperature-0.02": ("temperature 0.02 instead of 0.05", [ALL, "optim.temperature=0.02"]),
    "all-linear+align-30": ("projector alignment: 30 steps on the CTX state alone (projector at 2e-4), then 70 "
                            "full steps", [ALL, "optim.temperature=0.05", "optim.align_steps=30",
                                           "optim.lr_projector=2.0e-4"]),
    # round 3: on top of LoRA on all linear layers and t=0.02 (the base config since round 2)
    "t0.02+train-norms": ("the decoder's RMSNorm weights trained too", [ALL, "model.lora.train_norms=true"]),
    "t0.02+lr-lora-1e-3": ("LoRA at 1e-3 instead of 5e-4", [ALL, "optim.lr_lora=1.0e-3"]),
    "t0.02+eos-newline": ("close texts with a newline instead of SmolLM2's end-of-turn token <|im_end|>",
                          [ALL, 'model.eos_token="\\n"']),
    "t0.02+projector-lr-1e-5": ("the projector and encoder at 1e-5 instead of 5e-5",
                                [ALL, "optim.lr_encoder=1.0e-5"]),
    "t0.02+temperature-0.01": ("temperature 0.01", [ALL, "optim.temperature=0.01"]),
    # round 4, against all-linear+temperature-0.02 (the base config as it is)
    "t0.02+hard-negatives-1": ("one mined hard negative per query (MiniLM zero-shot, nearest non-positive: mostly a "
                               "sibling package)", [ALL, "data.num_hard_negatives=1"]),
    "t0.02+max-length-256": ("256 tokens instead of 128 for both parts: 13.5% of the documents are longer than 128 "
                             "SmolLM2 tokens, and cut there 7% of the test queries' documents equal another's",
                             [ALL, "model.max_decoder_length=256", "model.max_encoder_length=256"]),
    # round 5: a document's CTX sits right after BOS, where SmolLM2 writes a sink-like massive activation (a query's
    # sits after its instruction); bench/ctx_probe.py
    "t0.02+ctx-prefix-newline": ("a newline before CTX, so that no text's CTX sits right after BOS",
                                 [ALL, 'model.ctx_prefix="\\n"']),
    # round 6: the first ~45 steps sit at or above chance while the pre-clip gradient norm runs at 100-3000 (the
    # 200-step quality run's history; it falls to ~2 once the loss drops): the start is unstable at the peak LR
    "t0.02+lr-lora-2e-4": ("LoRA at 2e-4 instead of 5e-4", [ALL, "optim.lr_lora=2.0e-4"]),
    "t0.02+warmup-30": ("30 warm-up steps instead of 10", [ALL, "optim.warmup_steps=30"]),
    # round 7: zero-shot, SmolLM2's <|im_end|> state retrieves at chance, but the last state of a prompt asking for
    # a summary retrieves at 0.40-0.44 dev nDCG@10 (150 queries x 1,000 docs): start training from a summary
    "t0.02+summary-suffix": ("close texts with \"\\nSummarize the above in one word:\" instead of <|im_end|>",
                             [ALL, 'model.text_suffix="\\nSummarize the above in one word:"']),
    # round 8: the CTX half ends near chance in every round. The projector starts from random weights, yet trains at
    # the pretrained encoder's 5e-5: ~100 Adam steps of 5e-5 leave it at its random init (round 1's 1e-3 was tried
    # only on the q/v recipe, where nothing learned). Measured: 0.1480, near the chance loss for 50 steps (README)
    "t0.02+projector-lr-5e-4": ("the projector at the LoRA rate, 5e-4, instead of the encoder's 5e-5",
                                [ALL, "optim.lr_projector=5.0e-4"]),
    # round 9: a query's CTX sits after its instruction (an ordinary token), a document's right after BOS (a sink):
    # the CTX half compares two different states. CTX first, after a newline, puts both at position 2 behind the
    # same two tokens, so the CTX half is one function of the encoder's vector for queries and documents alike
    "t0.02+ctx-first-newline": ("CTX before the instruction, after a newline: every text's CTX at position 2",
                                [ALL, "model.ctx_placement=after_bos", 'model.ctx_prefix="\\n"']),
    # round 10: round 9's CTX half scored 0.611 alone and its EOS half 0.003: trained on the concatenation only,
    # whichever half learns first carries the score and the other stays near-constant. Train each half alone too
    "ctx-first+halves-loss": ("round 9's layout + InfoNCE on each half alone at weight 0.5 (optim.halves_loss_weight)",
                              [ALL, "model.ctx_placement=after_bos", 'model.ctx_prefix="\\n"',
                               "optim.halves_loss_weight=0.5"]),
    # round 11: zero-shot, the CTX's last state retrieves at chance (0.05) because SmolLM2's layers add updates of
    # norm 30-600 at its position to a CTX vector of norm ~1; scaled 3,000x it passes through and retrieves about as
    # well as the projector's output (model/config.py). Start training from a CTX half that already retrieves
    "ctx-first+halves-loss+ctx-scale-3000": ("round 10 + the CTX vector scaled 3,000x where it enters the decoder",
                                             [ALL, "model.ctx_placement=after_bos", 'model.ctx_prefix="\\n"',
                                              "optim.halves_loss_weight=0.5", "model.ctx_scale=3000"]),
    # round 12: round 11 scored 0.7307 where MiniLM alone scores 0.7191 zero-shot and 0.7956 fine-tuned on the same
    # number of pairs: through the decoder the encoder barely learns. Train its own pooled vector to retrieve too
    "ctx-scale-3000+encoder-loss": ("round 11 (the base config) + InfoNCE on the encoder's own pooled vector at "
                                    "t 0.05, weight 1 (optim.encoder_loss_weight)", ["optim.encoder_loss_weight=1.0"]),
    # round 13: round 12's trained encoder retrieves at 0.785 on its own pooled vector, its random-init projection
    # at 0.748, the CTX half at 0.740: the projector loses most of it. Start the projector as an exact isometry
    "ctx-scale-3000+encoder-loss+isometric-projector": ("round 12 + the projector starting as an isometry x -> Qx "
                                                        "(model.projector_init=isometry)",
                                                        ["optim.encoder_loss_weight=1.0",
                                                         "model.projector_init=isometry"]),
}


def train(args, name: str, sets: list[str], pairs: Path, work: Path) -> dict:
    negatives = load_config(args.config, sets).data.num_hard_negatives  # as the run will see it
    if negatives:
        pairs = hard_negative_pairs(args.data, pairs, negatives)
    summary = budget_run(args.config, f"recipe-{name}", pairs, work, steps=args.steps, micro_batch=args.micro_batch,
                         sets=sets)
    history = summary["history"]
    steady = [h for h in history[1:] if "samples_per_s" in h] or history
    return {"sets": sets[len(args.common):], "train_s": summary["train_s"],
            "samples_per_s": round(float(np.mean([h["samples_per_s"] for h in steady])), 3),
            "peak_memory_gb": max(h.get("peak_memory_gb", 0) for h in history),
            "loss": [(h["step"], round(h["loss"], 4)) for h in history if "loss" in h],
            "grad_norm": [(h["step"], round(h["grad_norm"], 1)) for h in history if "grad_norm" in h],
            "export_dir": summary["export_dir"]}


def run_anchor(args, pairs: Path, work: Path, budget: int) -> dict:
    from anchor import load_anchor, train_anchor

    print(f"== {ANCHOR}", flush=True)
    row = train_anchor(pairs, work / "anchor", samples=budget, batch_size=2 * args.micro_batch)
    row |= {"why": "the bar: the encoder fine-tuned without the decoder, same pairs", "steps": row["steps"],
            "global_batch": row["batch_size"]}
    row["dev"] = score(args, load_anchor(row["model_dir"], args.eval_dtype))
    print(f"{ANCHOR}: dev nDCG@10 {row['dev']['ndcg_at_10']:.4f}", flush=True)
    return row


def score(args, model) -> dict:
    """dev metrics of a model directory (loaded in --eval-dtype) or of a loaded model. For a concat model, also each
    half on its own (`ctx`: h_ctx alone, `eos`: h_eos alone): which half carries the retrieval signal."""
    from causal2vec import Causal2Vec
    from causal2vec.eval.retrieval import evaluate

    if isinstance(model, str):
        model = Causal2Vec.from_pretrained(model, dtype=args.eval_dtype)
    return evaluate(model, debian_task(args.data, "dev", args.dev_queries, args.corpus_size), batch_size=64,
                    halves=True)


def plot(rows: dict, path: Path) -> None:
    plt = pyplot()
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 3))
    names = list(rows)
    values = [rows[n]["dev"]["ndcg_at_10"] for n in names]
    bars.barh(names, values, color="tab:blue")
    for y, v in enumerate(values):
        bars.text(v + 0.005, y, f"{v:.3f}", va="center")
    bars.invert_yaxis()
    bars.set_xlim(0, max(values) + 0.12)
    any_dev = rows[names[0]]["dev"]
    bars.set_xlabel(f"dev nDCG@10 ({any_dev['queries']} queries, {any_dev['corpus_size']} docs)")
    for name in names:
        if "loss" in rows[name]:
            steps, losses = zip(*rows[name]["loss"])
            curves.plot(steps, losses, label=name)
    curves.set_xlabel("optimizer step")
    curves.set_ylabel("train loss (InfoNCE)")
    curves.legend(fontsize=7)
    fig.suptitle("Training-recipe experiments on the dev split (same pairs, same budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/train/dev)")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml")
    parser.add_argument("--experiments", nargs="*", default=[], choices=list(EXPERIMENTS))
    parser.add_argument("--custom", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                        help="an ad-hoc experiment: its name, then its overrides")
    parser.add_argument("--redo", nargs="*", default=[], help="run these again even if done")
    parser.add_argument("--common", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every experiment that change cost, not results (e.g. "
                             "model.gradient_checkpointing=true when memory is short)")
    parser.add_argument("--anchor", action="store_true",
                        help="also fine-tune all-MiniLM-L6-v2 alone on the same pairs (bench/anchor.py)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--micro-batch", type=int, default=16, help="per worker; 2 workers")
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--corpus-size", type=int, default=5000, help="judged documents + distractors")
    parser.add_argument("--eval-dtype", default=native_dtype_name())
    parser.add_argument("--keep-models", action="store_true", help="keep each experiment's exported model")
    parser.add_argument("--work", type=Path, help="default: bench/work/<the output's name>")
    parser.add_argument("--output", type=Path, default=RESULTS / "recipe.json")
    args = parser.parse_args()
    args.data = args.data.resolve()
    work = (args.work or ROOT / "bench" / "work" / args.output.stem).resolve()  # one work folder per results file
    work.mkdir(parents=True, exist_ok=True)
    todo = {name: EXPERIMENTS[name] for name in args.experiments}
    todo |= {name: ("ad hoc", sets) for name, *sets in args.custom}

    pairs = one_pass_pairs(args.data, work, args.steps, args.micro_batch)  # every experiment sees the same pairs once
    budget = args.steps * 2 * args.micro_batch

    import ray

    ray.init(num_cpus=4, include_dashboard=False)  # more logical CPUs than cores (PLATFORM notes)
    done_file = work / "done.json"
    report = {"command": command(), "hardware": hardware(), "base_config": str(args.config.relative_to(ROOT)),
              "eval": {"split": "dev", "queries": args.dev_queries, "corpus_size": args.corpus_size,
                       "dtype": args.eval_dtype}}
    rows = finished_rows(done_file, args.output, report, ("base_config", "eval"), "experiments")
    for name, (why, sets) in todo.items():
        if name in rows and name not in args.redo:
            print(f"{name}: done earlier, dev nDCG@10 {rows[name]['dev']['ndcg_at_10']:.4f}", flush=True)
            continue
        print(f"== {name}: {why}\n   {' '.join(sets)}", flush=True)
        try:
            row = {"why": why, "steps": args.steps, "global_batch": 2 * args.micro_batch, "common": args.common,
                   **train(args, name, args.common + sets, pairs, work)}
        except Exception as exc:  # one failed experiment (e.g. out of memory) must not end the queue
            print(f"{name}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            continue
        row["dev"] = score(args, row["export_dir"])
        if not args.keep_models:
            shutil.rmtree(row.pop("export_dir"), ignore_errors=True)
        rows[name] = row | {"hardware": report["hardware"]}  # a queue that spans sessions may span machines
        done_file.write_text(json.dumps(rows, indent=1))
        print(f"{name}: dev nDCG@10 {row['dev']['ndcg_at_10']:.4f}  Recall@10 {row['dev']['recall_at_10']:.4f}  "
              f"final loss {row['loss'][-1][1]:.3f}  {row['samples_per_s']:.2f} samples/s  "
              f"peak {row['peak_memory_gb']:.1f} GB/worker", flush=True)
    ray.shutdown()
    if args.anchor and (ANCHOR not in rows or ANCHOR in args.redo):
        rows[ANCHOR] = run_anchor(args, pairs, work, budget) | {"hardware": report["hardware"]}
        done_file.write_text(json.dumps(rows, indent=1))

    args.output.write_text(json.dumps(report | {"experiments": rows}, indent=1))
    plot(rows, args.output.with_suffix(".png"))
    print(f"\n{'experiment':34} dev nDCG@10  loss   samples/s  GB/worker")
    for name, row in rows.items():
        loss = row["loss"][-1][1] if "loss" in row else float("nan")
        print(f"{name:34} {row['dev']['ndcg_at_10']:.4f}      {loss:.3f}  {row['samples_per_s']:6.2f}  "
              f"{row.get('peak_memory_gb', float('nan')):6.1f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
