"""Where does a Causal2Vec model lose its encoder's retrieval quality? The CTX path's stages, each scored alone.

For each model, on the recipe's dev evaluation (bench/recipe.py: 500 dev queries x their judged documents plus
distractors, 5,000 in all), with the local evaluator:
- `pooled`: the context encoder's pooled vector (for a MiniLM encoder, what sentence-transformers embeds)
- `projected`: that vector through the projector (what enters the decoder, times `ctx_scale`)
The CTX half (the decoder's last state at CTX) and the concatenation are the recipe's own rows
(`halves_ndcg_at_10`); a stage costs the encoder only, seconds per thousand texts. An untrained preset gives the
zero-shot bars (its `pooled` is all-MiniLM-L6-v2 as shipped); `--anchor` scores a sentence-transformers model too.

    python bench/ctx_stages.py --data ../shared/data/debian-pkgs --model zero-shot=smollm2 \\
        --checkpoint round12=bench/work/recipe_round12/runs/recipe-ctx-scale-3000-encoder-loss \\
        --set optim.encoder_loss_weight=1.0 --set model.projector_init=random \\
        --model round13=bench/work/recipe_round12/recipe-ctx-scale-3000-encoder-loss-isometric-projector
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, command, hardware, pyplot  # noqa: E402
from train_quality import debian_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPORTED = ("ndcg_at_10", "recall_at_10", "mrr_at_10")


def reported(metrics: dict) -> dict:
    return {k: round(metrics[k], 4) for k in REPORTED}


def stage_vectors(model, texts: list[str], rows_per_pass: int = 64) -> dict[str, np.ndarray]:
    """The context encoder's pooled vectors and their projections, in input order (passes sorted by length)."""
    from causal2vec.model.inference import in_input_order, length_buckets

    encoder, builder = model.context_encoder, model.builder
    ids = builder.tokenize_for_encoder(texts)
    passes = length_buckets([len(row) for row in ids], rows_per_pass)
    with torch.no_grad():
        parts = []
        for rows in passes:
            batch = builder.encoder_batch([ids[i] for i in rows])
            parts.append(encoder.pool(batch.input_ids, batch.attention_mask))
        pooled = in_input_order(passes, parts)
        projected = encoder.project(pooled)
    return {"pooled": pooled.float().numpy(), "projected": projected.float().numpy()}


def score_stages(model, task) -> dict[str, dict]:
    from causal2vec.eval.retrieval import score_embeddings

    docs, queries = stage_vectors(model, task.corpus), stage_vectors(model, task.queries)  # no instruction: the
    scores = {}                                                                              # encoder never sees one
    for stage in docs:
        metrics = score_embeddings(task, queries[stage], docs[stage])
        scores[stage] = reported(metrics)
        print(f"  {stage:9} nDCG@10 {scores[stage]['ndcg_at_10']:.4f}  Recall@10 {scores[stage]['recall_at_10']:.4f}",
              flush=True)
    return scores


def from_checkpoint(run: Path, config: Path, sets: list[str]):
    """The model in a training run's newest DeepSpeed checkpoint (ZeRO-2: rank 0's module states hold every
    trained weight; frozen ones come from the config's starting model)."""
    from causal2vec.train.config import load_config
    from causal2vec.train.loop import build_model

    checkpoint = run if (run / "deepspeed").is_dir() else sorted(run.glob("checkpoint_*/"))[-1]
    model = build_model(load_config(config, sets)).eval()
    state = torch.load(checkpoint / "deepspeed" / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)["module"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: another projector, LoRA rank, ...
        raise SystemExit(f"{checkpoint}: not this config's model; pass the run's overrides with --set\n{exc}")
    lost = [k for k in missing if k.startswith("context_encoder.") and ".pooler." not in k]
    if unexpected or lost:
        raise SystemExit(f"{checkpoint}: not this config's model (missing {lost[:3]}, unexpected {unexpected[:3]})")
    print(f"{checkpoint}: loaded", flush=True)
    return model


def plot(rows: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(rows)), 4.5))
    stages = ["pooled", "projected"]
    for i, stage in enumerate(stages):
        values = [row.get(stage, {}).get("ndcg_at_10", np.nan) for row in rows.values()]
        bars = ax.bar(np.arange(len(rows)) + (i - 0.5) * 0.38, values, 0.38, label=stage)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(np.arange(len(rows)), list(rows), fontsize=8)
    ax.set_ylim(0.5, 0.9)
    ax.set_ylabel("dev nDCG@10")
    ax.set_title("The CTX path, stage by stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                        help="a preset or a saved model directory")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=RUN",
                        help="a training run's folder (its newest checkpoint) or one checkpoint folder")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml",
                        help="the config the checkpoints' runs trained with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="that run's overrides")
    parser.add_argument("--anchor", type=Path, help="a sentence-transformers model directory, scored as is")
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--corpus-size", type=int, default=5000)
    parser.add_argument("--output", type=Path, default=RESULTS / "ctx_stages.json")
    args = parser.parse_args()
    from causal2vec import Causal2Vec
    from causal2vec.eval.retrieval import evaluate

    task = debian_task(args.data.resolve(), "dev", args.dev_queries, args.corpus_size)
    sources = [(spec, lambda s: Causal2Vec.from_pretrained(s, dtype="fp32").eval()) for spec in args.model]
    sources += [(spec, lambda s: from_checkpoint(Path(s), args.config, args.set)) for spec in args.checkpoint]
    rows = {}
    for spec, load in sources:
        name, _, source = spec.partition("=")
        if not source:
            raise SystemExit(f"--model / --checkpoint take NAME=SOURCE, got {spec!r}")
        print(f"== {name}: {source}", flush=True)
        rows[name] = {"source": source, **score_stages(load(source), task)}
    if args.anchor:
        from anchor import load_anchor

        metrics = evaluate(load_anchor(args.anchor), task)
        rows["anchor"] = {"source": str(args.anchor), "pooled": reported(metrics)}
        print(f"== anchor: nDCG@10 {metrics['ndcg_at_10']:.4f}", flush=True)
    report = {"command": command(), "hardware": hardware(), "config": str(args.config), "overrides": args.set,
              "eval": {"split": "dev", "queries": args.dev_queries, "corpus_size": args.corpus_size, "dtype": "fp32"},
              "models": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    plot(rows, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
