"""LanceDB tables of Causal2Vec embeddings, shared by the bulk job (embed/) and the server (serve/).

    tables.py    naming (DIR::TABLE), opening, the schema, create / resume, ids already committed, appends, rejects
    identity.py  the model's identity stored on a table; refusing a model that did not write it
    indexes.py   the ANN index (HNSW_SQ or IVF_PQ, chosen by size) and the full-text index
    search.py    vector / fts / hybrid search
    sink.py      the Ray Datasink that commits in bounded chunks (imports ray.data: import it where it is used)

The names most callers need are re-exported here.
"""

from causal2vec.store.identity import check_model, model_identity, table_identity
from causal2vec.store.indexes import build_indexes
from causal2vec.store.search import search
from causal2vec.store.tables import REJECTS_SUFFIX, connect, open_table, parse_spec, table_schema

__all__ = ["REJECTS_SUFFIX", "build_indexes", "check_model", "connect", "model_identity", "open_table", "parse_spec",
           "search", "table_identity", "table_schema"]
