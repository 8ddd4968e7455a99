"""One Ray node started with `ray start` on this machine (a head, or a worker joining one), isolated from any other
Ray here, and its stop or kill.

A node gets its own short --temp-dir (Ray's Unix socket paths are length-capped) and free ports for every service, so
several Ray instances share the machine; `prefix` runs it somewhere else, e.g. inside a network namespace
(network.py). `ray stop` would stop every Ray on the machine, so a node is stopped, or killed like a lost machine,
through its own processes: those naming its temp dir, and all their descendants (workers and agents rename
themselves, e.g. ray::IDLE), found with psutil.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causal2vec.tools.processes import ProcessError, free_port, ray_env

# what `ray start` says when it gave up on a slow start (worth another try) rather than on a bad setting
RETRYABLE = ("timed out during startup", "Failed to start the dashboard", "timed out after", "Failed to connect to GCS")


class ClusterError(ProcessError):
    """A Ray node or cluster on this machine failed to start or to stop; the message carries its output."""


@dataclass
class RayNode:
    """`ray start` for one node: the head when `head_address` is None, else a worker joining that GCS address.
    The defaults are a head on 127.0.0.1 (what the demo starts)."""

    num_cpus: int = 4
    resources: dict[str, float] = field(default_factory=dict)  # custom resources, e.g. {"c2v_w1": 100}
    head_address: str | None = None  # the head's GCS "ip:port"
    ip: str = "127.0.0.1"  # --node-ip-address; the head's services listen on it
    prefix: list[str] = field(default_factory=list)  # runs `ray start` through it, e.g. ["ip", "netns", "exec", NS]
    env: dict[str, str] = field(default_factory=dict)  # more environment for the node's processes
    object_store_bytes: int = 512 * 2**20
    temp_dir: Path | None = None
    port: int = 0  # the head's GCS port
    dashboard_port: int = 0
    seen: set[int] = field(default_factory=set)  # every pid observed in this node (for the leftover check)

    @property
    def is_head(self) -> bool:
        return self.head_address is None

    @property
    def address(self) -> str:
        """The GCS address workers join (the head's)."""
        return self.head_address or f"{self.ip}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.ip}:{self.dashboard_port}"

    def start(self, attempts: int = 3) -> str:
        """Start the node (a fresh temp dir each time, so a killed node can come back); returns the command.
        On a busy machine `ray start` can still give up on a slow start (see ray_start.py and ray_env for the waits
        stretched): a start that timed out is killed and tried again, up to `attempts` times."""
        for attempt in range(1, attempts + 1):
            cmd, returncode, output = self._start_once()
            if returncode == 0:
                return " ".join(cmd)
            self.kill()  # whatever half-started, before a retry or the error
            if attempt == attempts or not any(sign in output for sign in RETRYABLE):
                raise ClusterError(f"`ray start` failed (attempt {attempt} of {attempts}):\n{output[-3000:]}")
        raise AssertionError("unreachable")

    def _start_once(self) -> tuple[list[str], int, str]:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="c2v-", dir="/tmp"))  # short: socket paths are length-capped
        # `ray start`, waiting longer than Ray's fixed 30 s for the raylet to register (ray_start.py)
        cmd = [sys.executable, "-m", "causal2vec.tools.cluster.ray_start", "start", f"--num-cpus={self.num_cpus}",
               "--num-gpus=0", f"--node-ip-address={self.ip}",
               f"--object-store-memory={self.object_store_bytes}", f"--resources={json.dumps(self.resources)}",
               # every agent on its own free port: the defaults clash with other Ray instances on the machine
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               "--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        if self.is_head:
            self.port, self.dashboard_port = free_port(), free_port()
            cmd += ["--head", f"--port={self.port}", f"--dashboard-port={self.dashboard_port}",
                    f"--dashboard-host={self.ip}", "--include-dashboard=true",
                    f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.head_address}"]
        try:
            out = subprocess.run([*self.prefix, *cmd], env=ray_env(self.env), capture_output=True, text=True,
                                 timeout=420)
            returncode, output = out.returncode, out.stdout + out.stderr
        except subprocess.TimeoutExpired as exc:
            partial = [x.decode(errors="replace") if isinstance(x, bytes) else x or ""
                       for x in (exc.stdout, exc.stderr)]
            returncode, output = -1, "".join(partial) + "\n`ray start` timed out after 420s"
        self.processes()  # remember what started, even if it failed half-way
        return cmd, returncode, output

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

    def kill(self) -> list[dict[str, Any]]:
        """Lose the node like a machine: SIGKILL its raylet, then every other process of it, with no chance to clean
        up, and its temp dir with them; returns what was killed. The node can `start()` again (a new Ray node id,
        the same resources)."""
        import psutil

        procs = sorted(self.processes(), key=lambda p: _name(p) != "raylet")  # the raylet first
        killed = []
        for proc in procs:
            try:
                killed.append({"pid": proc.pid, "name": _name(proc)})
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=10)
        if self.temp_dir is not None and not self.leftovers():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def _name(proc) -> str:
    import psutil

    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return "?"


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
