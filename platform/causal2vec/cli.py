"""The `causal2vec` command: one verb per front door, each a thin shell over library calls.

    embed, eval, mine-negatives, search   in-process, on one machine
    train, embed-corpus, serve            on the Ray cluster of RAY_ADDRESS, or on a local one they start
    bench                                 the benchmarks of a source checkout (bench/*.py)

Exit status: 0 done, 2 a usage or input error (a bad flag, file, row or setting, named in the message), 1 a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from causal2vec.config import SEARCH_MODES
from causal2vec.errors import USAGE_ERROR, Causal2VecError
from causal2vec.ray_init import job_environment


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="a saved model directory or a preset (tiny, minilm-small, ...)")
    p.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), native (bf16 where the "
                   "hardware has it), fp32, bf16, fp16")
    p.add_argument("--batch-size", type=int, default=32)


def _load(model: str, args: argparse.Namespace):
    from causal2vec.model.causal2vec import load_model

    return load_model(model, device=args.device, dtype=args.dtype)


def _cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from causal2vec import readers

    texts = list(args.texts)
    if args.input:
        table = readers.read_table(args.input, readers.format_of(args.input) or "text", what="--input")
        if "text" not in table.column_names:
            raise Causal2VecError(f"--input {args.input!r}: no `text` column "
                                  f"(columns: {', '.join(table.column_names)})")
        texts += table["text"].to_pylist()
    if not texts:
        raise Causal2VecError("nothing to embed: pass texts as arguments or --input FILE (one text per line)")
    model = _load(args.model, args)
    vectors = model.encode(texts, instruction=args.instruction, batch_size=args.batch_size,
                           show_progress=len(texts) > 10 * args.batch_size)
    if args.output and args.output.endswith(".npy"):
        np.save(args.output, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.output}", file=sys.stderr)
        return
    records = [{"index": i, "text": t, "embedding": v.tolist()} for i, (t, v) in enumerate(zip(texts, vectors))]
    payload = json.dumps({"model": args.model, "dim": int(vectors.shape[1]), "data": records})
    if args.output:
        Path(args.output).write_text(payload + "\n")
        print(f"wrote {len(records)} embeddings to {args.output}", file=sys.stderr)
    else:
        print(payload)


def _cmd_eval(args: argparse.Namespace) -> None:
    from causal2vec.eval.retrieval import RetrievalTask, evaluate

    local = None
    if args.pairs:
        local = RetrievalTask.from_pairs(args.pairs, name=args.name, description=args.description,
                                         limit=args.limit_queries)
    elif args.corpus or args.queries:
        if not (args.corpus and args.queries):
            raise Causal2VecError("a local task needs both --corpus and --queries (and optionally --qrels)")
        local = RetrievalTask.from_files(args.corpus, args.queries, args.qrels, name=args.name,
                                         description=args.description, limit_queries=args.limit_queries)
    if local is None and not args.tasks:
        raise Causal2VecError("nothing to evaluate: pass --corpus/--queries[/--qrels], --pairs, or --tasks NAME ...")
    model = _load(args.model, args)
    results: dict[str, dict] = {}
    if local is not None and args.engine == "local":
        results[local.name] = evaluate(model, local, batch_size=args.batch_size, show_progress=True,
                                       cache=args.cache)
    if args.tasks or (local is not None and args.engine == "mteb"):
        from causal2vec.eval.mteb_model import evaluate_tasks

        results |= evaluate_tasks(model, args.tasks, local if args.engine == "mteb" else None,
                                  name=f"causal2vec/{Path(args.model).name}", batch_size=args.batch_size)
    for name, scores in results.items():
        shown = "  ".join(f"{k} {scores[k]:.4f}" for k in ("ndcg_at_10", "recall_at_10", "recall_at_100",
                                                           "mrr_at_10", "main_score") if k in scores)
        print(f"{name}: {shown}")
    if args.output:
        payload = {"model": args.model, "command": " ".join(sys.argv), "results": results}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)


def _cmd_mine(args: argparse.Namespace) -> None:
    from causal2vec.train.mining import mine_file

    rows = mine_file(args.pairs, args.output, model=args.model, device=args.device, dtype=args.dtype,
                     corpus=args.corpus, text_column=args.text_column, num=args.num, skip=args.skip,
                     instruction=args.instruction, batch_size=args.batch_size, show_progress=True)
    print(f"wrote {rows} pairs with up to {args.num} hard negatives each to {args.output}", file=sys.stderr)


def _cmd_search(args: argparse.Namespace) -> None:
    from causal2vec import store

    table = store.open_table(args.table)
    name = args.model or store.table_identity(table)["model"]  # default: the model that wrote the table
    model = _load(name, args)
    for row in store.search(table, model, args.query, k=args.k, mode=args.mode, filter=args.filter,
                            instruction=args.instruction):
        print(json.dumps(row, default=str))


def _cmd_train(args: argparse.Namespace) -> None:
    from causal2vec.train.job import run_from_args

    run_from_args(args)


def _cmd_embed_corpus(args: argparse.Namespace) -> None:
    from causal2vec.embed.job import format_summary, run_from_args
    from causal2vec.job_result import print_result

    logging.getLogger("causal2vec").setLevel(logging.INFO)  # progress: chunks committed, passes, summary
    summary = run_from_args(args)
    print(format_summary(summary), file=sys.stderr)
    print_result(summary)


def _cmd_serve(args: argparse.Namespace) -> None:
    from causal2vec.serve.run import serve_from_args

    serve_from_args(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from causal2vec.tools.bench import run_bench

    return run_bench(args.name, args.args)


def build_parser() -> argparse.ArgumentParser:
    from causal2vec.embed.config import add_arguments as embed_corpus_arguments
    from causal2vec.serve.run import add_arguments as serve_arguments
    from causal2vec.train.job import add_arguments as train_arguments

    parser = argparse.ArgumentParser(prog="causal2vec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts and print JSON or write .json / .npy")
    _add_model_args(embed)
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--input", help="a file of texts: plain text (one per line), or a `text` column")
    embed.add_argument("--instruction", help="query-side instruction (decoder only), e.g. 'Given a query, ...'")
    embed.add_argument("--output", help="write here instead of stdout: *.npy (float32 array) or *.json")
    embed.set_defaults(func=_cmd_embed)

    train = sub.add_parser("train", help="train with Ray Train + DeepSpeed (what jobs/train.py runs)")
    train_arguments(train)
    train.set_defaults(func=_cmd_train)

    corpus = sub.add_parser("embed-corpus", help="embed a corpus with Ray Data into an indexed LanceDB table "
                                                 "(what jobs/embed_corpus.py runs; rerun to resume)")
    embed_corpus_arguments(corpus)
    corpus.set_defaults(func=_cmd_embed_corpus)

    search = sub.add_parser("search", help="top-k rows of a LanceDB table for a query, as JSON lines")
    search.add_argument("query", help="the query text")
    search.add_argument("--table", required=True, help="DIR::TABLE written by embed-corpus")
    search.add_argument("--model", help="a saved model directory or a preset (default: the table's model)")
    search.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    search.add_argument("--dtype", default="auto", help="auto, native, fp32, bf16, fp16")
    search.add_argument("-k", type=int, default=10, help="rows to return")
    search.add_argument("--mode", choices=SEARCH_MODES, default="vector",
                        help="vector (ANN), fts (BM25, needs --fts at embed time), hybrid (reciprocal-rank fusion)")
    search.add_argument("--filter", help="a LanceDB SQL where-clause, e.g. \"section = 'utils'\"")
    search.add_argument("--instruction", help="query-side instruction (decoder only)")
    search.set_defaults(func=_cmd_search)

    serve = sub.add_parser("serve", help="serve the OpenAI-compatible API with Ray Serve until interrupted")
    serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    ev = sub.add_parser("eval", help="retrieval quality: local parquet/jsonl tasks (offline) or MTEB tasks by name")
    _add_model_args(ev)
    ev.add_argument("--corpus", help="corpus file (id, text)")
    ev.add_argument("--queries", help="queries file (query_id, query[, doc_id])")
    ev.add_argument("--qrels", help="relevance file (query_id, doc_id[, score]); default: the queries' doc_id")
    ev.add_argument("--pairs", help="a training-pairs file (query, positive) evaluated as a retrieval task")
    ev.add_argument("--name", help="the local task's name (default: the queries file's stem)")
    ev.add_argument("--description", help="the task, as the query instruction states it (E5-style template)")
    ev.add_argument("--limit-queries", type=int, help="evaluate only the first N queries")
    ev.add_argument("--tasks", nargs="*", help="MTEB task names (their data must be reachable)")
    ev.add_argument("--engine", choices=["local", "mteb"], default="local",
                    help="score local tasks with the fast local evaluator or through mteb (same numbers)")
    ev.add_argument("--output", help="write the scores as JSON here")
    ev.add_argument("--cache", help="a folder for the local task's embeddings, written chunk by chunk: rerun the "
                                    "same command to resume an interrupted evaluation (any model, any task)")
    ev.set_defaults(func=_cmd_eval)

    mine = sub.add_parser("mine-negatives", help="add a `negatives` column of mined hard negatives to a pairs file")
    _add_model_args(mine)
    mine.add_argument("--pairs", required=True, help="pairs file (query, positive)")
    mine.add_argument("--corpus", help="where negatives come from (default: the pairs' positives)")
    mine.add_argument("--text-column", default="text", help="the corpus's text column")
    mine.add_argument("--num", type=int, default=4, help="negatives per query")
    mine.add_argument("--skip", type=int, default=3, help="nearest non-positive neighbours to leave out")
    mine.add_argument("--instruction", help="query-side instruction used when embedding the queries")
    mine.add_argument("--output", required=True, help="output parquet")
    mine.set_defaults(func=_cmd_mine)

    bench = sub.add_parser("bench", help="run a benchmark of the source checkout: causal2vec bench NAME [ARGS]; "
                                         "without NAME, list them")
    bench.add_argument("name", nargs="?", help="a script in bench/, e.g. bulk_embed")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    job_environment()
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits with USAGE_ERROR (argparse's own 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party(args.verbose)
    try:
        return args.func(args) or 0
    except Causal2VecError as exc:
        print(f"causal2vec {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


def quiet_third_party(verbose: bool) -> None:
    """transformers' load reports and shard progress bars drown a CLI's own output."""
    if verbose:
        return
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
