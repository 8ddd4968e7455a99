"""LocalCluster: a real multi-node Ray cluster on this machine (a head and N worker nodes), to run the platform's jobs
across nodes and to lose one.

    with LocalCluster(workers=2) as cluster:       # nodes "head", "w1", "w2"
        cluster.dashboard                          # submit jobs, deploy Serve, read the state API here
        cluster.kill("w2"); cluster.restart("w2")  # a lost machine, and a replacement with the same resources

Each node is its own `ray start` in its own network namespace (network.py), with its own address on a private
bridge, so Ray sees separate machines that talk over the network. Where namespaces cannot be made (not root, no
iproute2) or `namespaces=False`, the nodes share 127.0.0.1 with distinct ports instead: still separate raylets,
object stores and node ids, but one network stack; `cluster.namespaces` says which one ran.

Placement: every node declares a custom resource named after it (`c2v_head`, `c2v_w1`, ...; 100 units, so work pins
to a node by asking for one), and every worker node also `c2v_worker: 1` (work that may run on any worker node, one
per node). Whatever nodes share a machine also share its filesystem, which stands in for a cluster's shared storage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from causal2vec.tools.cluster import network
from causal2vec.tools.cluster.nodes import ClusterError, RayNode

WORKER_RESOURCE = "c2v_worker"


def node_resource(name: str) -> str:
    """The custom resource only node `name` has: `{node_resource("w1"): 1}` pins work to w1."""
    return f"c2v_{name}"


@dataclass
class LocalCluster:
    """Nodes "head", "w1".."wN"; logical CPUs may exceed the cores (Ray Data and Train deadlock on too few)."""

    workers: int = 2
    head_cpus: int = 4
    worker_cpus: int = 2
    namespaces: bool | None = None  # None: when this process can make them
    object_store_bytes: int = 256 * 2**20
    start_attempts: int = 3  # per node: `ray start` gives up on slow starts on a busy machine (nodes.py)
    env: dict[str, str] = field(default_factory=dict)  # more environment for every node's processes
    nodes: dict[str, RayNode] = field(default_factory=dict)
    net: network.NodeNetwork | None = None

    @property
    def head(self) -> RayNode:
        return self.nodes["head"]

    @property
    def dashboard(self) -> str:
        return self.head.dashboard

    def start(self) -> LocalCluster:
        if self.namespaces is None:
            self.namespaces = network.available()
        names = ["head", *(f"w{i + 1}" for i in range(self.workers))]
        if self.namespaces:
            self.net = network.NodeNetwork()
            self.net.create()
        for name in names:
            node = RayNode(num_cpus=self.head_cpus if name == "head" else self.worker_cpus,
                           resources={node_resource(name): 100, **({} if name == "head" else {WORKER_RESOURCE: 1})},
                           head_address=None if name == "head" else self.head.address,
                           object_store_bytes=self.object_store_bytes, env=dict(self.env))
            if self.net:
                node.ip, node.prefix = self.net.add(name), self.net.prefix(name)
                # gloo binds where the hostname resolves: 127.0.0.1 here, which other namespaces cannot reach
                node.env["GLOO_SOCKET_IFNAME"] = network.IFACE
            self.nodes[name] = node
            node.start(self.start_attempts)
        self.wait_for_nodes()
        return self

    def node_ids(self) -> dict[str, str]:
        """The Ray node id of each live node, by name. A restarted node has a new id; its killed predecessor stays
        ALIVE in the head's view until health checks fail (~15 s), so the newest node with the name wins."""
        from ray.util.state import list_nodes

        newest: dict[str, Any] = {}
        for node in list_nodes(address=self.dashboard, detail=True, limit=1000):
            for name in self.nodes:
                if node.state == "ALIVE" and node_resource(name) in (node.resources_total or {}):
                    if name not in newest or node.start_time_ms > newest[name].start_time_ms:
                        newest[name] = node
        return {name: node.node_id for name, node in newest.items()}

    def wait_for_nodes(self, timeout: float = 120, replaced: dict[str, str] | None = None) -> dict[str, str]:
        """Until every node is up (and those in `replaced`, name -> old id, under a new id)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ids = self.node_ids()
            except Exception:  # noqa: BLE001 - the dashboard comes up a few seconds after the head
                ids = {}
            if len(ids) == len(self.nodes) and all(ids[n] != old for n, old in (replaced or {}).items()):
                return ids
            if time.monotonic() > deadline:
                raise ClusterError(f"only {sorted(ids)} of {sorted(self.nodes)} joined after {timeout:.0f}s")
            time.sleep(0.5)

    def kill(self, name: str) -> dict[str, Any]:
        """kill -9 node `name` (raylet first, then its workers and agents); returns when and what."""
        if name == "head":
            raise ClusterError("the drills lose worker nodes; losing the head loses the cluster")
        at = time.time()
        killed = self.nodes[name].kill()
        return {"node": name, "time": at, "processes": len(killed),
                "raylets": sum(p["name"] == "raylet" for p in killed)}

    def restart(self, name: str) -> dict[str, Any]:
        """Start node `name` again (same resources, new node id) and wait until the head sees it."""
        old = self.node_ids().get(name, "")
        at = time.time()
        self.nodes[name].start(self.start_attempts)
        node_id = self.wait_for_nodes(replaced={name: old})[name]
        return {"node": name, "time": at, "ready": time.time(), "node_id": node_id}

    def stop(self) -> dict[str, Any]:
        """Stop every node (workers first), then delete the network; reports anything left behind."""
        report: dict[str, Any] = {"namespaces": self.namespaces}
        for name in reversed(list(self.nodes)):
            report[name] = self.nodes[name].stop()
        if self.net:
            self.net.remove()
            report["network_left"] = self.net.leftovers()
        report["left"] = [p for name in self.nodes for p in report[name]["left"]] + report.get("network_left", [])
        return report

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
