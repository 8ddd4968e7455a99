"""`causal2vec bench NAME [ARGS]`: run bench/NAME.py of the source checkout as `python bench/NAME.py ARGS` would
(run it from the checkout's root: benches name their default inputs relative to it), with the jobs' environment;
without NAME, list the benches with the first line of each one's docstring."""

from __future__ import annotations

import ast
import runpy
import sys

from causal2vec.errors import Causal2VecError
from causal2vec.ray_init import job_environment
from causal2vec.tools import checkout


def benches() -> dict[str, str]:
    """Every bench of the checkout: name -> its docstring's first line."""
    found = {}
    for path in sorted((checkout() / "bench").glob("*.py")):
        source = path.read_text()
        if "__main__" in source:  # a runnable bench, not a helper module
            doc = (ast.get_docstring(ast.parse(source)) or "").strip()
            found[path.stem] = doc.splitlines()[0] if doc else ""
    return found


def run_bench(name: str | None, args: list[str]) -> int:
    available = benches()
    if not name:
        width = max(map(len, available), default=0)
        print("\n".join(f"{n:<{width}}  {line}" for n, line in available.items()))
        return 0
    if name not in available:
        raise Causal2VecError(f"no bench {name!r}; choose one of {', '.join(available)}")
    script = checkout() / "bench" / f"{name}.py"
    job_environment()
    saved = sys.argv, sys.path[:]
    sys.argv, sys.path = [str(script), *args], [str(script.parent), *sys.path]  # as `python bench/NAME.py`
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.path = saved
    return 0
