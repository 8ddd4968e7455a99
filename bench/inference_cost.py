"""Inference cost of Causal2Vec against the decoder-only embedding methods it replaces.

Same decoder architecture, same texts, same batches, for:
  last-token  [BOS] text [EOS], EOS state                                  (the plain decoder baseline)
  echo        [BOS] Rewrite the sentence: text, rewritten sentence: text [EOS], mean over the second copy
              (Springer et al., "Repetition improves language model embeddings")
  icl         [BOS] 3 few-shot (query, document) examples + text [EOS], EOS state   (bge-en-icl style)
  causal2vec  all-MiniLM-L6-v2 pass -> CTX; [BOS] [CTX] text [EOS]; [h_ctx ; h_eos]  (the library's own encode)
Decoders are random-init Qwen2-architecture models at 0.5B, 1.5B and 7B sizes (weights do not change the cost), and
the real SmolLM2-135M-Instruct of the `smollm2` preset (`--sizes smollm2`).

--kind picks what is embedded: `documents` (corpus texts, the default) or `queries` (search queries). bge-en-icl
puts its few-shot examples on the query side only (documents are embedded bare, as in last-token), so `queries`
is the like-for-like ICL comparison; `documents` with examples prepended shows ICL's cost on long texts. The three
examples are drawn with their own seeded generator, so every run (any --n, --kind) uses the same ones.

    python bench/inference_cost.py --kind queries --sizes 0.5B 1.5B --dtypes bf16 --merge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from common import RESULTS, hardware, pyplot
from common import command as this_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZES = {  # Qwen2 family shapes
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4),
}
REAL = "smollm2"  # the preset with a real pretrained LLM decoder
ECHO = ("Rewrite the sentence: ", ", rewritten sentence: ")
ICL_TASK = "Given a Debian package synopsis, retrieve its description"
METHODS = ["last-token", "echo", "icl", "causal2vec"]
KINDS = {"documents": ("platform/causal2vec/samples/corpus.parquet", "text"),  # --kind -> (default file, column)
         "queries": ("platform/causal2vec/samples/queries.parquet", "query")}


def build_model(size: str, dtype: torch.dtype, device: str):
    from transformers import AutoModel, AutoTokenizer, Qwen2Config

    if size == REAL:
        from causal2vec import Causal2Vec

        return Causal2Vec.from_pretrained(REAL, device=device, dtype=dtype, max_encoder_length=512,
                                          max_decoder_length=4096)

    from causal2vec.model.config import Causal2VecConfig
    from causal2vec.model.build import seeded
    from causal2vec.model.causal2vec import assemble
    from causal2vec.model.presets import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    encoder = AutoModel.from_pretrained(minilm_path())
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, bos_token_id=tok.cls_token_id,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **SIZES[size])
    decoder = seeded(0, lambda: AutoModel.from_config(config, attn_implementation="sdpa"))
    c2v_config = Causal2VecConfig(encoder="all-MiniLM-L6-v2", decoder=f"qwen2-{size}-random", max_encoder_length=512,
                                  max_decoder_length=4096)
    return assemble(c2v_config, encoder, decoder, tok, tok, device=device, dtype=dtype)


def baseline_rows(model, texts: list[str], method: str, examples: list[tuple[str, str]]):
    """Token ids and the positions each baseline pools, per text."""
    tok = model.decoder_tokenizer
    enc = lambda s: tok(s, add_special_tokens=False, truncation=True, max_length=512)["input_ids"]  # noqa: E731
    bos, eos = [model.builder.bos_id], [model.builder.eos_id]
    icl_prefix = []
    for query, doc in examples:
        icl_prefix += enc(f"<instruct>{ICL_TASK}\n<query>{query}\n<response>{doc}\n")
    icl_prefix += enc(f"<instruct>{ICL_TASK}\n<query>")
    rows = []
    for text in texts:
        ids = enc(text)
        if method == "last-token":
            row = bos + ids + eos
            rows.append((row, [len(row) - 1]))
        elif method == "echo":
            first = bos + enc(ECHO[0]) + ids + enc(ECHO[1])
            row = first + ids + eos
            rows.append((row, list(range(len(first), len(row) - 1))))
        else:  # icl
            row = bos + icl_prefix + ids + eos
            rows.append((row, [len(row) - 1]))
    return rows


@torch.inference_mode()
def run_baseline(model, rows) -> np.ndarray:
    """One right-padded decoder forward over the rows; pools each row's positions."""
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), model.builder.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (row, _) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    hidden = model.decoder(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           use_cache=False).last_hidden_state
    return torch.stack([hidden[i, pos].mean(0) for i, (_, pos) in enumerate(rows)]).float().cpu().numpy()


def time_methods(model, texts: list[str], examples, batch_size: int, repeats: int) -> dict:
    """Per-method tokens and best wall time per text.

    Every method first runs once over all batches untimed (allocator and oneDNN kernel caches warm up per shape);
    then `repeats` timed rounds run the methods in a rotated order, so drift does not favour one method.
    """
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]  # texts come sorted by length
    steps, tokens = {}, {}
    for method in METHODS:
        if method == "causal2vec":
            steps[method] = lambda b: model.encode(b, batch_size=len(b))  # noqa: E731
            tokens[method] = (model.builder.count_decoder_tokens(texts),
                              model.builder.encode_for_encoder(texts).attention_mask.sum(1).tolist())
        else:
            steps[method] = lambda b, m=method: run_baseline(model, baseline_rows(model, b, m, examples))  # noqa: E731
            tokens[method] = ([len(r) for r, _ in baseline_rows(model, texts, method, examples)], [0] * len(texts))
    best = dict.fromkeys(METHODS, float("inf"))
    for round_ in range(repeats + 1):
        order = METHODS[round_ % len(METHODS):] + METHODS[:round_ % len(METHODS)]
        for method in order:
            t0 = time.perf_counter()
            for batch in batches:
                steps[method](batch)
            if round_ > 0:  # round 0 is the warm-up
                best[method] = min(best[method], time.perf_counter() - t0)
    out = {}
    for method in METHODS:
        out[method] = {"decoder_tokens_per_text": float(np.mean(tokens[method][0])),
                       "encoder_tokens_per_text": float(np.mean(tokens[method][1])),
                       "seconds_per_text": best[method] / len(texts)}
        print(f"    {method:<11} {out[method]['decoder_tokens_per_text']:7.1f} dec tok/text  "
              f"{1000 * out[method]['seconds_per_text']:8.1f} ms/text", flush=True)
    c2v = out["causal2vec"]
    for base in ("echo", "icl", "last-token"):
        c2v[f"time_ratio_vs_{base}"] = c2v["seconds_per_text"] / out[base]["seconds_per_text"]
        c2v[f"token_ratio_vs_{base}"] = c2v["decoder_tokens_per_text"] / out[base]["decoder_tokens_per_text"]
    icl_extra = np.mean(tokens["icl"][0]) - np.mean(tokens["last-token"][0])  # the examples + their template
    return {"n_texts": len(texts), "repeats": repeats, "batch_size": batch_size,
            "icl_examples_tokens": float(icl_extra), "methods": out}


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    runs = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(METHODS)
    for j, method in enumerate(METHODS):
        xs = np.arange(len(runs)) + j * width
        axes[0].bar(xs, [1000 * results[r]["methods"][method]["seconds_per_text"] for r in runs], width,
                    label=method)
        axes[1].bar(xs, [results[r]["methods"][method]["decoder_tokens_per_text"] for r in runs], width,
                    label=method)
    for ax, title in zip(axes, ["wall time per text (ms, log)", "decoder tokens per text"]):
        ax.set_xticks(np.arange(len(runs)) + 0.4 - width / 2, runs, fontsize=7, rotation=20)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[1].legend()
    fig.suptitle("Inference cost per text: Causal2Vec vs last-token, Echo, ICL (same decoder, same texts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=list(KINDS), default="documents", help="what to embed (see above)")
    parser.add_argument("--texts", help="parquet of texts to embed (default: the bundled sample for --kind)")
    parser.add_argument("--examples", default="platform/causal2vec/samples/pairs.parquet",
                        help="parquet with `query`, `positive`: the ICL few-shot examples are drawn from it")
    parser.add_argument("--n", type=int, default=16, help="texts to time")
    parser.add_argument("--sizes", nargs="+", default=["0.5B", "1.5B"], choices=[*SIZES, REAL])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up round (best kept)")
    parser.add_argument("--output", default=str(RESULTS / "inference_cost.json"))
    parser.add_argument("--merge", action="store_true",
                        help="add these runs to an existing --output (run sizes/dtypes in separate invocations)")
    args = parser.parse_args()

    from causal2vec.cli import quiet_third_party

    quiet_third_party(verbose=False)
    default_path, column = KINDS[args.kind]
    args.texts = args.texts or default_path
    all_texts = pq.read_table(args.texts, columns=[column])[column].to_pylist()
    picks = np.random.default_rng(0).choice(len(all_texts), args.n, replace=False)
    texts = sorted((all_texts[i] for i in picks), key=len, reverse=True)
    pairs = pq.read_table(args.examples).to_pylist()
    examples = [(p["query"], p["positive"])
                for p in (pairs[i] for i in np.random.default_rng(1).choice(len(pairs), 3, replace=False))]

    results = {}
    for size in args.sizes:
        for dtype in args.dtypes:
            print(f"==> {size} decoder, {dtype}, {args.n} texts, batch {args.batch_size}", flush=True)
            t0 = time.perf_counter()
            model = build_model(size, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype], args.device)
            print(f"    built in {time.perf_counter() - t0:.0f}s", flush=True)
            results[f"{size} {dtype} {args.kind}"] = {
                "kind": args.kind, "texts": args.texts,
                **time_methods(model, texts, examples, args.batch_size, args.repeats)}
            del model
    command = this_command()
    out = Path(args.output)
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        results = previous["results"] | results
        command = previous["command"] if command in previous["command"] else f"{previous['command']} && {command}"
    report = {"command": command, "hardware": hardware(), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    print("\n| run | C2V/Echo time | C2V/ICL time | C2V/last-token time | C2V/Echo tokens | C2V/ICL tokens |")
    print("|---|---|---|---|---|---|")
    for run, r in results.items():
        c = r["methods"]["causal2vec"]
        print(f"| {run} | {c['time_ratio_vs_echo']:.2f} | {c['time_ratio_vs_icl']:.2f} | "
              f"{c['time_ratio_vs_last-token']:.2f} | {c['token_ratio_vs_echo']:.2f} | {c['token_ratio_vs_icl']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
