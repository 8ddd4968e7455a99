"""Bulk embedding: a corpus (parquet / jsonl / text) -> a Ray Data pipeline on every worker -> an indexed LanceDB table.

    read units -> validate -> [scan pass on the driver: rejects, duplicates, ids already in the table]
    read units -> keep the rows to embed -> tokenize (CPU actors) -> encoder stage (texts -> CTX vectors)
               -> decoder stage (texts + CTX -> vectors) -> LanceSink (table.add per chunk) -> ANN (+ FTS) index

The encoder and decoder stages are separate actor pools so each gets its own resources (a fraction of a GPU for the
small encoder, whole GPUs for the LLM); `stages="fused"` runs both in one actor for small models. Each actor call
sorts its rows by token length and runs sub-batches (less padding), then restores the row order. The stages call
the model's own `context_vectors` / `embed_with_context`, so vectors equal `model.encode` of the same texts.

Commit and resume. Ray's `write_lance` commits once at the end, so a killed job would keep nothing. Here a Datasink
commits with `table.add()` every `commit_rows` rows, from the workers that hold the vectors (the alternative,
`iter_batches` on the driver, would pull every vector through one process: a bottleneck on a cluster). Each add is
one atomic Lance commit of complete rows (id, text, vector together): an interruption loses at most the chunks in
flight, never half a row. Write tasks run with `max_retries=0`: a retried task would re-add chunks it had already
committed; a failed write fails the job, and the rerun resumes. Every run reads the ids already in the table first
and embeds only the others, so re-running the same command after an interruption completes the table with each valid
id exactly once. (Ray stops a job's workers when its driver dies; rerun after that, not while a killed job's write
tasks could still be committing.)

Ids. With an id column (`--id-column`, default `id` when the input has one) ids are its values; without one they are
`<file>:<n>`, the file's path relative to the inputs' common directory and the 1-based row / line number, so a rerun
with the same inputs generates the same ids. Rows with a null/empty/whitespace-only text or a missing id are
rejected; when several valid rows share an id the first (in input order) is kept and the others are rejected. The
rejects go to `<table>_rejects` (id, source, reason, text), rewritten on every run.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from causal2vec.embed import lancedb_store as store
from causal2vec.errors import Causal2VecError
from causal2vec.yaml_config import read_config

if TYPE_CHECKING:  # imported where used: the `causal2vec` CLI builds this module's parser and must start fast
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

ORD, SOURCE, REASON = "__c2v_ord", "__c2v_source", "__c2v_reason"  # internal columns, never written to the table
ENC_IDS, DEC_IDS, CTX, TRUNCATED, TOKENS = "__c2v_enc", "__c2v_dec", "__c2v_ctx", "__c2v_truncated", "__c2v_tokens"
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".txt": "text", ".text": "text"}
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
SNIPPET = 200


# -- config --------------------------------------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSection(_Section):
    """Resources of one actor pool. concurrency: a fixed size or `min-max` (the pool autoscales between them)."""

    concurrency: str = "1"
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @field_validator("concurrency", mode="before")
    @classmethod
    def _sizes(cls, value):
        value = str(value)
        low, _, high = value.partition("-")
        if not (low.isdigit() and (not high or high.isdigit())) or int(low) < 1 or (high and int(high) < int(low)):
            raise ValueError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {value!r}")
        return value

    def strategy(self):
        from ray.data import ActorPoolStrategy

        low, _, high = self.concurrency.partition("-")
        return ActorPoolStrategy(min_size=int(low), max_size=int(high or low))


class EmbedConfig(_Section):
    model: str = "tiny"
    input: list[str] = Field(min_length=1)
    table: str
    format: Literal["auto", "parquet", "jsonl", "text"] = "auto"
    id_column: str | None = None  # None: `id` when the input has one, else generated `<file>:<n>`
    text_column: str = "text"
    instruction: str | None = None  # decoder-side instruction for every document (usually none for a corpus)
    device: str = "auto"
    dtype: str = "auto"
    stages: Literal["split", "fused"] = "split"
    batch_size: int = Field(256, ge=1)  # rows per actor call (and per Ray Data block)
    sub_batch_size: int = Field(32, ge=1)  # rows per forward pass, after length-bucketing
    bucket: bool = True  # sort each actor batch by token length before cutting sub-batches
    tokenize: StageSection = Field(default_factory=lambda: StageSection(concurrency="1-2"))
    encoder: StageSection = Field(default_factory=StageSection)
    decoder: StageSection = Field(default_factory=StageSection)  # also the fused stage's resources
    commit_rows: int = Field(2048, ge=1)  # rows per LanceDB commit
    index: Literal["auto", "ivf_pq", "hnsw_sq", "none"] = "auto"
    num_partitions: int | None = Field(None, ge=1)
    num_sub_vectors: int | None = Field(None, ge=1)
    fts: bool = False
    overwrite: bool = False

    @field_validator("table")
    @classmethod
    def _spec(cls, value: str) -> str:
        store.parse_spec(value)
        return value


_FLAGS = {"input": "--input", "table": "--table", "model": "--model", "id_column": "--id-column",
          "text_column": "--text-column", "batch_size": "--batch-size", "sub_batch_size": "--sub-batch-size",
          "commit_rows": "--commit-rows", "num_partitions": "--num-partitions", "num_sub_vectors": "--num-sub-vectors"}


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> EmbedConfig:
    """YAML file (optional) <- `--set a.b=value` <- explicit flags; local paths made absolute (workers run
    elsewhere)."""
    data = read_config(path, sets)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, leaf = key.partition(".")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    try:
        config = EmbedConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_flag(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise Causal2VecError(f"invalid embed-corpus settings: {problems}") from exc
    config.input = [p if "://" in p else str(Path(p).expanduser().absolute()) for p in config.input]
    uri, name = store.parse_spec(config.table)
    if "://" not in uri:
        config.table = f"{Path(uri).expanduser().absolute()}::{name}"
    if Path(config.model).expanduser().exists():
        config.model = str(Path(config.model).expanduser().resolve())
    return config


def _flag(loc) -> str:
    key = ".".join(str(p) for p in loc if not isinstance(p, int))
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `jobs/embed_corpus.py` and `causal2vec embed-corpus` (one parser for both)."""
    parser.add_argument("--config", help="a YAML file of these settings (flags override it)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set decoder.num_gpus=1")
    parser.add_argument("--model", help="a saved model directory or a preset (default tiny)")
    parser.add_argument("--input", nargs="+", help="files, directories or globs (local or pyarrow filesystem URIs)")
    parser.add_argument("--table", help="output table DIR::TABLE (rejects go to DIR::TABLE_rejects)")
    parser.add_argument("--format", choices=["auto", "parquet", "jsonl", "text"], help="default: from the suffix")
    parser.add_argument("--id-column", help="the id column (default: `id` if present, else <file>:<row>)")
    parser.add_argument("--text-column", help="the text column (default text)")
    parser.add_argument("--instruction", help="decoder-side instruction for every document (default none)")
    parser.add_argument("--device", help="auto (cuda if the actor has a GPU, else cpu), cpu, cuda")
    parser.add_argument("--dtype", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    parser.add_argument("--stages", choices=["split", "fused"], help="separate encoder/decoder actors (default) "
                                                                     "or one fused actor (small models)")
    parser.add_argument("--batch-size", type=int, help="rows per actor call (default 256)")
    parser.add_argument("--sub-batch-size", type=int, help="rows per forward pass after length sorting (default 32)")
    parser.add_argument("--no-bucket", dest="bucket", action="store_const", const=False,
                        help="do not sort by length inside a batch (for benchmarks)")
    for stage in ("tokenize", "encoder", "decoder"):
        parser.add_argument(f"--{stage}-concurrency", metavar="N|MIN-MAX", help=f"{stage} actor pool size")
        parser.add_argument(f"--{stage}-cpus", type=float, help=f"CPUs per {stage} actor")
        if stage != "tokenize":
            parser.add_argument(f"--{stage}-gpus", type=float, help=f"GPUs per {stage} actor (fractions allowed)")
    parser.add_argument("--commit-rows", type=int, help="rows per LanceDB commit (default 2048)")
    parser.add_argument("--index", choices=list(store.INDEX_TYPES), help="ANN index (default auto: HNSW_SQ "
                                                                         "below 100k rows, IVF_PQ above)")
    parser.add_argument("--num-partitions", type=int, help="override the index's IVF partitions")
    parser.add_argument("--num-sub-vectors", type=int, help="override IVF_PQ sub-vectors")
    parser.add_argument("--fts", action="store_const", const=True, help="also build a full-text index on text")
    parser.add_argument("--overwrite", action="store_const", const=True,
                        help="replace the table instead of resuming it")


def config_from_args(args: argparse.Namespace) -> EmbedConfig:
    flags = {k: getattr(args, k) for k in ("model", "input", "table", "format", "id_column", "text_column",
                                           "instruction", "device", "dtype", "stages", "batch_size",
                                           "sub_batch_size", "bucket", "commit_rows", "index", "num_partitions",
                                           "num_sub_vectors", "fts", "overwrite")}
    for stage in ("tokenize", "encoder", "decoder"):
        flags[f"{stage}.concurrency"] = getattr(args, f"{stage}_concurrency")
        flags[f"{stage}.num_cpus"] = getattr(args, f"{stage}_cpus")
        flags[f"{stage}.num_gpus"] = getattr(args, f"{stage}_gpus", None)
    return load_config(args.config, flags, args.sets)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job / CLI entry: parse, join or start Ray (`ensure_ray`), run."""
    from causal2vec.ray_init import ensure_ray

    config = config_from_args(args)
    ensure_ray()
    return embed_corpus(config)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"table {summary['table']}: {summary['table_rows']} rows",
             f"  written {summary['rows_written']}, skipped (already present) {summary['skipped_existing']}, "
             f"rejected {summary['rejected']} {summary['rejected_by_reason'] or ''}, "
             f"truncated {summary['truncated']}",
             f"  {summary['docs_per_s']:.1f} docs/s, {summary['tokens_per_s']:.0f} tokens/s "
             f"({summary['embed_seconds']:.1f} s embedding, {summary['seconds']:.1f} s in all)",
             f"  index {summary['index']}"]
    if summary["rejected"]:
        lines.append(f"  rejects in {summary['rejects_table']}")
    return "\n".join(lines)


# -- inputs --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputFile:
    fs: Any  # a pyarrow FileSystem (picklable, travels to the read tasks)
    path: str
    fmt: str
    name: str  # relative to the inputs' common directory: the prefix of generated ids


def _filesystem(spec: str):
    import pyarrow as pa
    from pyarrow import fs as pafs

    if "://" in spec:
        try:
            return pafs.FileSystem.from_uri(spec)
        except (pa.ArrowInvalid, OSError) as exc:
            raise Causal2VecError(f"--input {spec!r}: {exc}") from exc
    return pafs.LocalFileSystem(), str(Path(spec).expanduser().absolute())


def expand_inputs(specs: list[str], fmt: str = "auto") -> list[InputFile]:
    """Files, directories (recursive) and globs -> a sorted, de-duplicated file list with formats."""
    from pyarrow import fs as pafs

    found: list[tuple[Any, str]] = []
    for spec in specs:
        fs, path = _filesystem(spec)
        if any(ch in path for ch in "*?["):
            base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rpartition("/")[0] or "/"
            depth = path.count("/")
            matches = [f.path for f in _list(fs, base, spec)
                       if f.type == pafs.FileType.File and fnmatch.fnmatchcase(f.path, path)
                       and ("**" in path or f.path.count("/") == depth)]
            if not matches:
                raise Causal2VecError(f"--input {spec!r}: the pattern matches no file")
            found += [(fs, m) for m in sorted(matches)]
            continue
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise Causal2VecError(f"--input {spec!r}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            files = sorted(f.path for f in _list(fs, path, spec)
                           if f.type == pafs.FileType.File and (fmt != "auto" or _format(f.path)))
            if not files:
                raise Causal2VecError(f"--input {spec!r}: the directory holds no .parquet, .jsonl or .txt file")
            found += [(fs, f) for f in files]
        else:
            found.append((fs, path))
    unique = list({(fs.type_name, path): (fs, path) for fs, path in found}.values())
    root = posixpath.commonpath([posixpath.dirname(p) for _, p in unique]) if unique else ""
    out = []
    for fs, path in unique:
        kind = fmt if fmt != "auto" else _format(path)
        if kind is None:
            raise Causal2VecError(f"--input {path!r}: unknown file type; use .parquet, .jsonl/.json or .txt files, "
                                  "or pass --format")
        out.append(InputFile(fs, path, kind, posixpath.relpath(path, root) if root else path))
    return out


def _list(fs, base: str, spec: str):
    from pyarrow import fs as pafs

    try:
        return fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError) as exc:
        raise Causal2VecError(f"--input {spec!r}: cannot list {base!r}: {exc}") from exc


def _format(path: str) -> str | None:
    stem = path
    for ext in COMPRESSED:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return FORMATS.get(posixpath.splitext(stem)[1].lower())


@dataclass(frozen=True)
class Layout:
    """What every read task emits: id and text (strings) + the passthrough columns cast to these types."""

    id_column: str | None
    text_column: str
    passthrough: pa.Schema


def plan_layout(files: list[InputFile], config: EmbedConfig) -> Layout:
    """Columns from the first file's schema; a missing text/id column is named with its flag."""
    import pyarrow as pa

    first, schema = files[0], pa.schema([])
    for first in files:  # the first file that has columns (an empty jsonl file has none)
        if first.fmt == "text":
            schema = pa.schema([pa.field("text", pa.string())])
        else:
            schema = _parquet(first).schema_arrow if first.fmt == "parquet" else _read_file(first).schema
        if schema.names:
            break
    names = schema.names
    if config.text_column not in names:
        raise Causal2VecError(f"--text-column {config.text_column!r}: {first.path} has no such column "
                              f"(columns: {', '.join(names)})")
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


def plan_units(files: list[InputFile]) -> list[dict[str, int]]:
    """Read units: one per parquet row group (parallel reads of one big file), one per jsonl / text file."""
    units = []
    for i, f in enumerate(files):
        if f.fmt == "parquet":
            meta = _parquet(f).metadata
            first = 0
            for g in range(meta.num_row_groups):
                units.append({"file": i, "row_group": g, "first_row": first})
                first += meta.row_group(g).num_rows
        else:
            units.append({"file": i, "row_group": -1, "first_row": 0})
    return units


def _parquet(f: InputFile):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f.fs.open_input_file(f.path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise Causal2VecError(f"--input {f.path}: not a readable parquet file ({exc})") from exc


def _read_file(f: InputFile, row_group: int = -1) -> pa.Table:
    import pyarrow as pa
    import pyarrow.json as pj

    if f.fmt == "parquet":
        parquet = _parquet(f)
        return parquet.read_row_group(row_group) if row_group >= 0 else parquet.read()
    compression = "detect" if f.path.endswith(COMPRESSED) else None
    with f.fs.open_input_stream(f.path, compression=compression) as stream:
        data = stream.read()
    if not data.strip():
        return pa.table({})
    if f.fmt == "text":
        lines = data.decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line does not start another document
        return pa.table({"text": pa.array([line.removesuffix("\r") for line in lines], pa.string())})
    try:
        return pj.read_json(pa.BufferReader(data))
    except pa.ArrowInvalid as exc:
        raise Causal2VecError(f"--input {f.path}: not JSON lines (one object per line): {exc}") from exc


def read_unit(unit: dict[str, int], files: list[InputFile], layout: Layout) -> pa.Table:
    """One read unit -> id, text, passthrough columns + ordinal, source and reject reason."""
    import numpy as np
    import pyarrow as pa

    f = files[unit["file"]]
    raw = _read_file(f, unit["row_group"])
    if raw.num_rows == 0:  # an empty file: no columns to check
        raw = pa.table({c: pa.array([], pa.string()) for c in (layout.text_column, layout.id_column) if c})
    n = raw.num_rows
    for role, column in (("--text-column", layout.text_column), ("--id-column", layout.id_column)):
        if column is not None and column not in raw.column_names:
            raise Causal2VecError(f"{role} {column!r}: {f.path} has no such column "
                                  f"(columns: {', '.join(raw.column_names)})")
    numbers = range(unit["first_row"] + 1, unit["first_row"] + n + 1)
    sources = [f"{f.name}:{i}" for i in numbers]
    ids = _as_strings(raw[layout.id_column], f, "--id-column") if layout.id_column else pa.array(sources)
    texts = _as_strings(raw[layout.text_column], f, "--text-column")
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
    columns[REASON] = pa.array([_reason(i, t) for i, t in zip(ids.to_pylist(), texts.to_pylist())], pa.string())
    return pa.table(columns)


def _as_strings(column, f: InputFile, flag: str) -> pa.Array:
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(column.type) or pa.types.is_null(column.type) or pa.types.is_large_string(column.type) \
            or pa.types.is_integer(column.type):
        return column.cast(pa.string())
    raise Causal2VecError(f"{flag}: {f.path} has {column.type} values there, not strings")


def _reason(doc_id, text) -> str | None:
    """Why a row cannot be embedded (the model's own validate_texts rules), or None."""
    if doc_id is None or not doc_id.strip():
        return "missing id"
    if text is None:
        return "null text"
    if text == "":
        return "empty text"
    if not text.strip():
        return "whitespace-only text"
    return None


def _read_batch(batch: pa.Table, files: list[InputFile], layout: Layout) -> pa.Table:
    import pyarrow as pa

    units = batch.to_pylist()
    return pa.concat_tables([read_unit(u, files, layout) for u in units])


def _scan_view(batch: pa.Table) -> pa.Table:
    """What the driver needs of every row: id, ordinal, source, reason (+ the text of rejected rows)."""
    import pyarrow as pa

    reasons = batch[REASON].to_pylist()
    texts = [t[:SNIPPET] if r is not None and t is not None else None
             for r, t in zip(reasons, batch["text"].to_pylist())]
    return pa.table({"id": batch["id"], ORD: batch[ORD], SOURCE: batch[SOURCE], REASON: batch[REASON],
                     "text": pa.array(texts, pa.string())})


def _keep_rows(batch: pa.Table, drop_ords, skip_ids) -> pa.Table:
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


@dataclass
class RowPlan:
    total: int
    rejects: pa.Table  # id, source, reason, text
    duplicate_ords: pa.Array  # ordinals of the non-first rows of duplicated ids
    skipped: int  # valid rows whose id is already in the table
    to_embed: int


def plan_rows(scan: pa.Table, existing: pa.Array) -> RowPlan:
    """Rejects, duplicates (the first row of an id wins) and rows already present, from the scan pass."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = scan.filter(pc.is_valid(scan[REASON]))
    good = scan.filter(pc.is_null(scan[REASON]))
    first = good.group_by("id").aggregate([(ORD, "min"), (ORD, "count")])
    dup_ids = first.filter(pc.greater(first[f"{ORD}_count"], 1))
    losers = good.filter(pc.is_in(good["id"], value_set=dup_ids["id"].combine_chunks()))
    losers = losers.join(dup_ids.select(["id", f"{ORD}_min"]), "id")
    losers = losers.filter(pc.not_equal(losers[ORD], losers[f"{ORD}_min"]))
    winners = good.filter(pc.is_in(good[ORD], value_set=dup_ids[f"{ORD}_min"].combine_chunks()))
    winner_source = dict(zip(winners["id"].to_pylist(), winners[SOURCE].to_pylist()))
    dup_reasons = [f"duplicate id (kept the row at {winner_source[i]})" for i in losers["id"].to_pylist()]
    rejects = pa.concat_tables([
        bad.select(["id", SOURCE, REASON, "text", ORD]),
        pa.table({"id": losers["id"], SOURCE: losers[SOURCE], REASON: pa.array(dup_reasons, pa.string()),
                  "text": pa.nulls(losers.num_rows, pa.string()), ORD: losers[ORD]}),
    ]).sort_by(ORD).drop_columns([ORD]).rename_columns(["id", "source", "reason", "text"])  # input order
    unique = first.num_rows
    skipped = int(pc.sum(pc.is_in(first["id"], value_set=existing)).as_py() or 0) if len(existing) else 0
    return RowPlan(scan.num_rows, rejects, losers[ORD].combine_chunks(), skipped, unique - skipped)


# -- the model stages (Ray Data callable classes: one model per actor) --------------------------------------------
def _int_lists(values: list[list[int]]) -> pa.Array:
    import pyarrow as pa

    return pa.array(values, pa.list_(pa.int32()))


def _vectors(matrix: np.ndarray) -> pa.Array:
    """FixedSizeList<float32>: a 2-D numpy column would become Ray's tensor type, which LanceDB does not index."""
    import numpy as np
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _fixed_rows(column) -> np.ndarray:
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


class TokenizeStage:
    """Raw token ids for both tokenizers (no weights needed: CPU actors keep the GPUs busy with math)."""

    def __init__(self, model: str, use_encoder: bool):
        from causal2vec.model.io import load_builder

        self.builder = load_builder(model)
        self.use_encoder = use_encoder

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        if self.use_encoder:
            batch = batch.append_column(ENC_IDS, _int_lists(self.builder.tokenize_for_encoder(texts)))
        return batch.append_column(DEC_IDS, _int_lists(self.builder.tokenize_for_decoder(texts)))


class _ModelStage:
    """One model stage as a Ray Data actor: loads its `part` of the model once, embeds length-bucketed sub-batches."""

    part = "all"

    def __init__(self, model: str, device: str, dtype: str, sub_batch_size: int, bucket: bool,
                 instruction: str | None = None):
        from causal2vec.model.io import load_for_stage

        self.model, self.device = load_for_stage(model, device, dtype, part=self.part)
        self.size, self.bucket, self.instruction = sub_batch_size, bucket, instruction

    def _passes(self, ids: list[list[int]]) -> list[list[int]]:
        """Row indices per forward pass: `sub_batch_size` rows, sorted by length when bucketing."""
        from causal2vec.model.tokenization import length_buckets  # not at the top: torch would slow the CLI

        return length_buckets([len(x) for x in ids], self.size, self.bucket)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        with torch.no_grad():  # set per call: Ray runs actor methods on other threads than __init__
            return self._run(batch)

    def _run(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError


class EncoderStage(_ModelStage):
    """Token ids -> CTX vectors (the model's `context_vectors`), length-bucketed."""

    part = "encoder"

    def _run(self, batch: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        ids = batch[ENC_IDS].to_pylist()
        ctx = np.zeros((len(ids), self.model.hidden_size), np.float32)
        truncated = [False] * len(ids)
        for rows in self._passes(ids):
            enc = self.model.builder.encoder_batch([ids[i] for i in rows])
            ctx[rows] = self.model.context_vectors(enc.to(self.device)).float().cpu().numpy()
            for i, t in zip(rows, enc.truncated):
                truncated[i] = t
        # fp32 carries bf16/fp16 CTX exactly; the decoder stage casts back to its dtype
        return (batch.drop_columns([ENC_IDS]).append_column(CTX, _vectors(ctx))
                .append_column(TRUNCATED, pa.array(truncated)))


class DecoderStage(_ModelStage):
    """Token ids + CTX vectors -> embeddings (the model's `embed_with_context`), length-bucketed."""

    def _run(self, batch: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa
        import torch

        ids = batch[DEC_IDS].to_pylist()
        ctx = _fixed_rows(batch[CTX]) if CTX in batch.column_names else None
        out = np.zeros((len(ids), self.model.embedding_dim), np.float32)
        truncated = batch[TRUNCATED].to_pylist() if TRUNCATED in batch.column_names else [False] * len(ids)
        tokens = [0] * len(ids)
        for rows in self._passes(ids):
            dec = self.model.builder.decoder_batch([ids[i] for i in rows], self.instruction).to(self.device)
            c = torch.from_numpy(ctx[rows]).to(self.device, self.model.dtype) if ctx is not None else None
            out[rows] = self.model.embed_with_context(dec, c).float().cpu().numpy()
            for i, t, n in zip(rows, dec.truncated, dec.attention_mask.sum(1).tolist()):
                truncated[i], tokens[i] = truncated[i] or t, n
        batch = batch.drop_columns([c for c in (DEC_IDS, CTX, TRUNCATED) if c in batch.column_names])
        return (batch.append_column("vector", _vectors(out)).append_column(TRUNCATED, pa.array(truncated))
                .append_column(TOKENS, pa.array(tokens, pa.int64())))


class FusedStage(_ModelStage):
    """Tokenize + both model stages in one actor (`model.forward`, as `model.encode` runs them)."""

    def _run(self, batch: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from causal2vec.model.tokenization import Batch

        texts = batch["text"].to_pylist()
        b = self.model.builder
        dec_ids = b.tokenize_for_decoder(texts)
        enc_ids = b.tokenize_for_encoder(texts) if self.model.config.use_ctx_token else None
        out = np.zeros((len(texts), self.model.embedding_dim), np.float32)
        truncated, tokens = [False] * len(texts), [0] * len(texts)
        for rows in self._passes(dec_ids):
            enc = b.encoder_batch([enc_ids[i] for i in rows]) if enc_ids is not None else None
            model_batch = Batch(enc, b.decoder_batch([dec_ids[i] for i in rows], self.instruction))
            out[rows] = self.model(model_batch.to(self.device)).float().cpu().numpy()
            for i, t, n in zip(rows, model_batch.truncated, model_batch.decoder.attention_mask.sum(1).tolist()):
                truncated[i], tokens[i] = t, n
        return (batch.append_column("vector", _vectors(out)).append_column(TRUNCATED, pa.array(truncated))
                .append_column(TOKENS, pa.array(tokens, pa.int64())))


# -- the sink ------------------------------------------------------------------------------------------------------
def __getattr__(name: str):
    """`LanceSink` is built on first use: subclassing Ray's Datasink imports ray.data (seconds), which the
    `causal2vec` CLI must not pay for every command. Pickles by reference (workers rebuild it the same way)."""
    if name == "LanceSink":
        globals()["LanceSink"] = cls = _lance_sink_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lance_sink_class():
    import pyarrow as pa
    import pyarrow.compute as pc
    from ray.data import Datasink

    class LanceSink(Datasink):
        """Appends to a LanceDB table every `commit_rows` rows (one atomic commit each) from the write tasks."""

        def __init__(self, spec: str, schema: pa.Schema, commit_rows: int):
            self.spec, self.schema, self.commit_rows = spec, schema, commit_rows
            self.result: dict[str, int] = {}

        @property
        def min_rows_per_write(self) -> int:
            return self.commit_rows  # each write task gets at least one full chunk

        def write(self, blocks, ctx) -> dict[str, int]:
            _worker_logging()
            table = store.open_table(self.spec)
            stats = {"rows": 0, "truncated": 0, "tokens": 0, "commits": 0}
            pending: list[pa.Table] = []
            for block in blocks:
                pending.append(block if isinstance(block, pa.Table) else pa.Table.from_pandas(block))
                while sum(t.num_rows for t in pending) >= self.commit_rows:
                    chunk = pa.concat_tables(pending)
                    self._commit(table, chunk.slice(0, self.commit_rows), stats)
                    pending = [chunk.slice(self.commit_rows)]
            if sum(t.num_rows for t in pending):
                self._commit(table, pa.concat_tables(pending), stats)
            return stats

        def _commit(self, table, chunk: pa.Table, stats: dict[str, int]) -> None:
            table.add(chunk.select(self.schema.names).cast(self.schema.remove_metadata()))
            stats["rows"] += chunk.num_rows
            stats["truncated"] += int(pc.sum(chunk[TRUNCATED]).as_py() or 0)
            stats["tokens"] += int(pc.sum(chunk[TOKENS]).as_py() or 0)
            stats["commits"] += 1
            log.info("committed %d rows to %s (%d by this task)", chunk.num_rows, self.spec, stats["rows"])

        def on_write_complete(self, write_result) -> None:
            totals = {"rows": 0, "truncated": 0, "tokens": 0, "commits": 0}
            for part in write_result.write_returns:
                for key in totals:
                    totals[key] += (part or {}).get(key, 0)
            self.result = totals

    LanceSink.__module__, LanceSink.__qualname__ = __name__, "LanceSink"
    return LanceSink


def _worker_logging() -> None:
    """Chunk commits are logged from the workers (Ray forwards their stderr to the driver)."""
    logger = logging.getLogger("causal2vec.embed")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# -- the job -------------------------------------------------------------------------------------------------------
def _identity(model: str, device: str, dtype: str) -> dict[str, Any]:
    from causal2vec.model.io import load_for_stage

    loaded, _ = load_for_stage(model, device, dtype)
    return store.model_identity(loaded, store.model_name(model))


def _model_identity(config: EmbedConfig) -> dict[str, Any]:
    """The model's identity for the table's metadata: computed here for CPU runs; where the stages use GPUs, in a
    task with the decoder's resources (the driver may be a CPU head node without room for the model)."""
    import ray

    res = config.decoder
    if not (res.num_gpus or config.encoder.num_gpus):  # CPU actors: identify the model as they will run it
        return _identity(config.model, "cpu" if config.device == "auto" else config.device, config.dtype)
    return _ray_call(ray.remote(num_cpus=res.num_cpus, num_gpus=res.num_gpus)(_identity).remote(
        config.model, config.device, config.dtype))


def embed_corpus(config: EmbedConfig) -> dict[str, Any]:
    """Run the whole job on the connected Ray cluster; returns the summary (also logged)."""
    import pyarrow as pa

    import ray

    started = time.monotonic()
    files = expand_inputs(config.input, config.format)
    layout = plan_layout(files, config)
    units = [{**u, "index": i} for i, u in enumerate(plan_units(files))]
    log.info("%d input file(s), %d read unit(s); id column %s", len(files), len(units),
             layout.id_column or "(generated <file>:<row>)")
    identity = _model_identity(config)
    schema = store.table_schema(identity, layout.passthrough)
    table = store.create_or_resume(config.table, schema, overwrite=config.overwrite)
    existing = store.existing_ids(table)

    def read():
        return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            _read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"files": files, "layout": layout})

    parts = _ray_call(lambda: ray.get(read().map_batches(_scan_view, batch_format="pyarrow").to_arrow_refs()))
    parts = [t for t in parts if t.num_rows]
    if not parts:
        raise Causal2VecError(f"--input {' '.join(config.input)}: no rows to embed (the files are empty)")
    scan = pa.concat_tables(parts)
    plan = plan_rows(scan, existing)
    rejects_table = store.write_rejects(config.table, plan.rejects)
    log.info("%d rows: %d to embed, %d already in the table, %d rejected (see %s)", plan.total, plan.to_embed,
             plan.skipped, plan.rejects.num_rows, f"{config.table}{store.REJECTS_SUFFIX}")

    written = {"rows": 0, "truncated": 0, "tokens": 0, "commits": 0}
    embed_started = time.monotonic()
    if plan.to_embed:
        ds = read().map_batches(_keep_rows, batch_format="pyarrow", fn_kwargs={
            "drop_ords": ray.put(plan.duplicate_ords), "skip_ids": ray.put(existing)})
        ds = ds.repartition(target_num_rows_per_block=config.batch_size)
        ds = _model_stages(ds, config)
        sink = __getattr__("LanceSink")(config.table, schema, config.commit_rows)
        _ray_call(lambda: ds.write_datasink(sink, ray_remote_args={"max_retries": 0}))
        written = sink.result
    embed_seconds = time.monotonic() - embed_started

    table.checkout_latest()
    if written["rows"]:
        table.optimize()  # compact the per-chunk fragments before indexing
    index = _ensure_indexes(table, config, rebuild=bool(written["rows"]))
    rows_now = table.count_rows()
    expected = len(existing) + written["rows"]
    if rows_now != expected:
        log.error("table %s has %d rows, expected %d (present before + written): another writer, or a bug",
                  config.table, rows_now, expected)
    reasons: dict[str, int] = {}
    for r in plan.rejects["reason"].to_pylist():
        key = "duplicate id" if r.startswith("duplicate id") else r
        reasons[key] = reasons.get(key, 0) + 1
    summary = {
        "table": config.table, "rejects_table": f"{config.table}{store.REJECTS_SUFFIX}",
        "model": identity["model"], "fingerprint": identity["fingerprint"], "dim": identity["dim"],
        "input_rows": plan.total, "rows_written": written["rows"], "skipped_existing": plan.skipped,
        "rejected": rejects_table.count_rows(), "rejected_by_reason": reasons, "truncated": written["truncated"],
        "table_rows": rows_now, "commits": written["commits"], "tokens": written["tokens"],
        "embed_seconds": round(embed_seconds, 3), "seconds": round(time.monotonic() - started, 3),
        "docs_per_s": written["rows"] / embed_seconds if written["rows"] else 0.0,
        "tokens_per_s": written["tokens"] / embed_seconds if written["rows"] else 0.0,
        "index": index, "stages": config.stages,
    }
    log.info("summary: %s", summary)
    return summary


def _model_stages(ds, config: EmbedConfig):
    from causal2vec.model.io import load_builder

    use_encoder = load_builder(config.model).config.use_ctx_token
    common = dict(model=config.model, device=config.device, dtype=config.dtype,
                  sub_batch_size=config.sub_batch_size, bucket=config.bucket)
    dec = config.decoder
    if config.stages == "fused":
        return ds.map_batches(FusedStage, fn_constructor_kwargs={**common, "instruction": config.instruction},
                              batch_size=config.batch_size, batch_format="pyarrow", compute=dec.strategy(),
                              num_cpus=dec.num_cpus, num_gpus=dec.num_gpus or None)
    tok = config.tokenize
    ds = ds.map_batches(TokenizeStage, fn_constructor_kwargs={"model": config.model, "use_encoder": use_encoder},
                        batch_size=config.batch_size, batch_format="pyarrow", compute=tok.strategy(),
                        num_cpus=tok.num_cpus)
    if use_encoder:
        enc = config.encoder
        ds = ds.map_batches(EncoderStage, fn_constructor_kwargs=common, batch_size=config.batch_size,
                            batch_format="pyarrow", compute=enc.strategy(), num_cpus=enc.num_cpus,
                            num_gpus=enc.num_gpus or None)
    return ds.map_batches(DecoderStage, fn_constructor_kwargs={**common, "instruction": config.instruction},
                          batch_size=config.batch_size, batch_format="pyarrow", compute=dec.strategy(),
                          num_cpus=dec.num_cpus, num_gpus=dec.num_gpus or None)


def _ensure_indexes(table, config: EmbedConfig, rebuild: bool) -> dict[str, Any]:
    """Rebuild after new rows; otherwise keep the existing indexes (a rerun with nothing new is cheap)."""
    present = {ix.index_type for ix in table.list_indices()}
    has_vector = any(t != "FTS" for t in present)
    if not rebuild and (has_vector or config.index == "none") and ("FTS" in present or not config.fts):
        return {"rows": table.count_rows(), "kept": sorted(present)}
    return store.build_indexes(table, index=config.index, num_partitions=config.num_partitions,
                               num_sub_vectors=config.num_sub_vectors, fts=config.fts)


def _ray_call(fn_or_ref):
    """Run a Ray call; a Causal2VecError raised inside a task comes back as itself, not wrapped. Ray Data's
    UserCodeException drops the original exception object, keeping only its traceback text, so the message is
    read from there."""
    import ray

    try:
        return ray.get(fn_or_ref) if isinstance(fn_or_ref, ray.ObjectRef) else fn_or_ref()
    except Causal2VecError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        for _ in range(10):  # RayTaskError.cause / __cause__ chains are short; never loop forever
            if cause is None:
                break
            if isinstance(cause, Causal2VecError):
                raise Causal2VecError(str(cause)) from exc
            cause = getattr(cause, "cause", None) or cause.__cause__
        marker = f"{Causal2VecError.__module__}.{Causal2VecError.__name__}: "
        line = next((ln for ln in str(exc).splitlines() if ln.lstrip().startswith(marker)), None)
        if line is not None:
            raise Causal2VecError(line.lstrip().removeprefix(marker)) from exc
        raise


__all__ = ["EmbedConfig", "embed_corpus", "load_config", "add_arguments", "config_from_args", "run_from_args",
           "format_summary", "expand_inputs", "LanceSink"]
