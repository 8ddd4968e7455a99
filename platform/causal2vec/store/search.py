"""Top-k search over a table: vector (ANN), fts (BM25) or hybrid (reciprocal-rank fusion of both)."""

from __future__ import annotations

from causal2vec.config import SEARCH_MODES
from causal2vec.errors import Causal2VecError
from causal2vec.readers import text_problem
from causal2vec.store.identity import check_model
from causal2vec.store.indexes import DISTANCE, has_fts
from causal2vec.store.tables import open_table


def search(table, model, query: str, k: int = 10, mode: str = "vector", filter: str | None = None, *,
           instruction: str | None = None, query_vector=None) -> list[dict]:
    """Top-k rows for `query`, best first, as dicts without the vector.

    mode: "vector" (ANN on `vector`; score column `_distance`), "fts" (BM25 on `text`; `_score`) or "hybrid"
    (reciprocal-rank fusion of both; `_relevance_score`). filter: a LanceDB SQL where-clause on any column.
    `table`: a LanceDB table or a `DIR::TABLE` spec. `model`: a Causal2Vec model, or its identity dict together
    with `query_vector` when the query was embedded elsewhere (e.g. by Serve deployments).
    """
    import numpy as np

    if isinstance(table, str):
        table = open_table(table)
    if mode not in SEARCH_MODES:
        raise Causal2VecError(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    if problem := text_problem(query):
        raise Causal2VecError(f"the search query is {problem}; pass a non-empty string")
    if not isinstance(k, int) or k < 1:
        raise Causal2VecError(f"k must be a positive integer, got {k!r}")
    identity = check_model(table, model)
    if mode != "vector" and not has_fts(table):
        raise Causal2VecError(f"mode {mode!r} needs a full-text index on table {table.name!r}; rebuild it with "
                              "`causal2vec embed-corpus ... --fts`")
    if mode != "fts" and query_vector is None:
        if isinstance(model, dict):
            raise Causal2VecError("search with a model identity dict needs query_vector (the embedded query)")
        query_vector = model.encode([query], instruction=instruction)[0]
    if query_vector is not None:
        query_vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if query_vector.shape[0] != identity["dim"]:
            raise Causal2VecError(f"query_vector has {query_vector.shape[0]} dims; the table has {identity['dim']}")
    # Single-mode queries name their score column in the projection, or lance warns per query. A hybrid query hands
    # one projection to both its legs, which need different score columns, so it selects nothing (the vector is
    # dropped below).
    columns = [f.name for f in table.schema if f.name != "vector"]
    if mode == "vector":
        q = (table.search(query_vector, vector_column_name="vector").distance_type(DISTANCE)
             .select(columns + ["_distance"]))
    elif mode == "fts":
        q = table.search(query, query_type="fts").select(columns + ["_score"])
    else:
        from lancedb.rerankers import RRFReranker

        q = (table.search(query_type="hybrid", vector_column_name="vector").vector(query_vector).text(query)
             .distance_type(DISTANCE).rerank(RRFReranker()))
    if filter:
        q = q.where(filter, prefilter=True) if mode == "vector" else q.where(filter)
    try:
        rows = q.limit(k).to_list()
    except (ValueError, RuntimeError, OSError) as exc:
        if filter:  # a bad where-clause is the usual cause; say which flag to fix
            raise Causal2VecError(f"search failed for filter {filter!r}: {str(exc).splitlines()[0]}") from exc
        raise
    for row in rows:
        row.pop("vector", None)
    return rows
