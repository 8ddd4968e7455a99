"""The ANN index on `vector` (HNSW_SQ or IVF_PQ, chosen by the table's size) and the full-text index on `text`."""

from __future__ import annotations

import logging
import math
from typing import Any

from causal2vec.config import INDEX_TYPES
from causal2vec.errors import Causal2VecError

log = logging.getLogger(__name__)

DISTANCE = "cosine"  # equals L2 ranking on normalised vectors, and the usual metric for unnormalised embeddings


def choose_index(num_rows: int, dim: int, index: str = "auto", *, num_partitions: int | None = None,
                 num_sub_vectors: int | None = None):
    """An ANN index config from the table's size and dim (explicit arguments override).

    auto: IVF_HNSW_SQ below 100k rows (PQ needs >= 256 rows per codebook to train and its recall suffers on small
    tables; HNSW indexes tables of any size), IVF_PQ above (16x-32x smaller than the vectors, which is what keeps
    millions of rows in memory). Partitions ~ sqrt(rows) for IVF_PQ (LanceDB's rule of thumb), one HNSW graph per
    ~1M rows for HNSW_SQ; sub-vectors: dim/16 (or /8) when it divides the dim, so each code covers 8-16 floats.
    """
    from lancedb.index import HnswSq, IvfPq

    if index not in INDEX_TYPES:
        raise Causal2VecError(f"--index must be one of {', '.join(INDEX_TYPES)}, got {index!r}")
    if index == "none" or num_rows == 0:
        return None
    if index == "auto":
        index = "hnsw_sq" if num_rows < 100_000 else "ivf_pq"
    if index == "hnsw_sq":
        parts = num_partitions or max(1, math.ceil(num_rows / 1_000_000))
        return HnswSq(distance_type=DISTANCE, num_partitions=parts)
    if num_rows < 256:
        raise Causal2VecError(f"--index ivf_pq needs at least 256 rows to train (the table has {num_rows}); "
                              "use --index hnsw_sq")
    parts = num_partitions or max(1, min(int(math.sqrt(num_rows)), num_rows // 256))
    subs = num_sub_vectors or next((dim // d for d in (16, 8, 4, 2, 1) if dim % d == 0), 1)
    if dim % subs:
        raise Causal2VecError(f"--num-sub-vectors {subs} must divide the embedding dim {dim}")
    return IvfPq(distance_type=DISTANCE, num_partitions=parts, num_sub_vectors=subs)


def build_indexes(table, *, index: str = "auto", num_partitions: int | None = None,
                  num_sub_vectors: int | None = None, fts: bool = False) -> dict[str, Any]:
    """(Re)build the ANN index on `vector` and optionally an FTS index on `text`; returns what was built."""
    table.checkout_latest()
    rows = table.count_rows()
    dim = table.schema.field("vector").type.list_size
    config = choose_index(rows, dim, index, num_partitions=num_partitions, num_sub_vectors=num_sub_vectors)
    built: dict[str, Any] = {"rows": rows}
    if config is not None:
        table.create_index("vector", config=config, replace=True)
        built["vector"] = {"type": type(config).__name__, **{k: v for k, v in vars(config).items()
                                                              if k in ("num_partitions", "num_sub_vectors")}}
        log.info("built %s index on %d rows", type(config).__name__, rows)
    if fts and rows:
        from lancedb.index import FTS

        table.create_index("text", config=FTS(), replace=True)
        built["fts"] = True
        log.info("built the full-text index on text")
    return built


def refresh_indexes(table, *, new_rows: int, index: str = "auto", num_partitions: int | None = None,
                    num_sub_vectors: int | None = None, fts: bool = False) -> dict[str, Any]:
    """After a write: compact the per-commit fragments and rebuild the indexes when rows were added; otherwise
    keep the indexes there are (a rerun with nothing new is cheap) unless one that was asked for is missing."""
    table.checkout_latest()
    present = {ix.index_type for ix in table.list_indices()}
    has_vector = any(t != "FTS" for t in present)
    if not new_rows and (has_vector or index == "none") and ("FTS" in present or not fts):
        return {"rows": table.count_rows(), "kept": sorted(present)}
    if new_rows:
        table.optimize()
    return build_indexes(table, index=index, num_partitions=num_partitions, num_sub_vectors=num_sub_vectors, fts=fts)


def has_fts(table) -> bool:
    return any(ix.index_type == "FTS" and "text" in ix.columns for ix in table.list_indices())
