"""Hard-negative mining: each query's nearest non-positive documents under a model, ranks 1..skip left out.

The nearest few are skipped because they are the likeliest false negatives (near-duplicates of the positive, or
unlabelled relevant documents).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from causal2vec.errors import Causal2VecError
from causal2vec.eval.retrieval import exact_top_k
from causal2vec.model.causal2vec import load_model
from causal2vec.readers import read_table, text_problem

log = logging.getLogger(__name__)


def mine_hard_negatives(model, queries: Sequence[str], positives: Sequence[str], corpus: Sequence[str], *,
                        num: int = 4, skip: int = 3, instruction: str | None = None, batch_size: int = 64,
                        show_progress: bool = False) -> list[list[str]]:
    """For each (query, positive): `num` corpus texts ranked after the first `skip` non-positive neighbours."""
    unique = list(dict.fromkeys(corpus))  # duplicates would fill a query's negatives with one text
    doc_vecs = model.encode(unique, batch_size=batch_size, show_progress=show_progress)
    query_vecs = model.encode(list(queries), instruction=instruction, batch_size=batch_size,
                              show_progress=show_progress)
    _, index = exact_top_k(query_vecs, doc_vecs, min(len(unique), skip + num + 1))
    negatives = []
    for positive, row in zip(positives, index):
        ranked = [unique[j] for j in row if unique[j] != positive]
        negatives.append(ranked[skip:skip + num])
    short = sum(len(n) < num for n in negatives)
    if short:
        log.warning("%d queries got fewer than %d negatives (corpus of %d texts)", short, num, len(unique))
    return negatives


def mine_file(pairs: str, output: str, *, model: str, device: str | None = None, dtype: str | None = None,
              corpus: str | None = None, text_column: str = "text", num: int = 4, skip: int = 3,
              instruction: str | None = None, batch_size: int = 64, show_progress: bool = False) -> int:
    """`causal2vec mine-negatives`: a pairs file + a `negatives` column -> `output` (parquet); returns the rows.
    Negatives come from `corpus` (its `text_column`; rows with unusable text are skipped), else from the positives.
    The files are checked before the model is loaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_table(pairs, what="--pairs")
    missing = {"query", "positive"} - set(table.column_names)
    if missing:
        raise Causal2VecError(f"{pairs}: missing column(s) {', '.join(sorted(missing))}")
    queries, positives = table["query"].to_pylist(), table["positive"].to_pylist()
    bad = next((i for i, row in enumerate(zip(queries, positives)) if any(map(text_problem, row))), None)
    if bad is not None:
        raise Causal2VecError(f"{pairs}: row {bad} has an empty or missing query/positive")
    texts = positives
    if corpus:
        corpus_table = read_table(corpus, what="--corpus")
        if text_column not in corpus_table.column_names:
            raise Causal2VecError(f"{corpus}: no column {text_column!r}")
        texts = [t for t in corpus_table[text_column].to_pylist() if text_problem(t) is None]
    negatives = mine_hard_negatives(load_model(model, device=device, dtype=dtype), queries, positives, texts, num=num,
                                    skip=skip, instruction=instruction, batch_size=batch_size,
                                    show_progress=show_progress)
    table = table.drop_columns([c for c in ("negatives",) if c in table.column_names])
    pq.write_table(table.append_column("negatives", pa.array(negatives, pa.list_(pa.string()))), output)
    return table.num_rows
