"""LanceDB tables: naming, opening, the schema, create or resume, the ids already there, appends and rejects.

A table is named `DIR::TABLE` (DIR is a local directory or any URI LanceDB connects to). Its columns are `id`
(string), `text`, `vector` (fixed_size_list<float32>[dim]) and the corpus's passthrough columns; the schema metadata
holds the identity of the model that wrote it (identity.py).

Every write to a table happens in this module: creating it (`create_or_resume`), appending complete rows (`append`,
one atomic Lance commit per call, what the bulk job's sink calls per chunk) and replacing its rejects table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causal2vec.config import absolute
from causal2vec.errors import Causal2VecError
from causal2vec.store.identity import META_KEY, identity_mismatch, table_identity

if TYPE_CHECKING:  # imported where used, so importing this module stays cheap
    import pyarrow as pa

REJECTS_SUFFIX = "_rejects"


def parse_spec(spec: str) -> tuple[str, str]:
    """`DIR::TABLE` -> (DIR, TABLE). The last `::` splits, so URIs with colons work."""
    uri, sep, name = str(spec).rpartition("::")
    if not sep or not uri or not name:
        raise Causal2VecError(f"table {spec!r}: expected DIR::TABLE, e.g. ./lancedb::corpus")
    return uri, name


def connect(uri: str):
    import lancedb

    return lancedb.connect(absolute(uri))


def check_writable(spec: str) -> None:
    """Fail fast, before Ray or a model is started, when a local table's directory cannot be written (object stores
    are checked by the first write)."""
    import tempfile

    uri, _ = parse_spec(spec)
    if "://" in uri:
        return
    try:
        Path(absolute(uri)).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=absolute(uri), prefix=".c2v-write-check-"):
            pass
    except OSError as exc:
        raise Causal2VecError(f"table {spec!r}: cannot write to {absolute(uri)} ({exc.strerror or exc})") from exc


def table_names(db) -> list[str]:
    return list(db.list_tables().tables)


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
    try:
        return _create_or_resume(spec, schema, overwrite)
    except OSError as exc:  # a read-only or full directory: name the table, not Lance's internals
        raise Causal2VecError(f"table {spec!r}: cannot write there ({exc})") from exc


def _create_or_resume(spec: str, schema: pa.Schema, overwrite: bool):
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


def append(table, rows: pa.Table, schema: pa.Schema) -> None:
    """Add complete rows (id, text, vector together) in one atomic Lance commit: an interruption loses whole
    commits, never half a row."""
    table.add(rows.select(schema.names).cast(schema.remove_metadata()))


def write_rejects(spec: str, rejects: pa.Table):
    """Replace `<table>_rejects` with this run's rejects (every run re-validates the whole input)."""
    uri, name = parse_spec(spec)
    return connect(uri).create_table(name + REJECTS_SUFFIX, data=rejects, mode="overwrite")
