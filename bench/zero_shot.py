"""Zero-shot: what does an untrained model's embedding carry, half by half, under each layout variant?

A Causal2Vec model reads the states of the token that closes each text and of the CTX token. Before training,
SmolLM2's end-of-turn token <|im_end|> always predicts the same next token, so its state is nearly the same for every
text; a prompt that asks for a summary may make the same position carry one (the default variants, the closings).
Each variant is a set of config overrides, scored on dev queries against their documents plus distractors, as the
concatenation and as each half alone. Writes bench/results/zero_shot.{json,png}.

    python bench/zero_shot.py --data ../shared/data/debian-pkgs
    python bench/zero_shot.py --data ../shared/data/debian-pkgs --output bench/results/ctx_scale.json \
        --variant "CTX x1" ctx_placement=after_bos 'ctx_prefix="\n"' \
        --variant "CTX x3000" ctx_placement=after_bos 'ctx_prefix="\n"' ctx_scale=3000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import RESULTS, command, hardware, pyplot
from recipe import score

from causal2vec import Causal2Vec
from causal2vec.config import read_config
from causal2vec.model.devices import native_dtype_name

# name -> config overrides of the preset
CLOSINGS = {
    "<|im_end|> (the tokenizer's EOS)": {},
    "newline": {"eos_token": "\n"},
    "summary prompt": {"text_suffix": "\nSummarize the above in one word:"},
}


def plot(rows: dict, path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.9 * len(rows) + 1.5))
    names = list(rows)
    parts = [("concat", lambda r: r["ndcg_at_10"]), ("EOS half", lambda r: r["halves_ndcg_at_10"]["eos"]),
             ("CTX half", lambda r: r["halves_ndcg_at_10"]["ctx"])]
    height = 0.8 / len(parts)
    top = 0.0
    for i, (label, value) in enumerate(parts):
        ys = [y + i * height for y in range(len(names))]
        values = [value(rows[n]) for n in names]
        top = max(top, *values)
        ax.barh(ys, values, height=height, label=label)
        for y, v in zip(ys, values):
            ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks([y + height for y in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlim(0, top + 0.12)  # room for the value labels and the legend
    ax.set_xlabel("dev nDCG@10, untrained")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/dev)")
    parser.add_argument("--model", default="smollm2", help="a preset or saved model directory")
    parser.add_argument("--dev-queries", type=int, default=150)
    parser.add_argument("--corpus-size", type=int, default=1000, help="judged documents + distractors")
    parser.add_argument("--eval-dtype", default=native_dtype_name())
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                        help="a variant instead of the default closings: its name, then config overrides (YAML values)")
    parser.add_argument("--output", type=Path, default=RESULTS / "zero_shot.json")
    args = parser.parse_args()
    args.data = args.data.resolve()
    variants = {name: read_config(None, sets) for name, *sets in args.variant} or CLOSINGS  # sets parsed as --set
    rows = {}
    for name, overrides in variants.items():
        started = time.perf_counter()
        model = Causal2Vec.from_pretrained(args.model, dtype=args.eval_dtype, **overrides)
        rows[name] = {"overrides": overrides, **score(args, model), "eval_s": round(time.perf_counter() - started, 1)}
        halves = rows[name]["halves_ndcg_at_10"]
        print(f"{name:36} concat {rows[name]['ndcg_at_10']:.4f}  EOS half {halves['eos']:.4f}  "
              f"CTX half {halves['ctx']:.4f}", flush=True)
    report = {"command": command(), "hardware": hardware(), "model": args.model,
              "eval": {"split": "dev", "queries": args.dev_queries, "corpus_size": args.corpus_size,
                       "dtype": args.eval_dtype}, "variants": rows}
    args.output.write_text(json.dumps(report, indent=1))
    plot(rows, args.output.with_suffix(".png"), f"{args.model} before training: dev nDCG@10 "
         f"({args.dev_queries} queries, {args.corpus_size} docs)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
