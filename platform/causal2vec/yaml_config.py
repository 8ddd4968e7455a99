"""Job configs: a YAML file plus `--set section.key=value` overrides, read the same way by every job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from causal2vec.errors import Causal2VecError


def read_config(path: str | Path | None, sets: list[str] | None = None) -> dict[str, Any]:
    """The YAML file's mapping (empty without a file) with each `a.b=value` applied (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise Causal2VecError(f"--config {path}: no such file")
        data = yaml.safe_load(p.read_text()) or {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise Causal2VecError(f"--set {item!r}: expected key=value or section.key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise Causal2VecError(f"--set {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data
