"""The one line a job prints for scripts and tests: `RESULT_JSON {...}`. The train and embed jobs write it; the
demo's job submitter, the cluster drills and the benches find it in the job's output."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

PREFIX = "RESULT_JSON "


def print_result(summary: dict[str, Any]) -> None:
    print(PREFIX + json.dumps(summary, default=str), flush=True)


def find_result(lines: Iterable[str]) -> dict[str, Any] | None:
    """The last result line among `lines`, parsed; None when the job printed none."""
    found = [line.removeprefix(PREFIX) for line in lines if line.startswith(PREFIX)]
    return json.loads(found[-1]) if found else None
