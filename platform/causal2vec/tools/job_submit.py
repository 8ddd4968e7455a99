"""`ray job submit --working-dir .` against a local head, with the job's log kept and selected lines shown."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from causal2vec.job_result import find_result
from causal2vec.tools.cluster.nodes import RayNode
from causal2vec.tools.processes import ProcessError, ray_bin, ray_env

_PROGRESS = re.compile(r"step \d+/\d+  loss .*")  # rank 0's progress line (causal2vec.train.loop.progress_line)
_COMMIT = re.compile(r"committed (\d+) rows to")


def submit_job(head: RayNode, root: Path, args: list[str], log_path: Path, console,
               echo: Callable[[str], str | None], exclude: Path | None = None) -> dict[str, Any]:
    """`ray job submit --working-dir . -- python ARGS` against the head; the full log goes to `log_path`, the lines
    `echo` maps to text are shown; returns the job's `RESULT_JSON` line. `exclude`: the output directory, kept out
    of the uploaded working directory when it lies inside the checkout and git does not already ignore it."""
    cmd = [ray_bin(), "job", "submit", f"--address={head.dashboard}", "--working-dir", "."]
    if exclude is not None and exclude.is_relative_to(root) and not _git_ignored(root, exclude):
        cmd += ["--runtime-env-json", json.dumps({"excludes": [f"/{exclude.relative_to(root).as_posix()}/"]})]
    cmd += ["--", "python", *args]
    console.info("$ ray job submit --working-dir . -- python " + " ".join(_quote(a) for a in args))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(30):  # the head's job agent comes up a few seconds after `ray start` returns
        lines: list[str] = []
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=root, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            try:
                for line in proc.stdout:
                    log.write(line)
                    lines.append(line.rstrip("\n"))
                    shown = echo(_plain(line))
                    if shown:
                        console.info(shown)
                proc.wait()
            finally:
                if proc.poll() is None:  # interrupted: the job itself is stopped with the head
                    proc.terminate()
                    proc.wait(10)
        text = "\n".join(lines)
        if proc.returncode != 0 and "No available agent" in text and attempt < 29:
            time.sleep(2)
            continue
        break
    result = find_result(lines)
    if proc.returncode != 0 or result is None:
        errors = list(dict.fromkeys(_plain(ln) for ln in lines if ": error:" in ln))  # the job's own message
        tail = "\n".join(_plain(ln) for ln in lines[-15:])
        raise ProcessError(f"the job `python {' '.join(args[:1])}` failed (exit {proc.returncode}); full log: "
                        f"{log_path}\n" + ("\n".join(errors) if errors else tail))
    return result


def _git_ignored(root: Path, path: Path) -> bool:
    try:
        return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=root, capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip("\n")


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w./:=@,+-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def train_echo(line: str) -> str | None:
    if line.startswith("data "):
        return line
    m = _PROGRESS.search(line)
    return m[0] if m else None


def embed_echo() -> Callable[[str], str | None]:
    total = [0]

    def echo(line: str) -> str | None:
        m = _COMMIT.search(line)
        if m:
            total[0] += int(m[1])
            return f"committed {int(m[1])} rows to LanceDB ({total[0]} so far)"
        return None

    return echo
