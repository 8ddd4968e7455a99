"""Where the gradient of the first training steps goes: the encoder, the projector, or the decoder's adapters.

DeepSpeed clips the *global* gradient norm (optim.max_grad_norm), so a part whose gradient dwarfs the others sets
the scale every other part is updated at. One process, fp32, the first micro-batches of the bundled pairs, each
layout given as training-config overrides:

    python bench/grad_share.py --layout reference= --layout 'ctx-first-newline=model.ctx_placement=after_bos,\
model.ctx_prefix="\\n"' --layout 'no-ctx-token=model.use_ctx_token=false,model.pooling=last'
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import torch
from common import RESULTS, command, hardware, pyplot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "platform" / "causal2vec" / "samples" / "pairs.parquet"


def part_of(name: str) -> str:
    if "projector" in name:
        return "projector"
    if "context_encoder" in name:
        return "encoder"
    return "decoder adapters"


def measure(config_path: Path, overrides: list[str], batches: int, batch_size: int) -> list[dict]:
    """Loss and per-part gradient norm of each of the first `batches` micro-batches, from the fresh model."""
    from causal2vec.train.config import load_config
    from causal2vec.train.data import TokenizePairs, collate
    from causal2vec.train.loop import build_model, embed_passes
    from causal2vec.train.loss import batch_loss

    config = load_config(config_path, ["data.dev=null", "model.gradient_checkpointing=true", *overrides])
    torch.manual_seed(config.data.seed)
    model = build_model(config)
    instruction = config.data.train[0].instruction  # the config's query instruction, as the training job uses it
    rows = TokenizePairs(config.model.source(), 0, instruction)(pq.read_table(PAIRS))
    model.train()
    out = []
    for i in range(batches):
        batch = collate(model.builder, rows.slice(i * batch_size, batch_size), config.optim.rows_per_pass)
        loss = batch_loss(embed_passes(model, batch, "cpu"), batch.queries, config.optim, gather=False)
        loss.backward()
        squares: dict[str, float] = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                squares[part_of(name)] = squares.get(part_of(name), 0.0) + p.grad.float().pow(2).sum().item()
        total = sum(squares.values()) ** 0.5
        out.append({"loss": loss.item(), "grad_norm": total, "parts": {k: v ** 0.5 for k, v in squares.items()}})
        print(f"  batch {i}: loss {loss.item():.3f}  grad norm {total:.1f}  " +
              "  ".join(f"{k} {v ** 0.5:.1f}" for k, v in squares.items()), flush=True)
        model.zero_grad(set_to_none=True)
    return out


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(results)
    parts = ["encoder", "projector", "decoder adapters"]
    for j, part in enumerate(parts):
        means = [sum(r["parts"].get(part, 0.0) for r in results[n]) / len(results[n]) for n in names]
        ax.bar([i + (j - 1) * 0.27 for i in range(len(names))], means, width=0.27, label=part)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("gradient norm (mean over batches)")
    ax.set_title("Where the first steps' gradient goes (smollm2, fp32)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml")
    parser.add_argument("--layout", action="append", required=True, metavar="NAME=KEY=VALUE,...",
                        help="a name and its comma-separated training-config overrides (may be empty)")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=RESULTS / "grad_share.json")
    args = parser.parse_args()
    results = {}
    for spec in args.layout:
        name, _, sets = spec.partition("=")
        print(name, flush=True)
        results[name] = measure(args.config, [s for s in sets.split(",") if s], args.batches, args.batch_size)
    args.output.write_text(json.dumps({"command": command(), "hardware": hardware(), "layouts": results}, indent=1))
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
