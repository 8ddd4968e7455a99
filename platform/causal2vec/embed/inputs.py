"""The rows every read task emits: id, text and the passthrough columns, plus each row's ordinal, source and the
reason it cannot be embedded (or none). Files are read by the one reader (readers.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from causal2vec import readers
from causal2vec.embed.config import EmbedConfig
from causal2vec.errors import Causal2VecError
from causal2vec.readers import InputFile

if TYPE_CHECKING:  # imported where used: the driver imports this module before it needs pyarrow
    import pyarrow as pa

ORD, SOURCE, REASON = "__c2v_ord", "__c2v_source", "__c2v_reason"  # internal columns, never written to the table
SNIPPET = 200  # characters of a rejected row's text kept in the rejects table


@dataclass(frozen=True)
class Layout:
    """What every read task emits: id and text (strings) + the passthrough columns cast to these types."""

    id_column: str | None
    text_column: str
    passthrough: pa.Schema


def plan_layout(files: list[InputFile], config: EmbedConfig) -> Layout:
    """Columns from the first file that has any (an empty jsonl file has none); a missing text / id column is named
    with its flag."""
    import pyarrow as pa

    first, schema = files[0], pa.schema([])
    for first in files:
        schema = readers.schema(first)
        if schema.names:
            break
    names = schema.names
    if config.text_column not in names:
        raise Causal2VecError(f"--text-column {config.text_column!r}: {first.path} has no such column "
                              f"(columns: {', '.join(names)})")
    _as_strings(pa.array([], schema.field(config.text_column).type), first, f"--text-column {config.text_column!r}",
                numbers=False)
    id_column = config.id_column
    if id_column is not None and id_column not in names:
        raise Causal2VecError(f"--id-column {id_column!r}: {first.path} has no such column "
                              f"(columns: {', '.join(names)})")
    if id_column is None and "id" in names and config.text_column != "id":
        id_column = "id"
    passthrough = pa.schema([f for f in schema if f.name not in (id_column, config.text_column)])
    for f in passthrough:
        if f.name in ("id", "text", "vector") or f.name.startswith("__c2v"):
            raise Causal2VecError(f"input column {f.name!r} clashes with the table's own columns (id, text, vector); "
                                  "rename it, or pass it as --id-column / --text-column")
    return Layout(id_column, config.text_column, passthrough)


def read_unit(unit: dict[str, int], files: list[InputFile], layout: Layout) -> pa.Table:
    """One read unit (readers.units) -> id, text, passthrough columns + ordinal, source and reject reason."""
    import numpy as np
    import pyarrow as pa

    f = files[unit["file"]]
    raw = readers.read_file(f, unit["row_group"])
    if raw.num_rows == 0:  # an empty file: no columns to check
        raw = pa.table({c: pa.array([], pa.string()) for c in (layout.text_column, layout.id_column) if c})
    n = raw.num_rows
    for role, column in (("--text-column", layout.text_column), ("--id-column", layout.id_column)):
        if column is not None and column not in raw.column_names:
            raise Causal2VecError(f"{role} {column!r}: {f.path} has no such column "
                                  f"(columns: {', '.join(raw.column_names)})")
    numbers = range(unit["first_row"] + 1, unit["first_row"] + n + 1)
    sources = [f"{f.name}:{i}" for i in numbers]
    ids = _as_strings(raw[layout.id_column], f, f"--id-column {layout.id_column!r}", numbers=True) \
        if layout.id_column else pa.array(sources)
    texts = _as_strings(raw[layout.text_column], f, f"--text-column {layout.text_column!r}", numbers=False)
    columns = {"id": ids, "text": texts}
    for field in layout.passthrough:
        if field.name not in raw.column_names:
            columns[field.name] = pa.nulls(n, field.type)
            continue
        try:
            columns[field.name] = raw[field.name].cast(field.type if not pa.types.is_null(field.type) else pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise Causal2VecError(f"{f.path}: column {field.name!r} is {raw[field.name].type}, but the first input "
                                  f"file has {field.type}; make the files' columns agree") from exc
    ord_base = unit["index"] << 32
    columns[ORD] = pa.array(np.arange(ord_base, ord_base + n, dtype=np.int64))
    columns[SOURCE] = pa.array(sources, pa.string())
    columns[REASON] = pa.array([row_problem(i, t) for i, t in zip(ids.to_pylist(), texts.to_pylist())], pa.string())
    return pa.table(columns)


def row_problem(doc_id: str | None, text: str | None) -> str | None:
    """Why a row cannot be embedded: a missing id, or what readers.text_problem says of its text."""
    return "missing id" if readers.text_problem(doc_id) else readers.text_problem(text)


def _as_strings(column, f: InputFile, flag: str, *, numbers: bool) -> pa.Array:
    """A column as strings: ids may be integers, texts must be strings (a number column embedded as "1000", "1001"
    is a wrong --text-column, not a corpus)."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_null(kind) or pa.types.is_large_string(kind) \
            or (numbers and pa.types.is_integer(kind)):
        return column.cast(pa.string())
    raise Causal2VecError(f"{flag}: {f.path} has {kind} values there, not strings")


def read_batch(batch: pa.Table, files: list[InputFile], layout: Layout) -> pa.Table:
    """A Ray Data map function over rows of read units."""
    import pyarrow as pa

    return pa.concat_tables([read_unit(u, files, layout) for u in batch.to_pylist()])


def scan_view(batch: pa.Table) -> pa.Table:
    """What the driver needs of every row to plan: id, ordinal, source, reason (+ the text of rejected rows)."""
    import pyarrow as pa

    reasons = batch[REASON].to_pylist()
    texts = [t[:SNIPPET] if r is not None and t is not None else None
             for r, t in zip(reasons, batch["text"].to_pylist())]
    return pa.table({"id": batch["id"], ORD: batch[ORD], SOURCE: batch[SOURCE], REASON: batch[REASON],
                     "text": pa.array(texts, pa.string())})


def keep_rows(batch: pa.Table, drop_ords, skip_ids) -> pa.Table:
    """Only the rows to embed: valid, the first of their id, and not in the table yet."""
    import pyarrow.compute as pc
    import ray

    drop_ords, skip_ids = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (drop_ords, skip_ids))
    keep = pc.is_null(batch[REASON])
    if len(drop_ords):
        keep = pc.and_(keep, pc.invert(pc.is_in(batch[ORD], value_set=drop_ords)))
    if len(skip_ids):
        keep = pc.and_(keep, pc.invert(pc.is_in(batch["id"], value_set=skip_ids)))
    return batch.filter(keep).drop_columns([ORD, SOURCE, REASON])
