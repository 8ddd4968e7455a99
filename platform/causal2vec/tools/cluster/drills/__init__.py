"""Node-failure drills: the platform's three front doors run across the nodes of a LocalCluster while one worker node
is killed (kill -9 of its raylet, workers and agents), and what happened is measured.

    embed.py   bulk embedding: the encoder and decoder stages on different nodes; the decoder's node is lost mid-job
    train.py   training: 2 Train workers on 2 nodes (gloo); one node is lost after a checkpoint and comes back
    serve.py   serving: a decoder replica on each worker node, under HTTP load; one replica's node is lost

Jobs go through the head's job API and Serve through its REST API: the doors `ray job submit` and `serve deploy` use.
Each drill returns a JSON-able record whose `timeline` is in seconds since the drill started; the tests assert on it
and bench/multinode.py writes it down. This module: what the drills share.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from causal2vec.job_result import find_result
from causal2vec.tools.cluster.local import LocalCluster
from causal2vec.tools.cluster.nodes import ClusterError

DONE = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Timeline:
    """What happened when, in seconds since the drill started."""

    t0: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def mark(self, event: str, **data: Any) -> dict[str, Any]:
        entry = {"t": self.now(), "event": event, **data}
        self.events.append(entry)
        return entry


class Job:
    """A script of jobs/ submitted to the cluster's job API, with its log read as it grows."""

    def __init__(self, cluster: LocalCluster, script: str, args: list[str], timeout: float = 60):
        from ray.job_submission import JobSubmissionClient

        from causal2vec.tools import checkout as repo_root

        entrypoint = shlex.join([sys.executable, str(repo_root() / "jobs" / script), *args])
        deadline = time.monotonic() + timeout
        while True:  # the head's job agent comes up a few seconds after `ray start` returns
            try:
                self.client = JobSubmissionClient(cluster.dashboard)
                self.id = self.client.submit_job(entrypoint=entrypoint)
                break
            except Exception:  # noqa: BLE001 - retried until the deadline, then raised
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        self._read = 0

    def _call(self, method: str, patience: float = 120) -> Any:
        """A job API call, retried for `patience` seconds: on a busy machine the head's job agent, which serves the
        logs, was seen refusing connections for a while (the dashboard answered 500)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return getattr(self.client, method)(self.id)
            except Exception:  # noqa: BLE001 - retried until the deadline, then raised
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def status(self) -> str:
        return str(self._call("get_job_status").value)

    def new_lines(self) -> list[str]:
        logs = self._call("get_job_logs")
        end = logs.rfind("\n") + 1
        lines, self._read = logs[self._read:end].splitlines(), max(self._read, end)
        return lines

    def wait(self, timeout: float, poll: Callable[[], None] = lambda: None) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.status()) not in DONE:
            if time.monotonic() > deadline:
                self.client.stop_job(self.id)
                raise ClusterError(f"job {self.id} still {status} after {timeout:.0f}s")
            poll()
            time.sleep(0.5)
        return status

    def log_tail(self, lines: int = 60) -> str:
        """The end of the job's log: why a job failed."""
        return "\n".join(self._call("get_job_logs").splitlines()[-lines:])

    def result(self) -> dict[str, Any] | None:
        return find_result(self._call("get_job_logs").splitlines())


def actor_nodes(cluster: LocalCluster) -> dict[str, list[str]]:
    """Where the live actors run: class name -> the names of their nodes."""
    from ray.util.state import list_actors

    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    out: dict[str, list[str]] = {}
    for actor in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], detail=True, limit=10000,
                             raise_on_missing_output=False):
        out.setdefault(actor.class_name, []).append(names.get(actor.node_id, "gone"))
    return out


def stage_nodes(placement: dict[str, list[str]], stage: str) -> list[str]:
    """The nodes of a Ray Data stage's actors (its class runs as `MapWorker(MapBatches(<stage>))`)."""
    return sorted(n for cls, nodes in placement.items() if f"MapBatches({stage})" in cls for n in nodes)
