"""Does the decoder read the Contextual token? A look inside models whose CTX half scores at chance.

For each model (a preset or an exported directory), on documents from the bundled sample corpus:
- per layer, the attention the text tokens pay to BOS and to CTX (mean over heads, text tokens and documents), and
  the residual-stream norm at CTX next to that of the text's last token;
- at the last layer, the mean cosine between the CTX states of different documents (near 1: a constant, not a
  summary), and how far a document's EOS state moves when its CTX vector is swapped for another document's.
Writes bench/results/ctx_probe.json and a PNG (attention to CTX and CTX's norm per layer, one line per model).

    python bench/ctx_probe.py --models smollm2 bench/work/ablation_smollm2/ablation-ctx-True
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

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "platform" / "causal2vec" / "samples" / "corpus.parquet"


def mean_offdiagonal_cosine(x: torch.Tensor) -> float:
    sims = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    return float((sims.sum() - sims.diagonal().sum()) / (len(x) * (len(x) - 1)))


@torch.no_grad()
def probe(source: str, texts: list[str]) -> dict:
    model = Causal2Vec.from_pretrained(source, device="cpu").eval()
    if not model.config.use_ctx_token:
        raise SystemExit(f"{source}: this model has no Contextual token to probe")
    model.decoder.set_attn_implementation("eager")  # SDPA does not return attention weights
    batch = model.builder(texts)
    dec = batch.decoder
    ctx = model.context_vectors(batch.encoder)
    rows = torch.arange(len(texts))
    last = dec.attention_mask.sum(1) - 1  # right padding: the EOS position

    def run(ctx_vectors: torch.Tensor):
        return model.decoder(inputs_embeds=model.decoder_inputs(dec, ctx_vectors), attention_mask=dec.attention_mask,
                             position_ids=dec.position_ids, output_attentions=True, output_hidden_states=True,
                             use_cache=False)

    out = run(ctx)
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
    swapped_eos = run(ctx.roll(1, 0)).last_hidden_state[rows, last].float()
    return {"model": source, "documents": len(texts),
            "ctx_input_norm": round(float(ctx.float().norm(dim=-1).mean()), 2),
            "final_ctx_cosine_between_documents": round(mean_offdiagonal_cosine(final_ctx), 4),
            "eos_moves_when_ctx_swapped": round(float((final_eos - swapped_eos).norm(dim=-1).mean()
                                                      / final_eos.norm(dim=-1).mean()), 4),
            "layers": layers}


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in results:
        label = Path(row["model"]).name
        left.plot([layer["attention_to_ctx"] for layer in row["layers"]], label=f"{label}: to CTX")
        left.plot([layer["attention_to_bos"] for layer in row["layers"]], linestyle=":", label=f"{label}: to BOS")
        right.plot([layer["norm_ctx"] for layer in row["layers"]], label=f"{label}: CTX")
        right.plot([layer["norm_last_token"] for layer in row["layers"]], linestyle=":", label=f"{label}: EOS")
    left.set(xlabel="decoder layer", ylabel="attention from text tokens", title="Who the text reads")
    right.set(xlabel="decoder layer", ylabel="residual-stream norm", title="CTX carries a massive activation?")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2"], help="presets or exported model directories")
    parser.add_argument("--documents", type=int, default=16, help="from the bundled sample corpus")
    parser.add_argument("--output", type=Path, default=RESULTS / "ctx_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    texts = pq.read_table(SAMPLE_CORPUS, columns=["text"]).column("text").to_pylist()[:args.documents]
    results = []
    for source in args.models:
        results.append(probe(source, texts))
        row = results[-1]
        peak = max(row["layers"], key=lambda layer: layer["attention_to_ctx"])
        print(f"{source}: attention to CTX peaks at {peak['attention_to_ctx']:.3f}; final CTX states' cosine "
              f"between documents {row['final_ctx_cosine_between_documents']:.3f}; EOS moves "
              f"{row['eos_moves_when_ctx_swapped']:.3f} when CTX is swapped", flush=True)
    args.output.write_text(json.dumps({"command": command(), "hardware": hardware(), "models": results}, indent=1))
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
