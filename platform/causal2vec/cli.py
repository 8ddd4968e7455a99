"""The `causal2vec` command. Each subcommand is a thin shell over library calls; errors a user can fix exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from causal2vec.errors import Causal2VecError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="a saved model directory or a preset (tiny, minilm-small, ...)")
    p.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--batch-size", type=int, default=32)


def _cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from causal2vec.model import Causal2Vec

    texts = list(args.texts)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise Causal2VecError(f"--input {args.input!r}: no such file")
        texts += [line.rstrip("\n") for line in path.read_text().splitlines()]
    if not texts:
        raise Causal2VecError("nothing to embed: pass texts as arguments or --input FILE (one text per line)")
    model = Causal2Vec.from_pretrained(args.model, device=args.device, dtype=args.dtype)
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
    from causal2vec.model import Causal2Vec

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
    model = Causal2Vec.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    results: dict[str, dict] = {}
    if local is not None and args.engine == "local":
        results[local.name] = evaluate(model, local, batch_size=args.batch_size, show_progress=True)
    if args.tasks or (local is not None and args.engine == "mteb"):
        results |= _run_mteb(model, args, local)
    for name, scores in results.items():
        shown = "  ".join(f"{k} {scores[k]:.4f}" for k in ("ndcg_at_10", "recall_at_10", "recall_at_100",
                                                           "mrr_at_10", "main_score") if k in scores)
        print(f"{name}: {shown}")
    if args.output:
        payload = {"model": args.model, "command": " ".join(sys.argv), "results": results}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)


def _run_mteb(model, args: argparse.Namespace, local) -> dict[str, dict]:
    import mteb

    from causal2vec.eval.mteb_model import Causal2VecMTEB, local_retrieval_task, run_mteb

    tasks = [local_retrieval_task(local)] if local is not None and args.engine == "mteb" else []
    if args.tasks:
        try:
            tasks += list(mteb.get_tasks(tasks=args.tasks))
        except (KeyError, ValueError) as exc:
            raise Causal2VecError(f"--tasks: {exc}") from exc
    wrapper = Causal2VecMTEB(model, name=f"causal2vec/{Path(args.model).name}", batch_size=args.batch_size)
    try:
        return run_mteb(wrapper, tasks)
    except (OSError, ConnectionError) as exc:
        raise Causal2VecError(f"mteb could not load a task's data ({exc.__class__.__name__}: {exc}); tasks from "
                              "the hub need network access or a local HF datasets cache") from exc


def _cmd_mine(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from causal2vec.eval.retrieval import read_table
    from causal2vec.model import Causal2Vec
    from causal2vec.train.mining import mine_hard_negatives

    pairs = read_table(args.pairs)
    missing = {"query", "positive"} - set(pairs.column_names)
    if missing:
        raise Causal2VecError(f"{args.pairs}: missing column(s) {', '.join(sorted(missing))}")
    queries, positives = pairs["query"].to_pylist(), pairs["positive"].to_pylist()
    bad = next((i for i, (q, p) in enumerate(zip(queries, positives))
                if not (isinstance(q, str) and q.strip() and isinstance(p, str) and p.strip())), None)
    if bad is not None:
        raise Causal2VecError(f"{args.pairs}: row {bad} has an empty or missing query/positive")
    if args.corpus:
        corpus_table = read_table(args.corpus)
        if args.text_column not in corpus_table.column_names:
            raise Causal2VecError(f"{args.corpus}: no column {args.text_column!r}")
        corpus = [t for t in corpus_table[args.text_column].to_pylist() if isinstance(t, str) and t.strip()]
    else:
        corpus = positives
    model = Causal2Vec.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    negatives = mine_hard_negatives(model, queries, positives, corpus, num=args.num, skip=args.skip,
                                    instruction=args.instruction, batch_size=args.batch_size, show_progress=True)
    table = pairs.drop_columns([c for c in ("negatives",) if c in pairs.column_names])
    pq.write_table(table.append_column("negatives", pa.array(negatives, pa.list_(pa.string()))), args.output)
    print(f"wrote {table.num_rows} pairs with up to {args.num} hard negatives each to {args.output}",
          file=sys.stderr)


def _cmd_embed_corpus(args: argparse.Namespace) -> None:
    from causal2vec.embed.pipeline import format_summary, run_from_args

    logging.getLogger("causal2vec").setLevel(logging.INFO)  # progress: chunks committed, passes, summary
    summary = run_from_args(args)
    print(format_summary(summary), file=sys.stderr)
    print("RESULT_JSON " + json.dumps(summary, default=str))


def _cmd_search(args: argparse.Namespace) -> None:
    from causal2vec.embed import lancedb_store as store
    from causal2vec.model import Causal2Vec

    table = store.open_table(args.table)
    name = args.model or store.table_identity(table)["model"]  # default: the model that wrote the table
    model = Causal2Vec.from_pretrained(name, device=args.device, dtype=args.dtype)
    store.check_model(table, model, store.model_name(name))
    rows = store.search(table, model, args.query, k=args.k, mode=args.mode, filter=args.filter,
                        instruction=args.instruction)
    for row in rows:
        print(json.dumps(row, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="causal2vec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts and print JSON or write .json / .npy")
    _add_model_args(embed)
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--input", help="a text file, one text per line")
    embed.add_argument("--instruction", help="query-side instruction (decoder only), e.g. 'Given a query, ...'")
    embed.add_argument("--output", help="write here instead of stdout: *.npy (float32 array) or *.json")
    embed.set_defaults(func=_cmd_embed)

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

    from causal2vec.embed.pipeline import add_arguments

    corpus = sub.add_parser("embed-corpus", help="embed a corpus with Ray Data into an indexed LanceDB table "
                                                 "(same flags as jobs/embed_corpus.py; rerun to resume)")
    add_arguments(corpus)
    corpus.set_defaults(func=_cmd_embed_corpus)

    search = sub.add_parser("search", help="top-k rows of a LanceDB table for a query, as JSON lines")
    search.add_argument("query", help="the query text")
    search.add_argument("--table", required=True, help="DIR::TABLE written by embed-corpus")
    search.add_argument("--model", help="a saved model directory or a preset (default: the table's model)")
    search.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    search.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16")
    search.add_argument("-k", type=int, default=10, help="rows to return")
    search.add_argument("--mode", choices=["vector", "fts", "hybrid"], default="vector",
                        help="vector (ANN), fts (BM25, needs --fts at embed time), hybrid (reciprocal-rank fusion)")
    search.add_argument("--filter", help="a LanceDB SQL where-clause, e.g. \"section = 'utils'\"")
    search.add_argument("--instruction", help="query-side instruction (decoder only)")
    search.set_defaults(func=_cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party(args.verbose)
    try:
        args.func(args)
    except Causal2VecError as exc:
        print(f"causal2vec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


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
