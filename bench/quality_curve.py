"""Test nDCG@10 against training pairs seen, from quality runs already measured (bench/train_quality.py,
bench/gpu_quality.py): Causal2Vec next to its same-pairs anchor, with BM25 and a target line, and what a log-linear
fit of the last two Causal2Vec points says the target would cost. Reads JSON only; trains and embeds nothing.

    python bench/quality_curve.py bench/results/train_quality_smollm2_r13.json \
        bench/results/train_quality_smollm2_gpu.json bench/results/train_quality_smollm2_gpu_340.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common import RESULTS, command, pyplot


def point(path: Path) -> dict:
    """One run: pairs seen, its test metrics, its anchor's, and where it ran."""
    result = json.loads(path.read_text())
    where = result["hardware"].get("gpu") or result["hardware"]["cpu"]
    return {"file": str(path), "pairs": result["train"]["samples"], "runner": result.get("runner", "Ray Train job"),
            "where": where, "ndcg_at_10": result["test"]["ndcg_at_10"],
            "anchor_ndcg_at_10": (result.get("anchor") or {}).get("test", {}).get("ndcg_at_10"),
            "bm25": result["baselines_test"]["BM25 (bm25s)"]["ndcg_at_10"]}


def per_doubling(a: dict, b: dict) -> float:
    """nDCG@10 gained per doubling of pairs on the line through two points in (log2 pairs, nDCG@10)."""
    return (b["ndcg_at_10"] - a["ndcg_at_10"]) / math.log2(b["pairs"] / a["pairs"])


def pairs_for(target: float, b: dict, slope: float) -> float | None:
    """Pairs at which that line, through `b`, reaches `target`; None if it never does."""
    return b["pairs"] * 2 ** ((target - b["ndcg_at_10"]) / slope) if slope > 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="quality results JSON files")
    parser.add_argument("--target", type=float, default=0.76)
    parser.add_argument("--output", type=Path, default=RESULTS / "quality_curve.json")
    args = parser.parse_args()
    points = sorted((point(p) for p in args.results), key=lambda p: p["pairs"])
    a, b = points[-2:]
    slope = per_doubling(a, b)
    need = pairs_for(args.target, b, slope)
    fit = {"from": [a["pairs"], b["pairs"]], "per_doubling": slope, "pairs_for_target": need}
    args.output.write_text(json.dumps({"command": command(), "target": args.target, "points": points, "fit": fit},
                                      indent=1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pairs = [p["pairs"] for p in points]
    ax.plot(pairs, [p["ndcg_at_10"] for p in points], "o-", color="tab:green", label="Causal2Vec smollm2")
    anchors = [(p["pairs"], p["anchor_ndcg_at_10"]) for p in points if p["anchor_ndcg_at_10"] is not None]
    ax.plot(*zip(*anchors), "s--", color="tab:grey", label="anchor: MiniLM alone, same pairs")
    for p in points:
        ax.annotate(f"{p['ndcg_at_10']:.4f}\n{p['where']}", (p["pairs"], p["ndcg_at_10"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -22))
    ax.axhline(points[0]["bm25"], color="tab:red", lw=1, label=f"BM25 {points[0]['bm25']:.4f}")
    ax.axhline(args.target, color="tab:blue", lw=1, ls=":", label=f"target {args.target}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(pairs, [f"{n:,}" for n in pairs])
    ax.minorticks_off()
    ax.set_xlabel("training pairs seen (log scale)")
    ax.set_ylabel("test nDCG@10 (whole corpus)")
    where = f"~{need:,.0f} pairs" if need else "never"
    ax.set_title(f"Quality against budget; the last two points' trend reaches {args.target} at {where}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.output.with_suffix(".png"), dpi=120)
    print(json.dumps(fit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
