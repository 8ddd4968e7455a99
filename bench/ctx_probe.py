"""Does the decoder read the Contextual token? A look inside models whose CTX half scores at chance.

For each model (a preset or an exported directory), on bundled sample documents (no instruction: CTX right after
BOS) and sample queries (after the Debian task's instruction):
- per layer, the attention the text tokens pay to BOS and to CTX (mean over heads, text tokens and texts), and
  the residual-stream norm at CTX next to that of the text's last token (EOS);
- at the last layer, the mean cosine between the CTX states of different texts (near 1: a constant, not a
  summary), and how far a text's EOS state moves when its CTX vector is swapped for another text's.
Writes bench/results/ctx_probe.json and a PNG (attention to CTX and CTX's norm per layer, one line per model and kind).

    python bench/ctx_probe.py --models smollm2 bench/work/ablation_smollm2/ablation-ctx-True
    python bench/ctx_probe.py --models smollm2 --ctx-prefix $'\n' --output bench/results/ctx_probe_newline.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from common import RESULTS, command, hardware, pyplot

from causal2vec.model.causal2vec import Causal2Vec
from causal2vec.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "platform" / "causal2vec" / "samples"


def mean_offdiagonal_cosine(x: torch.Tensor) -> float:
    sims = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    return float((sims.sum() - sims.diagonal().sum()) / (len(x) * (len(x) - 1)))


@torch.no_grad()
def probe(model: Causal2Vec, texts: list[str], instruction: str | None) -> dict:
    batch = model.builder(texts, instruction)
    dec = batch.decoder
    ctx = model.context_vectors(batch.encoder)
    rows = torch.arange(len(texts))
    last = dec.attention_mask.sum(1) - 1  # the EOS position (main loads every model with right padding)

    out = model.decoder(inputs_embeds=model.decoder_inputs(dec, ctx), attention_mask=dec.attention_mask,
                        position_ids=dec.position_ids, output_attentions=True, output_hidden_states=True,
                        use_cache=False)
    layers = []
    for attention, hidden in zip(out.attentions, out.hidden_states[1:]):
        heads = attention.float().mean(1)  # [rows, query, key]
        to_bos, to_ctx = [], []
        for r in range(len(texts)):
            text = torch.arange(int(dec.ctx_index[r]) + 1, int(last[r]) + 1)
            to_bos.append(heads[r, text, 0].mean())
            to_ctx.append(heads[r, text, dec.ctx_index[r]].mean())
        layers.append({"attention_to_bos": round(float(torch.stack(to_bos).mean()), 4),
                       "attention_to_ctx": round(float(torch.stack(to_ctx).mean()), 4),
                       "norm_ctx": round(float(hidden[rows, dec.ctx_index].float().norm(dim=-1).mean()), 1),
                       "norm_last_token": round(float(hidden[rows, last].float().norm(dim=-1).mean()), 1)})
    final_ctx = out.last_hidden_state[rows, dec.ctx_index].float()
    final_eos = out.last_hidden_state[rows, last].float()
    swapped_eos = model.decoder_hidden_states(dec, ctx.roll(1, 0))[rows, last].float()
    return {"texts": len(texts), "ctx_index": int(dec.ctx_index[0]),
            "ctx_input_norm": round(float(ctx.float().norm(dim=-1).mean()), 2),
            "final_ctx_cosine_between_texts": round(mean_offdiagonal_cosine(final_ctx), 4),
            "eos_moves_when_ctx_swapped": round(float((final_eos - swapped_eos).norm(dim=-1).mean()
                                                      / final_eos.norm(dim=-1).mean()), 4),
            "layers": layers}


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in results:
        label = f"{Path(row['model']).name}{' + prefix' if row['ctx_prefix'] else ''}, {row['kind']}"
        style = "-" if row["kind"] == "documents" else "--"
        left.plot([layer["attention_to_ctx"] for layer in row["layers"]], style, label=label)
        right.plot([layer["norm_ctx"] for layer in row["layers"]], style, label=label)
    right.plot([layer["norm_last_token"] for layer in results[0]["layers"]], ":", color="grey",
               label=f"EOS, for scale ({Path(results[0]['model']).name}, {results[0]['kind']})")
    left.set(xlabel="decoder layer", ylabel="attention from the text to CTX", title="Does the text read CTX?")
    right.set(xlabel="decoder layer", ylabel="residual-stream norm at CTX", title="Is CTX a sink?")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2"], help="presets or exported model directories")
    parser.add_argument("--texts", type=int, default=16, help="documents and queries each, from the samples")
    parser.add_argument("--ctx-prefix", help="probe with this config.ctx_prefix instead of each model's own")
    parser.add_argument("--output", type=Path, default=RESULTS / "ctx_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    instruction = load_config(ROOT / "jobs" / "configs" / "smollm2.yaml").data.train[0].instruction  # as trained
    kinds = {"documents": (pq.read_table(SAMPLES / "corpus.parquet").column("text").to_pylist(), None),
             "queries": (pq.read_table(SAMPLES / "queries.parquet").column("query").to_pylist(), instruction)}
    results = []
    for source in args.models:
        overrides = {"padding_side": "right"}  # BOS at column 0, EOS at the last real token
        if args.ctx_prefix is not None:
            overrides["ctx_prefix"] = args.ctx_prefix
        model = Causal2Vec.from_pretrained(source, device="cpu", **overrides).eval()
        if not model.config.use_ctx_token:
            raise SystemExit(f"{source}: this model has no Contextual token to probe")
        model.decoder.set_attn_implementation("eager")  # SDPA does not return attention weights
        for kind, (texts, instruction) in kinds.items():
            row = {"model": source, "ctx_prefix": model.config.ctx_prefix, "kind": kind}
            row |= probe(model, texts[:args.texts], instruction)
            results.append(row)
            peak = max(row["layers"], key=lambda layer: layer["attention_to_ctx"])
            jump = max(layer["norm_ctx"] / layer["norm_last_token"] for layer in row["layers"])
            print(f"{source}, {kind} (CTX at {row['ctx_index']}): attention to CTX peaks at "
                  f"{peak['attention_to_ctx']:.3f}; CTX norm up to {jump:.1f}x EOS's; final CTX states' cosine "
                  f"{row['final_ctx_cosine_between_texts']:.3f}; EOS moves {row['eos_moves_when_ctx_swapped']:.3f} "
                  f"when CTX is swapped", flush=True)
    args.output.write_text(json.dumps({"command": command(), "hardware": hardware(), "models": results}, indent=1))
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
