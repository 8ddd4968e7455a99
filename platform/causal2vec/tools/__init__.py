"""Tooling around a source checkout, outside the library core (which never imports it; tests/test_layout.py checks):
the one-command demo (`jobs/demo.py`, `make demo`), the benchmark runner (`causal2vec bench`), and local Ray heads
for both."""

from __future__ import annotations

from pathlib import Path

from causal2vec.errors import Causal2VecError


def checkout() -> Path:
    """The source checkout this package runs from (jobs/, bench/ and configs next to platform/)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "jobs" / "train.py").is_file():
        raise Causal2VecError(f"this needs a source checkout (jobs/ and bench/ next to platform/); {root} is not one")
    return root
