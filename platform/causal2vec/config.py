"""One config toolkit for every front door: typed settings that refuse unknown keys, one error formatter, paths made
absolute (workers and replicas run elsewhere), command-line flags generated from the typed fields, and the choice
lists and instruction template that several front doors share.

A setting is declared once, as a typed pydantic field with a `description`: it is then a YAML key, a
`--set section.key=value` override and a command-line flag, with no parser code written by hand.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from causal2vec.errors import Causal2VecError

# -- choice lists shared by the model, the jobs, the store and the HTTP API ----------------------------------------
Pooling = Literal["concat", "last", "ctx", "mean"]  # how model/pooling.py turns hidden states into one vector
SearchMode = Literal["vector", "fts", "hybrid"]
IndexType = Literal["auto", "ivf_pq", "hnsw_sq", "none"]
POOLING, SEARCH_MODES, INDEX_TYPES = get_args(Pooling), get_args(SearchMode), get_args(IndexType)

# -- the query-side instruction (decoder only; documents get none) -------------------------------------------------
E5_TEMPLATE = "Instruct: {task}\nQuery: "
SEARCH_TASK = "Given a search query, retrieve relevant passages that answer the query"


def query_instruction(task: str | None, template: str = E5_TEMPLATE) -> str | None:
    """The E5-style query prefix for a task description, or None without one."""
    return template.format(task=task) if task else None


QUERY_INSTRUCTION = query_instruction(SEARCH_TASK)  # what the server's `task: query` means by default


# -- typed settings ------------------------------------------------------------------------------------------------
class Strict(BaseModel):
    """Typed settings whose unknown keys are errors: a misspelt key must never be silently ignored."""

    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=BaseModel)


def problems(exc: ValidationError) -> list[tuple[str, str, str]]:
    """(dotted field name, error type, message) for each problem pydantic found."""
    return [(".".join(str(p) for p in e["loc"]), e["type"], e["msg"]) for e in exc.errors()]


def parse(cls: type[M], data: Any, what: str, *, flags: dict[str, str] | None = None) -> M:
    """`cls` validated from `data`, or one Causal2VecError naming every problem: `invalid {what}: a.b: message`.

    `flags` (field path -> flag, from `add_flags`) names the flag a user typed instead of the field path."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        named = [f"{_shown(name, flags)}: {message}" if name else message for name, _, message in problems(exc)]
        raise Causal2VecError(f"invalid {what}: {'; '.join(named)}") from exc


def _shown(name: str, flags: dict[str, str] | None) -> str:
    if flags is None:
        return name
    path = ".".join(p for p in name.split(".") if not p.isdigit())  # `input.0` is the --input flag
    if path not in flags:  # a key with no flag (e.g. misspelt in a YAML file)
        return path if "." in path else "--" + path.replace("_", "-")
    return f"{flags[path]} ({path})" if "." in path else flags[path]


def load(cls: type[M], what: str, *, path: str | Path | None = None, data: dict[str, Any] | None = None,
         sets: list[str] | None = None, overrides: dict[str, Any] | None = None,
         flags: dict[str, str] | None = None) -> M:
    """Settings from a YAML file or a mapping (optional) <- `--set a.b=value` items <- `overrides` ({"a.b": value},
    e.g. the flags a user typed; None values are skipped), validated as `cls`."""
    data = read_config(path, sets, data)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_path(data, key, value, f"{key}={value!r}")
    return parse(cls, data, what, flags=flags)


def read_config(path: str | Path | None, sets: list[str] | None = None,
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML file's mapping (or a copy of `data`; empty without either) with each `a.b=value` applied (values
    parsed as YAML)."""
    import copy

    import yaml

    data = copy.deepcopy(data or {})
    if path:
        p = Path(path)
        if not p.is_file():
            raise Causal2VecError(f"--config {path}: no such file")
        data = yaml.safe_load(p.read_text()) or {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise Causal2VecError(f"--set {item!r}: expected key=value or section.key=value")
        set_path(data, key, yaml.safe_load(raw), f"--set {item!r}")
    return data


def set_path(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """`data["a"]["b"] = value` for key `a.b`, creating sections on the way."""
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise Causal2VecError(f"{source}: {part} is not a section")
    node[leaf] = value


# -- paths -------------------------------------------------------------------------------------------------------
def absolute(path: str) -> str:
    """A local path made absolute (Ray workers and replicas do not share the caller's working directory); URIs
    (`s3://...`) unchanged."""
    return path if "://" in path else str(Path(path).expanduser().absolute())


def absolute_if_exists(name: str) -> str:
    """`absolute(name)` when it names an existing local path, else unchanged: model names are presets, hub ids or
    directories."""
    return absolute(name) if "://" not in name and Path(name).expanduser().exists() else name


# -- command-line flags from typed fields ---------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], *, prefix: str = "") -> dict[str, str]:
    """One flag per typed field of `cls`, and per field of its sections as `--section-field`; returns
    {field path: flag}, also kept on the parser for `flag_values`.

    The help is the field's description. Literal fields get choices, bool fields become switches (`--name` when
    off by default, `--no-name` when on), list fields take several values. A field's `json_schema_extra` may rename
    its flag (`{"flag": "cpus"}`) or give a metavar; dict fields stay YAML-only. A section's defaults are its own
    class's (a section given in part, by flag or YAML, fills the rest from them)."""
    flags: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        path, flag = f"{prefix}{name}", f"{prefix.replace('.', '-')}{extra.get('flag', name)}".replace("_", "-")
        default = field.get_default(call_default_factory=True)
        kind = _one_type(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            flags |= add_flags(parser, kind, prefix=f"{path}.")
            continue
        kwargs = _argparse_kwargs(kind, default)
        if kwargs is None:
            continue
        if kind is bool and default is True:
            flag = f"no-{flag}"
        shown = kind is not bool and not field.is_required() and default not in (None, "", [])
        help_text = (field.description or "") + (f" (default {default})" if shown else "")
        if "choices" not in kwargs and kind is not bool:
            kwargs["metavar"] = extra.get("metavar", name.upper())
        parser.add_argument(f"--{flag}", dest=path, help=help_text or None, **kwargs)
        flags[path] = f"--{flag}"
    parser.set_defaults(_flags={**(parser.get_default("_flags") or {}), **flags})
    return flags


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a user gave as flags ({"decoder.num_cpus": 2}): what `load(..., overrides=...)` applies."""
    return {path: getattr(args, path) for path in getattr(args, "_flags", {}) if getattr(args, path) is not None}


def _one_type(annotation: Any) -> Any:
    """`int` for `int | None`; the annotation itself otherwise."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else None
    return annotation


def _argparse_kwargs(kind: Any, default: Any) -> dict[str, Any] | None:
    if get_origin(kind) is Literal:
        choices = list(get_args(kind))
        return {"choices": choices, "type": type(choices[0])}
    if kind is bool:
        return {"action": "store_const", "const": not default}
    if kind in (int, float, str):
        return {"type": kind}
    if get_origin(kind) is list and get_args(kind) == (str,):
        return {"nargs": "+"}
    return None
