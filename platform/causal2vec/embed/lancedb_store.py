"""LanceDB tables of Causal2Vec embeddings: schema, the model's identity on the table, resume, indexes, search.

A table is named `DIR::TABLE` (DIR is a local directory or any URI LanceDB connects to). Its columns are `id`
(string), `text`, `vector` (fixed_size_list<float32>[dim]) and the corpus's passthrough columns. The schema
metadata key `causal2vec` holds the model's identity (`model_identity`): name, config fingerprint, dim, pooling,
normalisation, and a probe embedding. Search refuses a model whose identity does not match, because vectors from
another model live in another space and would return confident nonsense.

Why a probe embedding: the config fingerprint leaves out the weights (a fine-tuned model shares its base's config),
and hashing gigabytes of weights in every process that searches is slow. Embedding one fixed text is cheap and
compares what matters, the embedding function; a cosine tolerance lets an fp32-written table be searched by a bf16
replica of the same model.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causal2vec.errors import Causal2VecError

if TYPE_CHECKING:  # imported where used, so importing this module stays cheap
    import pyarrow as pa

log = logging.getLogger(__name__)

META_KEY = "causal2vec"
PROBE_TEXT = "Causal2Vec identity probe: a fixed sentence whose embedding identifies the model's weights."
PROBE_MIN_COSINE = 0.99  # same weights in fp32 vs bf16 agree far above this; different weights fall far below
REJECTS_SUFFIX = "_rejects"
DISTANCE = "cosine"  # equals L2 ranking on normalised vectors, and the usual metric for unnormalised embeddings
MODES = ("vector", "fts", "hybrid")


# -- naming and opening ------------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str]:
    """`DIR::TABLE` -> (DIR, TABLE). The last `::` splits, so URIs with colons work."""
    uri, sep, name = str(spec).rpartition("::")
    if not sep or not uri or not name:
        raise Causal2VecError(f"table {spec!r}: expected DIR::TABLE, e.g. ./lancedb::corpus")
    return uri, name


def connect(uri: str):
    import lancedb

    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    return lancedb.connect(uri)


def open_table(spec: str):
    """Open an existing table `DIR::TABLE` (a Causal2VecError names what is missing)."""
    uri, name = parse_spec(spec)
    if "://" not in uri and not Path(uri).expanduser().is_dir():
        raise Causal2VecError(f"table {spec!r}: no LanceDB directory {uri!r}")
    db = connect(uri)
    if name not in table_names(db):
        raise Causal2VecError(f"table {spec!r}: no table {name!r} in {uri} (tables: "
                              f"{', '.join(table_names(db)) or 'none'}); run `causal2vec embed-corpus` first")
    return db.open_table(name)


def table_names(db) -> list[str]:
    return list(db.list_tables().tables)


# -- the model's identity ----------------------------------------------------------------------------------------
def model_name(path_or_preset: str | Path) -> str:
    """How a model is named in table metadata: a preset's name, or a saved directory's absolute path."""
    path = Path(str(path_or_preset)).expanduser()
    return str(path.resolve()) if path.exists() else str(path_or_preset)


_IDENTITIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_identity(model, name: str | None = None) -> dict[str, Any]:
    """What a table records about the model that wrote it (JSON-able). `name`: the preset or directory it was
    loaded from (models do not know their own path). Computed once per model object, so searching costs no extra
    forward pass per query (a model trained in place after that keeps its first identity)."""
    if model not in _IDENTITIES:
        _IDENTITIES[model] = _identity_of(model)
    identity = dict(_IDENTITIES[model])
    if name:
        identity["model"] = name
    return identity


def _identity_of(model) -> dict[str, Any]:
    cfg = model.config
    probe = model.encode([PROBE_TEXT])[0]
    return {
        "model": cfg.decoder_source or cfg.decoder,
        "fingerprint": cfg.fingerprint(),
        "dim": int(model.embedding_dim),
        "pooling": cfg.pooling,
        "normalize": bool(cfg.normalize),
        "encoder": cfg.encoder_source or cfg.encoder,
        "decoder": cfg.decoder_source or cfg.decoder,
        "dtype": str(model.dtype).removeprefix("torch."),
        "probe": [round(float(x), 6) for x in probe],
    }


def table_identity(table) -> dict[str, Any]:
    """The identity stored on a table by `embed-corpus`."""
    meta = table.schema.metadata or {}
    raw = meta.get(META_KEY.encode())
    if raw is None:
        raise Causal2VecError(f"table {table.name!r} has no causal2vec model metadata: it was not written by "
                              "`causal2vec embed-corpus`, so no model can be checked against it")
    return json.loads(raw)


def identity_mismatch(stored: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """Why `candidate` cannot search vectors made by `stored`, or None when they match."""
    import numpy as np

    if stored["dim"] != candidate["dim"]:
        return f"embedding dim {candidate['dim']} != the table's {stored['dim']}"
    if stored["fingerprint"] != candidate["fingerprint"]:
        diffs = [f"{k} {candidate.get(k)!r} vs {stored.get(k)!r}" for k in ("pooling", "normalize")
                 if stored.get(k) != candidate.get(k)]
        return "config fingerprint differs" + (f" ({', '.join(diffs)})" if diffs else "")
    a, b = np.asarray(stored["probe"], np.float64), np.asarray(candidate["probe"], np.float64)
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    if cosine < PROBE_MIN_COSINE:
        return f"same config but different weights (probe embedding cosine {cosine:.3f} < {PROBE_MIN_COSINE})"
    return None


def check_model(table, model, name: str | None = None) -> dict[str, Any]:
    """Refuse a model that did not write this table. `model`: a Causal2Vec model or a `model_identity` dict (what
    a process that holds no model, e.g. a Serve ingress, gets from a replica). Returns the table's identity."""
    stored = table_identity(table)
    candidate = model if isinstance(model, dict) else model_identity(model, name)
    why = identity_mismatch(stored, candidate)
    if why:
        raise Causal2VecError(f"model {candidate['model']!r} does not match table {table.name!r}, which was embedded "
                              f"with model {stored['model']!r}: {why}. Search with the table's model, or re-embed "
                              "the corpus with this one")
    return stored


# -- search ------------------------------------------------------------------------------------------------------
def search(table, model, query: str, k: int = 10, mode: str = "vector", filter: str | None = None, *,
           instruction: str | None = None, query_vector=None) -> list[dict]:
    """Top-k rows for `query`, best first, as dicts without the vector.

    mode: "vector" (ANN on `vector`; score column `_distance`), "fts" (BM25 on `text`; `_score`) or "hybrid"
    (reciprocal-rank fusion of both; `_relevance_score`). filter: a LanceDB SQL where-clause on any column.
    `table`: a LanceDB table or a `DIR::TABLE` spec. `model`: a Causal2Vec model, or its `model_identity` dict
    together with `query_vector` when the query was embedded elsewhere (e.g. by Serve deployments).
    """
    import numpy as np

    if isinstance(table, str):
        table = open_table(table)
    if mode not in MODES:
        raise Causal2VecError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(query, str) or not query.strip():
        raise Causal2VecError("the search query is empty; pass a non-empty string")
    if not isinstance(k, int) or k < 1:
        raise Causal2VecError(f"k must be a positive integer, got {k!r}")
    identity = check_model(table, model)
    if mode != "vector" and not _has_fts(table):
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


def _has_fts(table) -> bool:
    return any(ix.index_type == "FTS" and "text" in ix.columns for ix in table.list_indices())


# -- writing: schema, create / resume, rejects -------------------------------------------------------------------
def table_schema(identity: dict[str, Any], passthrough: pa.Schema | None = None) -> pa.Schema:
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()),
              pa.field("vector", pa.list_(pa.float32(), identity["dim"]))]
    for f in passthrough or []:
        fields.append(pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type))
    return pa.schema(fields, metadata={META_KEY: json.dumps(identity)})


def create_or_resume(spec: str, schema: pa.Schema, *, overwrite: bool = False):
    """The output table: created empty with `schema` (metadata included), or reopened to resume when it exists and
    was written by the same model with the same columns."""
    uri, name = parse_spec(spec)
    db = connect(uri)
    if name in table_names(db) and not overwrite:
        table = db.open_table(name)
        stored = table_identity(table)
        why = identity_mismatch(stored, json.loads(schema.metadata[META_KEY.encode()]))
        if why:
            raise Causal2VecError(f"table {spec!r} already holds vectors of model {stored['model']!r} ({why}); pass "
                                  "--overwrite to replace it, or choose another --table")
        if table.schema.remove_metadata() != schema.remove_metadata():
            raise Causal2VecError(f"table {spec!r} exists with columns {table.schema.names}, but this corpus gives "
                                  f"{schema.names}; pass --overwrite, or choose another --table")
        return table
    return db.create_table(name, schema=schema, mode="overwrite")


def existing_ids(table) -> pa.Array:
    """Every id already committed (resume skips them)."""
    import pyarrow as pa

    table.checkout_latest()
    ids = table.search().select(["id"]).limit(None).to_arrow().column("id")
    return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids


def write_rejects(spec: str, rejects: pa.Table):
    """Replace `<table>_rejects` with this run's rejects (every run re-validates the whole input)."""
    uri, name = parse_spec(spec)
    return connect(uri).create_table(name + REJECTS_SUFFIX, data=rejects, mode="overwrite")


# -- indexes -----------------------------------------------------------------------------------------------------
INDEX_TYPES = ("auto", "ivf_pq", "hnsw_sq", "none")


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
