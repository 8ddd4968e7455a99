"""Serving across nodes, losing the node of one decoder replica under load.

The Serve app (causal2vec.serve.app:build_app, deployed through the dashboard's REST API like `serve deploy`) runs its
HTTP proxy, ingress and encoder on the head and two decoder replicas that each need one `c2v_worker`, so one runs on
each worker node: every request crosses nodes. Closed-loop clients send one-text /v1/embeddings requests through the
head's proxy the whole time. The node of one decoder replica is killed; Serve routes around the lost replica, and once
the node comes back (`down_s` later) it starts the replacement there. Every request's time, latency and status is kept.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from causal2vec.tools.cluster.drills import Timeline
from causal2vec.tools.cluster.local import WORKER_RESOURCE, LocalCluster, node_resource
from causal2vec.tools.cluster.nodes import ClusterError
from causal2vec.tools.processes import free_port

APP = "c2v-drill"
TEXT = "a text editor for the terminal"


def serve_config(cluster: LocalCluster, port: int) -> dict[str, Any]:
    """One application: proxy, ingress and encoder on the head, a decoder replica on each worker node."""
    head = {node_resource("head"): 1}

    def stage(replicas: int, cpus: float, resources: dict[str, float]) -> dict[str, Any]:
        return {"num_replicas": replicas, "ray_actor_options": {"num_cpus": cpus, "resources": resources}}

    # inside its own network namespace the head's 0.0.0.0 is its loopback and its bridge address only
    host = "0.0.0.0" if cluster.namespaces else "127.0.0.1"
    return {"proxy_location": "HeadOnly", "http_options": {"host": host, "port": port},
            "applications": [{"name": APP, "route_prefix": "/", "import_path": "causal2vec.serve.app:build_app",
                              "args": {"model": "tiny", "device": "cpu", "dtype": "fp32", "api_keys_env": None,
                                       "ingress": stage(1, 0.25, head), "encoder": stage(1, 0.25, head),
                                       "decoder": stage(cluster.workers, 0.5, {WORKER_RESOURCE: 1})}}]}


class Load:
    """Closed-loop clients: each sends the next request when the last one answered."""

    def __init__(self, url: str, clients: int, tl: Timeline):
        self.url, self.tl, self.stopping = url, tl, threading.Event()
        self.requests: list[tuple[float, float, int, str]] = []  # (sent at t, seconds, status, error message)
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self) -> None:
        import httpx

        with httpx.Client(timeout=60, trust_env=False) as http:
            while not self.stopping.is_set():
                sent, t0 = self.tl.now(), time.monotonic()
                try:
                    response = http.post(f"{self.url}/v1/embeddings", json={"model": "tiny", "input": [TEXT]})
                    status, error = response.status_code, "" if response.status_code == 200 else response.text[:300]
                except httpx.HTTPError as exc:  # no HTTP answer at all
                    status, error = 0, repr(exc)[:300]
                self.requests.append((sent, round(time.monotonic() - t0, 4), status, error))


def replicas(cluster: LocalCluster) -> dict[str, list[tuple[str, str]]]:
    """Each deployment's replicas as (node name, state), from Serve's REST API."""
    import httpx

    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    apps = httpx.get(f"{cluster.dashboard}/api/serve/applications/", timeout=30, trust_env=False).json()
    deployments = apps.get("applications", {}).get(APP, {}).get("deployments", {})
    return {name: sorted((names.get(r.get("node_id"), "gone"), r["state"]) for r in d.get("replicas", []))
            for name, d in deployments.items()}


def serve_drill(cluster: LocalCluster, clients: int = 4, before_s: float = 8, down_s: float = 15,
                after_s: float = 8, timeout: float = 300) -> dict[str, Any]:
    import httpx

    tl = Timeline()
    port = free_port()
    response = httpx.put(f"{cluster.dashboard}/api/serve/applications/", json=serve_config(cluster, port),
                         timeout=120, trust_env=False)
    if response.status_code != 200:
        raise ClusterError(f"serve deploy answered {response.status_code}: {response.text[:500]}")
    url = f"http://{cluster.head.ip}:{port}"
    _until(lambda: _healthy(url), timeout, "the app never became healthy")
    tl.mark("app ready", replicas=replicas(cluster))
    states = []
    try:
        with Load(url, clients, tl) as load:
            time.sleep(before_s)
            placement = replicas(cluster)
            victim = next(node for node, state in placement["Decoder"] if node != "head")
            kill = cluster.kill(victim)
            killed_at = tl.mark("node killed", node=victim, processes=kill["processes"])["t"]
            while tl.now() - killed_at < down_s:
                states.append((tl.now(), replicas(cluster)))
                time.sleep(1)
            back = cluster.restart(victim)
            tl.mark("node back", node=victim, seconds_to_join=round(back["ready"] - back["time"], 1))
            _until(lambda: _decoders_on_each_worker(cluster, states, tl), timeout, "no decoder replica came back")
            replaced_at = tl.mark("replica replaced", replicas=states[-1][1])["t"]
            time.sleep(after_s)
    finally:
        httpx.delete(f"{cluster.dashboard}/api/serve/applications/", timeout=120, trust_env=False)
    tl.mark("load stopped")
    requests = sorted(load.requests)
    failed = [r for r in requests if r[2] != 200]
    return {"clients": clients, "decoder_nodes": [n for n, _ in placement["Decoder"]], "placement": placement,
            "killed": victim, "killed_at_t": killed_at, "replaced_at_t": replaced_at,
            "requests": len(requests), "ok": len(requests) - len(failed),
            "failed_by_status": dict(Counter(r[2] for r in failed)), "failures": failed[:50],
            "ok_after_kill": sum(1 for r in requests if r[0] > killed_at and r[2] == 200),
            "latency_p50_s": _percentile([r[1] for r in requests if r[2] == 200], 50),
            "requests_log": requests, "replica_states": states, "timeline": tl.events}


def _decoders_on_each_worker(cluster: LocalCluster, states: list, tl: Timeline) -> bool:
    now = replicas(cluster)
    states.append((tl.now(), now))
    running = {node for node, state in now.get("Decoder", []) if state == "RUNNING"}
    return running == {name for name in cluster.nodes if name != "head"}


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=10, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _until(check, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"{message} within {timeout:.0f}s")
        time.sleep(1)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]
