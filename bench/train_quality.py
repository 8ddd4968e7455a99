"""Quality run: train Causal2Vec (default: `smollm2`, jobs/configs/smollm2.yaml) on the Debian training split with
the real job, and score it on the whole test split against the whole corpus, next to a same-run anchor.

Trains through `jobs/train.py` (Ray Train + DeepSpeed, exactly what `ray job submit` runs). The anchor is
all-MiniLM-L6-v2 fine-tuned alone with sentence-transformers on the same pairs file, the same number of pairs, the
same global batch, max length and hard negatives (`data.num_hard_negatives`: mined once, `hard_negative_pairs`), at
its own default temperature (bench/anchor.py): the bar the decoder has to clear. `--corpus-size` scores against
judged documents plus distractors instead (partial; baselines left out). Both are scored by the same evaluator in
the same run; the data set's reference baselines (BM25, MiniLM zero-shot) sit beside them. Writes
bench/results/train_quality_<model>.json and a PNG with the training curve.

    python bench/train_quality.py --data ../shared/data/debian-pkgs --max-steps 200 \
        --set model.gradient_checkpointing=true
    python bench/train_quality.py --data ../shared/data/debian-pkgs --skip-train   # re-score an exported model
    python bench/train_quality.py --data ../shared/data/debian-pkgs \
        --from-recipe bench/work/recipe_round12 ctx-scale-3000+encoder-loss+isometric-projector
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import RESULTS, command, hardware, pyplot

from causal2vec.job_result import PREFIX, find_result
from causal2vec.model.devices import native_dtype_name
from causal2vec.train.config import load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
TASK = "Given a Debian package synopsis, retrieve its description"
ANCHOR = "anchor: MiniLM alone (sentence-transformers)"  # its row's name in bench/recipe.py's results
# From the data set's README: test split, whole corpus (nDCG@10 / Recall@10 / Recall@100 / MRR@10).
BASELINES = {
    "BM25 (bm25s)": {"ndcg_at_10": 0.6515, "recall_at_10": 0.7816, "recall_at_100": 0.8951, "mrr_at_10": 0.6147},
    "all-MiniLM-L6-v2 zero-shot": {"ndcg_at_10": 0.6186, "recall_at_10": 0.7824, "recall_at_100": 0.9168,
                                   "mrr_at_10": 0.5721},
    "all-MiniLM-L6-v2 fine-tuned alone (data README: 20.5k pairs, batch 64)": {
        "ndcg_at_10": 0.7366, "recall_at_10": 0.8723, "recall_at_100": 0.9615, "mrr_at_10": 0.6971},
}


def training_pairs(data: Path, split: str, out: Path) -> Path:
    """The Debian split as training pairs: each synopsis with the description of its package."""
    if out.exists():
        return out
    corpus = pq.read_table(data / "corpus.parquet", columns=["doc_id", "text"])
    text_of = dict(zip(corpus["doc_id"].to_pylist(), corpus["text"].to_pylist()))
    queries = pq.read_table(data / f"{split}.parquet", columns=["query", "doc_id"])
    rows = [(q, text_of[d]) for q, d in zip(queries["query"].to_pylist(), queries["doc_id"].to_pylist())
            if d in text_of]
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"query": [q for q, _ in rows], "positive": [p for _, p in rows]}), out)
    return out


def one_pass_pairs(data: Path, work: Path, steps: int, micro_batch: int) -> Path:
    """`steps` x 2 workers x `micro_batch` training pairs drawn once (seed 0), so that every variant of a comparison
    sees the same pairs exactly once (bench/ablation.py, bench/recipe.py)."""
    import numpy as np

    all_pairs = pq.read_table(training_pairs(data, "train", work.parent / "train_quality" / "train_pairs.parquet"))
    budget = steps * 2 * micro_batch
    pairs = one_pass_file(work, budget)
    pq.write_table(all_pairs.take(np.random.default_rng(0).permutation(all_pairs.num_rows)[:budget]), pairs)
    return pairs


def one_pass_file(work: Path, budget: int) -> Path:
    """Where `one_pass_pairs` keeps a draw of `budget` pairs (read back by `from_recipe`)."""
    return work / f"pairs_{budget}.parquet"


def hard_negative_pairs(data: Path, pairs: Path, num: int, skip: int = 0) -> Path:
    """`pairs` plus a `negatives` column: each query's `num` nearest documents under all-MiniLM-L6-v2 zero-shot
    (`causal2vec.train.mining`), after `skip`. Mined from the training packages' documents only: no dev or test
    package's document is ever a training negative (splits are by source package). `skip` is 0 by default: here
    the nearest non-positives are sibling packages, true negatives and exactly the confusions to learn."""
    out = pairs.with_name(f"{pairs.stem}_neg{num}_skip{skip}.parquet")
    if out.exists():
        return out
    from anchor import load_anchor

    from causal2vec.model.presets import minilm_path
    from causal2vec.train.mining import mine_hard_negatives

    held_out = set()
    for split in ("dev", "test"):
        held_out |= set(pq.read_table(data / f"{split}.parquet", columns=["source"])["source"].to_pylist())
    corpus = pq.read_table(data / "corpus.parquet", columns=["source", "text"])
    texts = [t for t, s in zip(corpus["text"].to_pylist(), corpus["source"].to_pylist()) if s not in held_out]
    table = pq.read_table(pairs)
    miner = load_anchor(minilm_path(), native_dtype_name())  # bf16 where native: ~5x faster, close enough to mine
    print(f"mining {num} hard negative(s) for {table.num_rows} pairs among {len(texts)} documents", flush=True)
    negatives = mine_hard_negatives(miner, table["query"].to_pylist(), table["positive"].to_pylist(), texts,
                                    num=num, skip=skip, show_progress=True)
    pq.write_table(table.append_column("negatives", pa.array(negatives, pa.list_(pa.string()))), out)
    return out


def budget_run(config: Path, name: str, pairs: Path, work: Path, *, steps: int, micro_batch: int,
               sets: list[str], reports: int = 10) -> dict:
    """One experiment through the real job, in this process (Ray already up): `pairs` seen once, no dev evaluation,
    one checkpoint at the end; `sets` go last, so they win. The job's summary plus `train_s`."""
    from causal2vec.train.trainer import run_training

    slug = "".join(c if c.isalnum() else "-" for c in name)
    base = [f"data.train=[{{path: '{pairs}', instruction: \"Instruct: {TASK}\\nQuery: \"}}]", "data.dev=null",
            f"optim.max_steps={steps}", f"optim.micro_batch_size={micro_batch}",
            f"ray.storage_path={work / 'runs'}", f"ray.name={slug}", f"output_dir={work / slug}",
            f"ray.checkpoint_every_steps={steps}", f"ray.report_every_steps={max(1, steps // reports)}"]
    started = time.perf_counter()
    summary = run_training(load_config(config, base + sets)).return_value
    return summary | {"train_s": round(time.perf_counter() - started, 1)}


def train(args, work: Path, pairs: Path) -> dict:
    overrides = {
        "data.train": json.dumps([{"path": str(pairs), "instruction": f"Instruct: {TASK}\nQuery: "}]),
        "data.dev.corpus": str(args.data / "corpus.parquet"),
        "data.dev.queries": str(args.data / "dev.parquet"),
        "optim.max_steps": str(args.max_steps),
        "ray.storage_path": str(work / "runs"),
        "output_dir": str(work / "model"),
        **dict(item.split("=", 1) for item in args.set),
    }
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", str(args.config)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    report = None
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            if line.startswith(PREFIX):
                report = find_result([line])
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0 or report is None:
        raise SystemExit(f"training failed (exit {proc.returncode})")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (work / "train_report.json").write_text(json.dumps(report, indent=1))
    return report


def debian_task(data: Path, split: str, limit_queries: int | None = None, corpus_size: int | None = None):
    """A Debian split as a retrieval task: the whole corpus, or its judged documents plus distractors
    (`corpus_size`)."""
    from causal2vec.eval.retrieval import RetrievalTask

    task = RetrievalTask.from_files(data / "corpus.parquet", data / f"{split}.parquet", name=f"debian-{split}",
                                    description=TASK, corpus_id="doc_id", limit_queries=limit_queries)
    return task.with_corpus_limit(corpus_size) if corpus_size else task


def test_task(args):
    return debian_task(args.data, "test", args.limit_queries, args.corpus_size)


def score(args, model, cache: Path) -> dict:
    """Test metrics of a model directory (loaded in --eval-dtype) or of a loaded model, with each half of a concat
    embedding alone; timed. Embeddings go through `cache` chunk by chunk (one subfolder per model), so an
    interrupted scoring (hours on a CPU) resumes when rerun."""
    from causal2vec import Causal2Vec
    from causal2vec.eval.retrieval import evaluate

    if isinstance(model, Path):
        model = Causal2Vec.from_pretrained(str(model), dtype=args.eval_dtype)
    started = time.perf_counter()
    metrics = evaluate(model, test_task(args), batch_size=64, show_progress=True, cache=cache, halves=True)
    return metrics | {"eval_s": round(time.perf_counter() - started, 1)}


def anchor(args, work: Path, pairs: Path, report: dict) -> dict:
    """MiniLM fine-tuned alone on as many pairs as the Causal2Vec run saw, same batch and max length."""
    from anchor import train_anchor

    config = load_config(args.config, args.set)
    negatives = config.data.num_hard_negatives
    saved = work / "anchor_report.json"
    done = json.loads(saved.read_text()) if saved.exists() else {}
    if done.get("pairs") == report["final"]["samples"] and done.get("hard_negatives", 0) == negatives:
        row = done
    else:
        o = config.optim
        row = train_anchor(pairs, work / "anchor", samples=report["final"]["samples"],
                           batch_size=o.micro_batch_size * config.ray.num_workers * o.grad_accumulation,
                           max_length=config.model.max_encoder_length or 128, negatives=negatives)
        saved.write_text(json.dumps(row, indent=1))
    return row


def from_recipe(work: Path, experiment: str) -> tuple[dict, list[dict], dict | None]:
    """A model bench/recipe.py trained through the real job and kept (`--keep-models`), as (training summary, loss
    history, the recipe's anchor on the same pairs): its pick scored on test without training it again (~85 min on
    a 2-core CPU)."""
    done = work / "done.json"
    rows = json.loads(done.read_text()) if done.exists() else {}
    if experiment not in rows:
        raise SystemExit(f"--from-recipe: no finished experiment {experiment!r} in {done} (has: {', '.join(rows)})")
    row = rows[experiment]
    if not Path(row.get("export_dir", "")).is_dir():
        raise SystemExit(f"--from-recipe: {experiment!r} kept no model (rerun bench/recipe.py with --keep-models)")
    pairs = one_pass_file(work, row["steps"] * row["global_batch"])
    summary = {"steps": row["steps"], "samples": row["steps"] * row["global_batch"], "wall_s": row["train_s"],
               "samples_per_s": row["samples_per_s"], "peak_memory_gb_per_worker": row["peak_memory_gb"],
               "pairs_available": pq.read_metadata(pairs).num_rows, "export_dir": row["export_dir"],
               "overrides": row["common"] + row["sets"], "recipe": {"work": str(work), "experiment": experiment,
                                                                     "dev": row["dev"]}}
    history = [{"step": step, "loss": loss} for step, loss in row["loss"]]
    anchor_row = rows.get(ANCHOR)
    return summary, history, anchor_row and {k: v for k, v in anchor_row.items() if k != "dev"}


def job_summary(report: dict, pairs: Path) -> dict:
    """The training job's report as the results' `train` section (speed over the steady windows after the first)."""
    history = report["history"]
    steady = [h for h in history[1:] if "samples_per_s" in h] or history
    return {"steps": report["final"].get("step"), "samples": report["final"].get("samples"),
            "wall_s": report.get("wall_s"),
            "samples_per_s": round(sum(h["samples_per_s"] for h in steady) / len(steady), 3),
            "peak_memory_gb_per_worker": max(h.get("peak_memory_gb", 0) for h in history),
            "pairs_available": pq.read_metadata(pairs).num_rows, "export_dir": report["export_dir"]}


def plot(history: list[dict], test: dict, anchor_test: dict | None, baselines: dict, label: str, path: Path) -> None:
    plt = pyplot()
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(13, 4.8))
    steps = [h["step"] for h in history if "loss" in h]
    lines = curve.plot(steps, [h["loss"] for h in history if "loss" in h], label="train loss (InfoNCE)",
                       color="tab:blue")
    curve.set_xlabel("optimizer step")
    curve.set_ylabel("loss")
    dev = [(h["step"], h["dev_ndcg_at_10"]) for h in history if "dev_ndcg_at_10" in h]
    if dev:
        right = curve.twinx()
        lines += right.plot(*zip(*dev), "o-", color="tab:orange", label="dev nDCG@10 (subset)")
        right.set_ylabel("dev nDCG@10")
    curve.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    curve.set_title(f"{label} training on Debian pairs")
    named = dict((name, b["ndcg_at_10"]) for name, b in baselines.items())
    if anchor_test:
        named["anchor: MiniLM alone, same pairs (this run)"] = anchor_test["ndcg_at_10"]
    named[f"Causal2Vec {label} (this run)"] = test["ndcg_at_10"]
    bars.barh(list(named), list(named.values()), color=["grey"] * (len(named) - 1) + ["tab:green"])
    for y, v in enumerate(named.values()):
        bars.text(v + 0.005, y, f"{v:.4f}", va="center")
    bars.set_xlim(0, max(named.values()) + 0.12)
    bars.set_xlabel(f"test nDCG@10 ({test['queries']} queries, {test['corpus_size']} docs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the debian-pkgs folder (corpus/train/dev/test)")
    parser.add_argument("--config", type=Path, default=ROOT / "jobs" / "configs" / "smollm2.yaml")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more training overrides")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "train_quality")
    parser.add_argument("--skip-train", action="store_true", help="score the model already exported in --work")
    parser.add_argument("--from-recipe", nargs=2, metavar=("WORK", "EXPERIMENT"),
                        help="score a model bench/recipe.py kept in WORK (and its same-pairs anchor), no training")
    parser.add_argument("--skip-anchor", action="store_true", help="no same-run sentence-transformers anchor")
    parser.add_argument("--eval-dtype", default=native_dtype_name(),
                        help="dtype for embedding the test corpus (fp32, bf16)")
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--corpus-size", type=int, default=None,
                        help="judged documents + distractors instead of the whole corpus (a partial, cheaper score)")
    parser.add_argument("--note", help="anything a reader of the results should know about this run")
    parser.add_argument("--output", type=Path, help="default: bench/results/train_quality_<model>.json")
    args = parser.parse_args()
    if args.from_recipe and (args.skip_train or args.set or args.max_steps != parser.get_default("max_steps")):
        parser.error("--from-recipe scores a model the recipe already trained: --skip-train, --max-steps and --set "
                     "do not apply")
    args.data = args.data.resolve()
    work = args.work.resolve()
    label = model_label(args)
    args.output = args.output or RESULTS / f"train_quality_{label}.json"

    if args.from_recipe:
        train_summary, history, anchor_row = from_recipe(Path(args.from_recipe[0]).resolve(), args.from_recipe[1])
        anchor_row = None if args.skip_anchor else anchor_row
    else:
        pairs = training_pairs(args.data, "train", work / "train_pairs.parquet")
        negatives = load_config(args.config, args.set).data.num_hard_negatives
        if negatives:  # mined once; the anchor trains on the same negatives
            pairs = hard_negative_pairs(args.data, pairs, negatives)
        report = (json.loads((work / "train_report.json").read_text()) if args.skip_train
                  else train(args, work, pairs))
        train_summary, history = job_summary(report, pairs), report["history"]
        anchor_row = None if args.skip_anchor else anchor(args, work, pairs, report)
    test = score(args, Path(train_summary["export_dir"]), work / "eval_cache")
    if anchor_row:
        from anchor import load_anchor

        anchor_row["test"] = score(args, load_anchor(anchor_row["model_dir"], args.eval_dtype), work / "eval_cache")
    baselines = {} if args.corpus_size else BASELINES  # whole-corpus figures: not comparable with a partial score
    result = {
        "command": command(),
        "hardware": hardware(),
        "model": label,
        "train_config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "overrides": train_summary.pop("overrides", args.set),
        "export_dir": train_summary.pop("export_dir"),
        "train": train_summary,
        "eval_dtype": args.eval_dtype,
        "test": test,
        "anchor": anchor_row,
        "baselines_test": baselines,
        "beats": beats(test, baselines, anchor_row),
        "history": history,
        **({"note": args.note} if args.note else {}),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str))
    plot(history, test, anchor_row and anchor_row["test"], baselines, label, args.output.with_suffix(".png"))
    print(f"\ntest nDCG@10 {test['ndcg_at_10']:.4f}  Recall@10 {test['recall_at_10']:.4f}  "
          f"Recall@100 {test['recall_at_100']:.4f}  MRR@10 {test['mrr_at_10']:.4f}")
    if "halves_ndcg_at_10" in test:
        print("  each half alone: nDCG@10 " + "  ".join(f"{half.upper()} {value:.4f}"
                                                       for half, value in test["halves_ndcg_at_10"].items()))
    if anchor_row:
        a = anchor_row["test"]
        print(f"  vs anchor (MiniLM alone, {anchor_row['pairs']} pairs): nDCG@10 {a['ndcg_at_10']:.4f}  "
              f"Recall@10 {a['recall_at_10']:.4f}")
    for name, b in baselines.items():
        print(f"  vs {name}: nDCG@10 {b['ndcg_at_10']:.4f}  Recall@10 {b['recall_at_10']:.4f}")
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


def beats(test: dict, baselines: dict, anchor_row: dict | None) -> dict:
    """Which references the model's test nDCG@10 is above: each baseline, and the same-run anchor when there is one."""
    above = {name: test["ndcg_at_10"] > b["ndcg_at_10"] for name, b in baselines.items()}
    return above | ({"anchor (this run)": test["ndcg_at_10"] > anchor_row["test"]["ndcg_at_10"]} if anchor_row else {})


def model_label(args) -> str:
    m = load_config(args.config, args.set).model
    return m.init or Path(m.decoder).name


if __name__ == "__main__":
    sys.exit(main())
