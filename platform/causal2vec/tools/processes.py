"""What every ray / serve command run from here shares: its environment, free ports, running it with its output kept,
and ProcessError. The nodes those commands run against (a local head, or a cluster of them) are
tools/cluster/nodes.RayNode.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from causal2vec.ray_init import JOB_ENVIRONMENT


class ProcessError(RuntimeError):
    """A command or a process of the local head failed; the message carries its output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every ray/serve command and, through `ray start`, of the cluster's jobs and replicas:
    the virtualenv's bin first on PATH (a job's `python` is this one), JOB_ENVIRONMENT, auth off (a throwaway cluster
    bound to 127.0.0.1)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **JOB_ENVIRONMENT, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # patience on a busy 2-core machine: the dashboard took over a minute to import (`ray start` waits 60 s by
    # default), and the raylet waits for its dashboard agent (30 s by default) before it registers
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
    env.setdefault("RAY_agent_register_timeout_ms", "300000")
    for key in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)  # every command here names its cluster explicitly
    return {**env, **(extra or {})}


def ray_bin(name: str = "ray") -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run(cmd: list[str], cwd: Path, what: str, timeout: float = 300) -> str:
    """A ray / serve command against a local head; its output, or a ProcessError carrying it."""
    out = subprocess.run(cmd, cwd=cwd, env=ray_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise ProcessError(f"`{what}` failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout
