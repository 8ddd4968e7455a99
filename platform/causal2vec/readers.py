"""One reader for every input: training pairs, evaluation tasks, bulk corpora and `causal2vec embed --input`.

Formats come from the suffix (or are forced): parquet, JSON lines (.jsonl / .json / .ndjson), plain text (one row per
line, in a `text` column), csv and tsv; all but parquet may be compressed (.gz, .bz2, .zst, .lz4). A source is a file,
a directory (read recursively), a glob, or a pyarrow filesystem URI (`s3://bucket/corpus/*.parquet`), so the same call
reads a laptop's files and object storage.

`text_problem` is the one answer to "can this text be embedded?": the model, the bulk job's rejects, training rows,
evaluation files and the HTTP API all ask it.
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causal2vec.errors import Causal2VecError

if TYPE_CHECKING:  # imported where used: the CLI imports this module and must start fast
    import pyarrow as pa

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv"}
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
# A text file's lines that were not valid UTF-8 are decoded with U+FFFD for the bad bytes and start with this mark
# (a noncharacter, never in real text), so text_problem rejects them by name instead of embedding the damage.
BAD_UTF8 = "\ufdd0"


def text_problem(text: Any) -> str | None:
    """Why `text` cannot be embedded ("null text", "empty text", "whitespace-only text", "not a string (int)", "not
    valid Unicode (...)", "not valid UTF-8 (...)"), or None when it can. The reasons are what a bulk job's rejects
    table stores."""
    if text is None:
        return "null text"
    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    if not text:
        return "empty text"
    if not text.strip():
        return "whitespace-only text"
    if not text.isascii():
        if text.startswith(BAD_UTF8):
            return "not valid UTF-8 (a text file's line; its bad bytes show as U+FFFD)"
        return unicode_problem(text)
    return None


def unicode_problem(text: str) -> str | None:
    """A lone UTF-16 surrogate makes a string invalid Unicode: JSON's "\\ud800" parses to one, and tokenizers fail
    on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (a lone surrogate at character {exc.start})"
    return None


@dataclass(frozen=True)
class InputFile:
    fs: Any  # a pyarrow FileSystem (picklable: travels to Ray read tasks)
    path: str
    fmt: str
    name: str  # relative to the inputs' common directory: what generated row ids are made of


def format_of(path: str) -> str | None:
    """The format a file's suffix names (a compression suffix looked through), or None."""
    stem = path
    for ext in COMPRESSED:
        stem = stem.removesuffix(ext)
    return FORMATS.get(posixpath.splitext(stem)[1].lower())


def expand(specs: list[str], fmt: str = "auto", *, what: str = "--input") -> list[InputFile]:
    """Files, directories (recursive) and globs -> a sorted, de-duplicated file list with formats. `what` names the
    setting in error messages."""
    from pyarrow import fs as pafs

    found: list[tuple[Any, str]] = []
    for spec in specs:
        fs, path = _filesystem(spec, what)
        if any(ch in path for ch in "*?["):
            base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rpartition("/")[0] or "/"
            depth = path.count("/")
            matches = [f.path for f in _list(fs, base, spec, what)
                       if f.type == pafs.FileType.File and fnmatch.fnmatchcase(f.path, path)
                       and ("**" in path or f.path.count("/") == depth)]
            if not matches:
                raise Causal2VecError(f"{what} {spec!r}: the pattern matches no file")
            found += [(fs, m) for m in sorted(matches)]
            continue
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise Causal2VecError(f"{what} {spec!r}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            files = sorted(f.path for f in _list(fs, path, spec, what)
                           if f.type == pafs.FileType.File and (fmt != "auto" or format_of(f.path)))
            if not files:
                raise Causal2VecError(f"{what} {spec!r}: the directory holds no {', '.join(sorted(FORMATS))} file")
            found += [(fs, f) for f in files]
        else:
            found.append((fs, path))
    unique = list({(fs.type_name, path): (fs, path) for fs, path in found}.values())
    root = posixpath.commonpath([posixpath.dirname(p) for _, p in unique]) if unique else ""
    out = []
    for fs, path in unique:
        kind = fmt if fmt != "auto" else format_of(path)
        if kind is None:
            raise Causal2VecError(f"{what} {path!r}: unknown file type; use {', '.join(sorted(FORMATS))} files, or "
                                  "name the format")
        out.append(InputFile(fs, path, kind, posixpath.relpath(path, root) if root else path))
    return out


def units(files: list[InputFile]) -> list[dict[str, int]]:
    """Read units, what parallel readers split on: one per parquet row group, one per other file."""
    out = []
    for i, f in enumerate(files):
        if f.fmt == "parquet":
            meta = _parquet(f).metadata
            first = 0
            for g in range(meta.num_row_groups):
                out.append({"file": i, "row_group": g, "first_row": first})
                first += meta.row_group(g).num_rows
        else:
            out.append({"file": i, "row_group": -1, "first_row": 0})
    return out


def schema(f: InputFile) -> pa.Schema:
    """A file's columns (a parquet file's from its footer, without reading rows)."""
    import pyarrow as pa

    if f.fmt == "parquet":
        return _parquet(f).schema_arrow
    if f.fmt == "text":
        return pa.schema([pa.field("text", pa.string())])
    return read_file(f).schema


def read_file(f: InputFile, row_group: int = -1) -> pa.Table:
    """One file (or one parquet row group) as a table; an empty text or JSON lines file has no columns."""
    import pyarrow as pa

    if f.fmt == "parquet":
        parquet = _parquet(f)
        try:
            return parquet.read_row_group(row_group) if row_group >= 0 else parquet.read()
        except (pa.ArrowException, OSError) as exc:
            where = f"row group {row_group}" if row_group >= 0 else "its rows"
            raise Causal2VecError(f"{f.path}: {where} cannot be read, the file is damaged ({exc})") from exc
    compression = "detect" if f.path.endswith(COMPRESSED) else None
    with f.fs.open_input_stream(f.path, compression=compression) as stream:
        data = stream.read()
    if not data.strip():
        return pa.table({})
    try:
        if f.fmt == "text":
            return pa.table({"text": pa.array(_text_lines(data), pa.string())})
        if f.fmt in ("csv", "tsv"):
            import pyarrow.csv as pcsv

            delimiter = "\t" if f.fmt == "tsv" else ","
            return pcsv.read_csv(pa.BufferReader(data), parse_options=pcsv.ParseOptions(delimiter=delimiter))
        import pyarrow.json as pj

        return pj.read_json(pa.BufferReader(data))
    except pa.ArrowInvalid as exc:
        hint = " (JSON lines: one object per line)" if f.fmt == "jsonl" else ""
        raise Causal2VecError(f"{f.path}: not a readable {f.fmt} file{hint}: {exc}") from exc


def _text_lines(data: bytes) -> list[str]:
    """One row per line; a line that is not valid UTF-8 is kept, marked with BAD_UTF8, for text_problem to reject."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(BAD_UTF8 + raw.decode("utf-8", errors="replace"))
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another row
    return [line.removesuffix("\r") for line in lines]


def read_units(batch: pa.Table, files: list[InputFile]) -> pa.Table:
    """A Ray Data map function: the rows of the read units in `batch` (rows of `units(files)`)."""
    import pyarrow as pa

    return pa.concat_tables([read_file(files[u["file"]], u["row_group"]) for u in batch.to_pylist()])


def read_table(spec: str | Path, fmt: str = "auto", *, what: str = "input") -> pa.Table:
    """Every file a source names, as one table."""
    import pyarrow as pa

    tables = [read_file(f) for f in expand([str(spec)], fmt, what=what)]
    tables = [t for t in tables if t.num_columns] or tables[:1]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise Causal2VecError(f"{what} {str(spec)!r}: its files' columns do not agree ({exc})") from exc


def _filesystem(spec: str, what: str):
    import pyarrow as pa
    from pyarrow import fs as pafs

    if "://" in spec:
        try:
            return pafs.FileSystem.from_uri(spec)
        except (pa.ArrowInvalid, OSError) as exc:
            raise Causal2VecError(f"{what} {spec!r}: {exc}") from exc
    return pafs.LocalFileSystem(), str(Path(spec).expanduser().absolute())


def _list(fs, base: str, spec: str, what: str):
    from pyarrow import fs as pafs

    try:
        return fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError) as exc:
        raise Causal2VecError(f"{what} {spec!r}: cannot list {base!r}: {exc}") from exc


def _parquet(f: InputFile):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f.fs.open_input_file(f.path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise Causal2VecError(f"{f.path}: not a readable parquet file ({exc})") from exc
