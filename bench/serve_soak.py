"""Soak and fault injection: many requests at high concurrency against the real Serve app on loopback, every
answer checked against in-process `model.encode`, /health polled throughout, replicas killed with SIGKILL on cue.

Clients send 1-8 random sample texts per request and retry a 503 after its Retry-After (a well-behaved client): a
request that succeeds after retries is *held*; one that never gets a 200, or gets another error, is *failed*. Every
200 is compared with the reference vectors (same model and dtype in this process; fp32 by default, so batching
cannot change a vector beyond float noise). A poller sends GET /health every second with a 5 s timeout.

With `--kill DEPLOYMENT@SECONDS` (repeatable), the replica processes of that deployment are killed with SIGKILL at
that time into the load; the results say, per kill, how long /health was not 200 and when it was 200 again.

    python bench/serve_soak.py --requests 10000 --concurrency 64                        # soak: serve_soak.json
    python bench/serve_soak.py --requests 4000 --concurrency 64 --kill Decoder@10 --kill ContextEncoder@30 \
        --output bench/results/serve_faults.json                                        # fault injection
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from common import RESULTS, command, hardware, pyplot
from serving import local_app_args, local_serve, post_with_retries, replica_processes, sample_texts

APP = "soak"


class HealthPoller(threading.Thread):
    """GET /health every `period` s with a `timeout`; records (t, status or 'timeout'/'error', latency)."""

    def __init__(self, url: str, t0: float, period: float = 1.0, timeout: float = 5.0):
        super().__init__(daemon=True)
        self.url, self.t0, self.period, self.timeout = url, t0, period, timeout
        self.polls: list[dict] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while not self._halt.is_set():
                started = time.monotonic()
                try:
                    status = http.get(self.url).status_code
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError:
                    status = "error"
                self.polls.append({"t": round(started - self.t0, 2), "status": status,
                                   "ms": round(1000 * (time.monotonic() - started), 1)})
                self._halt.wait(max(0.0, self.period - (time.monotonic() - started)))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def kill_on_cue(kills: list[tuple[str, float]], t0: float, events: list[dict], halt: threading.Event) -> None:
    """SIGKILL every replica process of each deployment at its time (seconds since the load started)."""
    for deployment, at in sorted(kills, key=lambda k: k[1]):
        if halt.wait(max(0.0, t0 + at - time.monotonic())):
            return
        procs = replica_processes(APP, deployment)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        events.append({"deployment": deployment, "t": round(time.monotonic() - t0, 2), "pids": [p.pid for p in procs]})
        print(f"    t={events[-1]['t']:.1f}s: SIGKILL {deployment} replica(s) {events[-1]['pids']}", flush=True)


async def soak(url: str, model: str, pool: list[str], reference: dict[str, np.ndarray], args, t0: float) -> list:
    """Closed-loop clients until --requests requests; one record per request."""
    rng = np.random.default_rng(0)
    records: list[dict] = []
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < args.requests:
            sent += 1
            texts = [pool[i] for i in rng.integers(0, len(pool), size=int(rng.integers(1, 9)))]
            started = time.monotonic()
            response, retries = await post_with_retries(http, url, {"model": model, "input": texts})
            record = {"t": round(started - t0, 3), "ms": 1000 * (time.monotonic() - started), "retries": retries}
            if isinstance(response, Exception):
                record["outcome"] = f"transport error {type(response).__name__}"
            elif response.status_code != 200:
                record["outcome"] = f"HTTP {response.status_code} {response.text[:200]}"
            else:
                got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
                same = got.shape == (len(texts), reference[texts[0]].shape[0]) and \
                    np.allclose(got, np.stack([reference[t] for t in texts]), atol=args.atol)
                record["outcome"] = ("held" if retries else "ok") if same else "mismatch"
            records.append(record)
            if len(records) % 1000 == 0:
                print(f"    {len(records)} requests, {time.monotonic() - t0:.0f}s", flush=True)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
    return records


def recovery(kills: list[dict], polls: list[dict]) -> list[dict]:
    """Per kill: how long /health was not 200 after it, and when it was 200 again (seconds after the kill)."""
    out = []
    for kill in kills:
        after = [p for p in polls if p["t"] >= kill["t"]]
        down = [p for p in after if p["status"] != 200]
        first_down = down[0]["t"] if down else None
        back = next((p["t"] for p in after if first_down is not None and p["t"] > first_down and p["status"] == 200),
                    None)
        out.append({**kill, "health_first_not_200_s": None if first_down is None else round(first_down - kill["t"], 2),
                    "health_200_again_s": None if back is None else round(back - kill["t"], 2),
                    "not_200_polls": len([p for p in down if back is None or p["t"] < back])})
    return out


def plot(records: list[dict], polls: list[dict], kills: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, (rate, health) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    end = max(r["t"] for r in records) + 1
    bins = np.arange(0, end + 1, 1.0)
    for outcome, color in (("ok", "tab:green"), ("held", "tab:orange"), ("failed", "tab:red")):
        ts = [r["t"] for r in records if (r["outcome"] == outcome) or
              (outcome == "failed" and r["outcome"] not in ("ok", "held"))]
        rate.hist(ts, bins=bins, color=color, alpha=0.7, label=f"{outcome} ({len(ts)})")
    rate.set_ylabel("requests started per second")
    rate.legend(fontsize=8)
    ok = [p for p in polls if p["status"] == 200]
    bad = [p for p in polls if p["status"] != 200]
    health.scatter([p["t"] for p in ok], [p["ms"] for p in ok], s=8, color="tab:green", label="/health 200")
    health.scatter([p["t"] for p in bad], [p["ms"] for p in bad], s=14, color="tab:red", marker="x",
                   label="/health not 200 (503 or timeout)")
    health.set(yscale="log", ylabel="/health latency (ms)", xlabel="seconds since the load started")
    health.legend(fontsize=8)
    for kill in kills:
        for ax in (rate, health):
            ax.axvline(kill["t"], color="black", linestyle="--")
        rate.text(kill["t"], rate.get_ylim()[1] * 0.9, f" kill -9 {kill['deployment']}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--stages", default="split", choices=["split", "fused"])
    parser.add_argument("--dtype", default="fp32", help="the app's and the reference's dtype")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pool", type=int, default=500, help="distinct sample texts the requests draw from")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--kill", action="append", default=[], metavar="DEPLOYMENT@SECONDS",
                        help="SIGKILL the deployment's replicas (ContextEncoder, Decoder, Model, API) at that time")
    parser.add_argument("--throughput-optimized", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "serve_soak.json")
    args = parser.parse_args()
    kills = [(k.partition("@")[0], float(k.partition("@")[2])) for k in args.kill]

    from ray import serve

    from causal2vec import Causal2Vec
    from causal2vec.serve.app import build_app

    pool = sample_texts()[:args.pool]
    reference = dict(zip(pool, Causal2Vec.from_pretrained(args.model, dtype=args.dtype).encode(pool)))
    config = local_app_args(args.model, args.stages, dtype=args.dtype)
    for stage in ("encoder", "decoder"):  # fixed replicas: a kill must be replaced by Serve, not hidden by scaling
        config[stage] = {**config[stage], "autoscaling_config": None, "num_replicas": 1}
    with local_serve(args.throughput_optimized) as base:
        serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
        url = f"{base}/{APP}"
        print(f"==> {args.requests} requests at concurrency {args.concurrency} against {args.model} "
              f"({args.stages}, {args.dtype}); kills: {kills or 'none'}", flush=True)
        t0 = time.monotonic()
        poller = HealthPoller(f"{url}/health", t0)
        poller.start()
        events: list[dict] = []
        halt = threading.Event()
        killer = threading.Thread(target=kill_on_cue, args=(kills, t0, events, halt), daemon=True)
        killer.start()
        records = asyncio.run(soak(f"{url}/v1/embeddings", args.model, pool, reference, args, t0))
        elapsed = time.monotonic() - t0
        halt.set()
        killer.join()
        time.sleep(2)
        poller.stop()
        serve.delete(APP)

    outcomes = Counter(r["outcome"] for r in records)
    failed = [r for r in records if r["outcome"] not in ("ok", "held")]
    ms = np.array([r["ms"] for r in records if r["outcome"] in ("ok", "held")])
    health = Counter(str(p["status"]) for p in poller.polls)
    result = {
        "command": command(), "hardware": hardware(), "model": args.model, "stages": args.stages,
        "dtype": args.dtype, "requests": len(records), "concurrency": args.concurrency,
        "ok": outcomes["ok"], "held": outcomes["held"], "failed": len(failed),
        "mismatched": outcomes["mismatch"], "failures": Counter(r["outcome"] for r in failed).most_common(10),
        "retries": int(sum(r["retries"] for r in records)), "seconds": round(elapsed, 1),
        "requests_per_s": round(len(records) / elapsed, 1),
        "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ("p50", "p95", "p99")},
        "health": {"polls": len(poller.polls), "by_status": dict(health),
                   "max_ms": max((p["ms"] for p in poller.polls), default=None)},
        "kills": recovery(events, poller.polls), "settings": vars(args) | {"output": str(args.output)},
        "health_polls": poller.polls,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    what = "fault injection" if kills else "soak"
    plot(records, poller.polls, result["kills"], args.output.with_suffix(".png"),
         f"Serve {what}: {len(records)} requests at concurrency {args.concurrency} ({args.model}, {args.stages}); "
         f"failed {len(failed)}, held {outcomes['held']}")
    print(f"\n{len(records)} requests in {elapsed:.0f}s ({result['requests_per_s']} req/s): ok {outcomes['ok']}, "
          f"held (after Retry-After) {outcomes['held']}, failed {len(failed)}, mismatched {outcomes['mismatch']}; "
          f"latency {result['latency_ms']}; /health {dict(health)} (max {result['health']['max_ms']} ms)")
    for kill in result["kills"]:
        print(f"  kill {kill['deployment']} at {kill['t']}s: /health not 200 after {kill['health_first_not_200_s']}s, "
              f"200 again after {kill['health_200_again_s']}s")
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
