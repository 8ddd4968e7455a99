"""Processes of a local Ray head: `ray start --head` isolated from any other Ray on the machine (its own temp dir and
free ports), the environment of every ray / serve command, and a stop that leaves nothing behind.

A head is stopped by finding the processes that belong to its temp dir and their children with psutil: `ray stop`
would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class OwnedProcesses:
    """What LocalHead and tools/cluster/nodes.RayNode share: stopping every process they own (`processes()`, the
    pids in `seen`, their `temp_dir`) and checking that none is left."""

    seen: set[int]
    temp_dir: Path | None

    def processes(self) -> list:
        """Every live process: those naming its temp dir, and all their descendants (workers and agents
        rename themselves, e.g. ray::IDLE, so they are found as children)."""
        import psutil

        if self.temp_dir is None:
            return []
        mark, me = str(self.temp_dir), os.getpid()
        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != me and mark in " ".join(proc.info["cmdline"] or []):
                    roots.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found = {p.pid: p for root in roots for p in [root, *_children(root)]}
        self.seen |= set(found)
        return list(found.values())

    def stop(self, timeout: float = 5) -> dict[str, Any]:
        """Terminate every process, kill what remains after `timeout` (gcs_server, the raylet and some agents outwait
        a SIGTERM for tens of seconds; nothing here needs a graceful exit) and check none is alive."""
        import psutil

        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        left = self.leftovers()
        if self.temp_dir is not None and not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return {"stopped": len(procs), "seen": len(self.seen), "left": left,
                "temp_dir": str(self.temp_dir), "temp_dir_removed": self.temp_dir is not None and not
                self.temp_dir.exists()}

    def leftovers(self) -> list[dict[str, Any]]:
        """Processes still alive: any pid seen, or anything naming the temp dir."""
        import psutil

        left = {p.pid: p for p in self.processes()}
        for pid in self.seen:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left[pid] = proc
            except psutil.NoSuchProcess:
                continue
        out = []
        for pid, proc in sorted(left.items()):
            try:
                out.append({"pid": pid, "name": proc.name(), "cmdline": " ".join(proc.cmdline())[:200]})
            except psutil.NoSuchProcess:
                continue
        return out


@dataclass
class LocalHead(OwnedProcesses):
    """`ray start --head` on this machine, isolated from any other Ray here, and its clean stop."""

    num_cpus: int = 4
    object_store_bytes: int = 512 * 2**20
    temp_dir: Path | None = None
    dashboard_port: int = 0
    seen: set[int] = field(default_factory=set)  # every pid observed in this cluster (for the leftover check)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> str:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="c2v-", dir="/tmp"))  # short: socket paths are length-capped
        self.dashboard_port = free_port()
        cmd = [ray_bin(), "start", "--head", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               f"--object-store-memory={self.object_store_bytes}", f"--port={free_port()}",
               f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
               # every agent on its own free port: the defaults clash with other Ray instances on the machine
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--ray-client-server-port={free_port()}", "--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        out = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=180)
        self.processes()  # remember what started, even if it failed half-way
        if out.returncode != 0:
            raise ProcessError(f"`ray start --head` failed:\n{(out.stdout + out.stderr)[-3000:]}")
        return " ".join(cmd)


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
