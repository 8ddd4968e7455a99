"""Training across nodes, losing one of them after a checkpoint.

jobs/train.py (the tiny config) runs 2 Ray Train workers that each need one `c2v_worker`, so one runs on each worker
node and gloo carries their all-reduces over the nodes' network. After a checkpoint has been registered, the node of
one worker is killed; it comes back `down_s` later. Ray Train's controller sees the worker group fail, and with
`ray.max_failures` left it starts a new group once both workers fit again (when the node is back), which resumes from
the last checkpoint. The steps done after that checkpoint and before the kill are lost and redone.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from causal2vec.tools.cluster.drills import DONE, Job, Timeline, actor_nodes
from causal2vec.tools.cluster.local import WORKER_RESOURCE, LocalCluster
from causal2vec.tools.cluster.nodes import ClusterError

REPORT = re.compile(r"Reporting training result \d+: TrainingReport\(checkpoint=(\w+).*?'step': (\d+)")
REGISTER_S = 5  # Ray Train's controller registers a reported checkpoint at its next poll (2 s): wait past two


def train_drill(cluster: LocalCluster, work: Path, steps: int = 30, checkpoint_every: int = 5, kill_at: int = 8,
                down_s: float = 10, timeout: float = 900) -> dict[str, Any]:
    from causal2vec.tools import checkout as repo_root

    tl = Timeline()
    sets = [f"ray.storage_path={work / 'runs'}", "ray.name=drill", f"optim.max_steps={steps}",
            f"ray.checkpoint_every_steps={checkpoint_every}", "ray.report_every_steps=1", "data.dev=null",
            "ray.max_failures=2", f"ray.worker_resources={{{WORKER_RESOURCE}: 1}}"]
    job = Job(cluster, "train.py", ["--config", str(repo_root() / "jobs" / "configs" / "tiny.yaml"),
                                    *[arg for s in sets for arg in ("--set", s)]])
    tl.mark("job submitted")
    progress: list[tuple[float, int]] = []  # (t, step) as reported, in order: a step going back is a restart
    checkpoint: dict[str, float] = {}  # the last checkpointed step and when it was seen

    def follow() -> None:
        for line in job.new_lines():
            match = REPORT.search(line)
            if match and (not progress or progress[-1][1] != int(match[2])):
                progress.append((tl.now(), int(match[2])))
                if match[1] != "None":
                    checkpoint.update(step=int(match[2]), t=tl.now())

    def past_a_checkpoint() -> bool:  # registered by now, and at least one step done after it
        return bool(checkpoint and progress[-1][1] > max(checkpoint["step"], kill_at - 1)
                    and tl.now() - checkpoint["t"] >= REGISTER_S)

    deadline = time.monotonic() + timeout
    while not past_a_checkpoint():
        if job.status() in DONE or time.monotonic() > deadline:
            raise ClusterError(f"training ended or stalled before step {kill_at} ({job.status()})")
        follow()
        time.sleep(0.5)
    workers = sorted(actor_nodes(cluster).get("RayTrainWorker", []))
    victim = workers[-1]
    step_at_kill = progress[-1][1]
    kill = cluster.kill(victim)
    killed_at = tl.mark("node killed", node=victim, step=step_at_kill, checkpoint_step=checkpoint["step"],
                        processes=kill["processes"])["t"]
    while tl.now() - killed_at < down_s:
        follow()
        time.sleep(0.5)
    back = cluster.restart(victim)
    back_at = tl.mark("node back", node=victim, seconds_to_join=round(back["ready"] - back["time"], 1))["t"]
    status = job.wait(timeout, poll=follow)
    follow()
    tl.mark("job ended", status=status)
    result = job.result() or {}
    history = [h for h in result.get("history", []) if "loss" in h]
    restarted = [h["step"] for h in history if h.get("restarts", 0) >= 1]
    resumed_from = min(restarted) - 1 if restarted else None
    resumed = [t for t, _ in progress if t > back_at]  # a new group needs both worker nodes: none ran before
    return {"steps": steps, "checkpoint_every": checkpoint_every, "train_worker_nodes": workers, "killed": victim,
            "step_at_kill": step_at_kill, "resumed_from_step": resumed_from,
            "steps_lost": step_at_kill - resumed_from if resumed_from is not None else None,
            "killed_at_t": killed_at, "node_back_t": back_at, "first_step_after_t": resumed[0] if resumed else None,
            "status": status, "final_step": result.get("final", {}).get("step"),
            "loss_first": history[0]["loss"] if history else None,
            "loss_last": history[-1]["loss"] if history else None,
            "losses": [(h["step"], round(h["loss"], 4), h.get("restarts", 0)) for h in history],
            "progress": progress, "timeline": tl.events,
            "log_tail": job.log_tail() if status != "SUCCEEDED" else None}
