"""Serving under load: loopback HTTP against the Serve app, compared with in-process `model.encode`.

For each model: time `model.encode` in this process (same texts and dtype; the fastest of --baseline-batches; wall
time and CPU time), then for each `--stages` mode start the app from serve_configs/local.yaml's args (autoscaling
delays shortened so a short run shows scaling), and for each request shape (texts per request) and each
concurrency run closed-loop clients (each sends a request, waits for the answer, sends the next; first --warmup
seconds unmeasured, so autoscaling settles) until --requests requests or --duration seconds, recording throughput
and latency percentiles and the CPU every process spent (by role: proxy, ingress, each model deployment, controller,
this load generator, other). A background thread samples the replica counts with serve.status() every second,
through the load and a cool-down, to show autoscaling add replicas under load and remove them after.

saturation ratio = the best served texts/s over the concurrencies / in-process texts/s (targets: >= 0.8 for one
text per request, >= 0.9 for 8). Serve overhead per text = the CPU of the proxy, controller and every replica per
text served, minus the in-process CPU per text of `model.encode` (targets for tiny: <= 12 ms for one text per
request, <= 5 ms for 8). The proxy's and the ingress's per-request costs are shared by a request's texts, and the
ingress merges concurrent requests into one call per model stage. Clients ask for base64 answers, as the openai
client does. The load generator runs on the same cores as the server, so on a 2-core machine it takes a share of the
CPU the server needs. `--throughput-optimized` starts the cluster in Serve's throughput-optimized mode.

    python bench/serve_load.py --models tiny minilm-small smollm2 --stages split fused --concurrency 1 8 32 \
        --texts-per-request 1 8 --requests 2000 --duration 15 --cooldown 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from common import RESULTS, command, hardware, pyplot
from serving import LOCAL_CONFIG, SAMPLE_TEXTS, local_app_args, local_serve, sample_texts

STAGES = ("API", "ContextEncoder", "Decoder", "Model")
SERVE_ROLES = ("proxy", "controller", *STAGES)  # the CPU that serving costs (not the load generator, not "other")


def app_args(model: str, stages: str, base: Path, args: argparse.Namespace) -> dict:
    """serve_configs/local.yaml's args for `model` and `stages`, with autoscaling that reacts within a short run."""
    app = local_app_args(model, stages, base)
    for stage in ("encoder", "decoder"):
        if args.rows_per_pass:
            app[stage]["rows_per_pass"] = args.rows_per_pass
        if args.torch_threads:
            app[stage]["torch_threads"] = args.torch_threads
        if args.pass_cost is not None:
            app[stage]["pass_cost"] = args.pass_cost if args.pass_cost >= 0 else None
        app[stage]["autoscaling_config"] = {
            "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing,
            "upscale_delay_s": args.upscale_delay, "downscale_delay_s": args.downscale_delay,
            "look_back_period_s": args.look_back}
    if args.max_calls_in_flight:
        app["ingress"]["max_calls_in_flight"] = args.max_calls_in_flight
    return app


def in_process(model_name: str, texts: list[str], batch_size: int, dtype: str, repeats: int = 2) -> dict:
    """`model.encode` throughput in this process (all cores), best of `repeats` after a warm-up, and its CPU time
    per text (every thread's)."""
    from causal2vec import Causal2Vec

    model = Causal2Vec.from_pretrained(model_name, device="cpu", dtype=None if dtype == "auto" else dtype)
    model.encode(texts[:batch_size], batch_size=batch_size)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        model.encode(texts, batch_size=batch_size)
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return {"texts": len(texts), "batch_size": batch_size, "dtype": dtype, "seconds": best,
            "texts_per_s": len(texts) / best, "cpu_ms_per_text": 1000 * cpu / len(texts)}


_LAST_SEEN: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds when last seen)
_LAST_SEEN_LOCK = threading.Lock()


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds used so far by each process on this machine, summed by role: a Serve deployment's replicas,
    the proxy, the controller, this load generator, and everything else (Ray's own daemons, the OS). A process that
    has exited (a replica removed by autoscaling) counts with its CPU when last seen: the sampler thread looks every
    second, so at most a second of a dying replica's CPU is missed."""
    with _LAST_SEEN_LOCK:
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            title = " ".join(proc.info["cmdline"] or [])
            replica = re.match(r"ray::ServeReplica:[^:]+:(\w+)", title)
            role = (replica.group(1) if replica else "proxy" if title.startswith("ray::ProxyActor")
                    else "controller" if title.startswith("ray::ServeController")
                    else "load generator" if proc.info["pid"] == os.getpid() else "other")
            _LAST_SEEN[proc.info["pid"]] = (role, times.user + times.system)
        totals: dict[str, float] = {}
        for role, seconds in _LAST_SEEN.values():
            totals[role] = totals.get(role, 0.0) + seconds
    return totals


class ReplicaSampler(threading.Thread):
    """Replica counts per deployment, every `period` seconds, tagged with the current phase."""

    def __init__(self, app: str, period: float = 1.0):
        super().__init__(daemon=True)
        self.app, self.period, self.phase = app, period, "start"
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self._halt.is_set():
            try:
                deployments = serve.status().applications[self.app].deployments
                counts = {name: int(sum(n for state, n in d.replica_states.items() if str(state).endswith("RUNNING")))
                          for name, d in deployments.items()}
                self.samples.append({"t": round(time.monotonic() - self.t0, 2), "phase": self.phase, **counts})
                cpu_seconds_by_role()  # keeps the CPU of replicas that autoscaling removes
            except Exception as exc:  # noqa: BLE001 - a missed sample is not worth failing the bench
                print(f"    (replica sample failed: {exc})", file=sys.stderr)
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


async def load(url: str, model: str, texts: list[str], concurrency: int, per_request: int, max_requests: int,
               duration: float, seed: int) -> dict:
    """Closed-loop clients; returns throughput and latency percentiles (ms)."""
    import httpx

    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.monotonic() + duration

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, failures
        while sent < max_requests and time.monotonic() < deadline:
            sent += 1
            batch = [texts[i] for i in rng.integers(0, len(texts), size=per_request)]
            t0 = time.perf_counter()
            # base64, as the openai client asks by default: JSON floats cost client and server more than the rest
            response = await http.post(url, json={"model": model, "input": batch, "encoding_format": "base64"})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "failures": failures,
            "texts_per_request": per_request, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "texts_per_s": len(latencies) * per_request / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def run_model(model: str, stages: str, texts: list[str], args: argparse.Namespace, base: str,
              baseline: dict) -> dict:
    from ray import serve

    from causal2vec.serve.app import build_app

    config = app_args(model, stages, Path(args.config), args)
    print(f"==> {model}, stages {stages}", flush=True)
    name = f"bench-{model}-{stages}"
    serve.run(build_app(config), name=name, route_prefix=f"/{name}")
    url = f"{base}/{name}/v1/embeddings"
    sampler = ReplicaSampler(name)
    sampler.start()
    asyncio.run(load(url, model, texts, 4, 1, 20, 30, seed=0))  # warm-up
    runs = []
    for per_request in args.texts_per_request:
        for c in args.concurrency:
            if args.warmup:  # the same load first, unmeasured, so autoscaling settles (and replica starts are
                sampler.phase = f"warm-up {per_request}x c={c}"  # not counted as the phase's CPU)
                asyncio.run(load(url, model, texts, c, per_request, 10**9, args.warmup, seed=1000 + c))
            sampler.phase = f"load {per_request}x c={c}"
            cpu_before = cpu_seconds_by_role()
            result = asyncio.run(load(url, model, texts, c, per_request, args.requests, args.duration, seed=c))
            cpu_after = cpu_seconds_by_role()
            # where the machine's CPU went during the phase (replicas that exited in it are missing)
            result["cpu_ms_per_request"] = {role: 1000 * (cpu_after[role] - cpu_before.get(role, 0.0))
                                            / max(result["requests"], 1) for role in sorted(cpu_after)}
            served = max(result["requests"] * per_request, 1)
            serve_ms = sum(ms for role, ms in result["cpu_ms_per_request"].items() if role in SERVE_ROLES) \
                * result["requests"] / served
            result["serve_cpu_ms_per_text"] = serve_ms
            result["overhead_cpu_ms_per_text"] = serve_ms - baseline["cpu_ms_per_text"]
            runs.append(result)
            cpu = ", ".join(f"{role} {ms:.1f}" for role, ms in result["cpu_ms_per_request"].items())
            print(f"    {per_request} text(s)/request c={c:<3} {result['texts_per_s']:8.1f} texts/s  "
                  f"p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                  f"failures {result['failures']}\n      CPU ms per request: {cpu}\n      Serve CPU per text "
                  f"{serve_ms:.1f} ms = forward {baseline['cpu_ms_per_text']:.1f} + overhead "
                  f"{result['overhead_cpu_ms_per_text']:.1f}", flush=True)
    sampler.phase = "cool-down"
    print(f"    cool-down {args.cooldown:.0f}s (watching replicas scale down)", flush=True)
    time.sleep(args.cooldown)
    sampler.stop()
    serve.delete(name)
    saturation = {}
    for per_request in args.texts_per_request:
        shape = [r for r in runs if r["texts_per_request"] == per_request]
        peak = max(shape, key=lambda r: r["texts_per_s"])
        saturation[per_request] = {"concurrency": peak["concurrency"], "texts_per_s": peak["texts_per_s"],
                                   "ratio": peak["texts_per_s"] / baseline["texts_per_s"],
                                   "overhead_cpu_ms_per_text": peak["overhead_cpu_ms_per_text"]}
    under_load = [s for s in sampler.samples if s["phase"].startswith("load")]
    summary = {
        "model": model, "stages": stages, "in_process": baseline, "serve": runs, "app_args": config,
        "saturation": saturation,
        "replicas": sampler.samples,
        "max_replicas_under_load": {d: max((s.get(d, 0) for s in under_load), default=0) for d in STAGES},
        "replicas_at_end": {d: sampler.samples[-1].get(d, 0) for d in STAGES} if sampler.samples else {},
    }
    ratios = ", ".join(f"{n} text(s)/request {s['ratio']:.2f} (overhead {s['overhead_cpu_ms_per_text']:.1f} ms/text)"
                       for n, s in saturation.items())
    print(f"    saturation ratio {ratios}; replicas max under load "
          f"{summary['max_replicas_under_load']}, at the end {summary['replicas_at_end']}", flush=True)
    return summary


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    top = max((s.get(d, 0) for r in results.values() for s in r["replicas"] for d in STAGES), default=1)
    markers = "os^vD"
    for row, (model, r) in enumerate(results.items()):
        color = None
        for shape, per_request in enumerate(dict.fromkeys(x["texts_per_request"] for x in r["serve"])):
            runs = [x for x in r["serve"] if x["texts_per_request"] == per_request]
            cs, marker = [x["concurrency"] for x in runs], markers[shape % len(markers)]
            line, = axes[0].plot(cs, [x["texts_per_s"] for x in runs], marker=marker, color=color,
                                 label=f"{model} (Serve, {per_request} text(s)/request)")
            color = line.get_color()
            for q, style in (("p50_ms", "-"), ("p95_ms", "--")):
                axes[1].plot(cs, [x[q] for x in runs], linestyle=style, marker=marker, color=color,
                             label=f"{model} {per_request}x {q[:3]}")
        axes[0].axhline(r["in_process"]["texts_per_s"], color=color, linestyle="--",
                        label=f"{model} (in-process encode)")
        ts = [s["t"] for s in r["replicas"]]
        for phase in dict.fromkeys(s["phase"] for s in r["replicas"] if s["phase"].startswith("load")):
            span = [s["t"] for s in r["replicas"] if s["phase"] == phase]
            axes[2].axvspan(span[0], span[-1], color=color, alpha=0.08)
            axes[2].text(span[0], top + 0.3 - 0.12 * row, phase.removeprefix("load "), fontsize=6, color=color)
        for stage, style in (("ContextEncoder", "--"), ("Decoder", "-"), ("Model", ":")):
            if not any(stage in s for s in r["replicas"]):
                continue
            axes[2].step(ts, [s.get(stage, 0) for s in r["replicas"]], where="post", linestyle=style,
                         color=color, label=f"{model} {stage}")
    concurrency = sorted({x["concurrency"] for r in results.values() for x in r["serve"]})
    axes[0].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="texts/s", title="throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="ms", title="latency")
    for ax in axes[:2]:
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.minorticks_off()
    axes[2].set(xlabel="seconds since the app started", ylabel="running replicas", ylim=(0, top + 0.5),
                yticks=range(top + 1), title="autoscaling (load phases, then cool-down)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("Causal2Vec on Ray Serve: loopback HTTP load vs in-process model.encode")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "minilm-small"])
    parser.add_argument("--stages", nargs="+", default=["split", "fused"], choices=["split", "fused"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (at most)")
    parser.add_argument("--duration", type=float, default=30, help="seconds per concurrency level (at most)")
    parser.add_argument("--texts-per-request", nargs="+", type=int, default=[1, 8],
                        help="request shapes: texts per request, each run at every concurrency")
    parser.add_argument("--texts", default=str(SAMPLE_TEXTS))
    parser.add_argument("--baseline-texts", type=int, default=512, help="texts timed for the in-process baseline")
    parser.add_argument("--config", default=str(LOCAL_CONFIG), help="the app's base args")
    parser.add_argument("--rows-per-pass", type=int, help="override the config's rows per forward pass")
    parser.add_argument("--torch-threads", type=int, help="override the model replicas' torch threads")
    parser.add_argument("--pass-cost", type=int, help="override the config's pass_cost (-1: none, full passes)")
    parser.add_argument("--baseline-batches", type=int, nargs="+", default=[2, 4, 8, 32],
                        help="in-process batch sizes tried; the fastest is the baseline")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--max-calls-in-flight", type=int, help="override the ingress's cap on outstanding calls")
    parser.add_argument("--target-ongoing", type=float, default=2, help="autoscaling target per replica")
    parser.add_argument("--upscale-delay", type=float, default=2)
    parser.add_argument("--downscale-delay", type=float, default=10)
    parser.add_argument("--look-back", type=float, default=12)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before each measured "
                                                                 "phase (autoscaling settles; 0: none)")
    parser.add_argument("--cooldown", type=float, default=60, help="idle seconds after the load, to see scale-down")
    parser.add_argument("--throughput-optimized", action="store_true",
                        help="start the local cluster with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Serve's own mode: "
                             "user code and router on the replica's event loop, gRPC between replicas)")
    parser.add_argument("--output", default=str(RESULTS / "serve_load.json"))
    args = parser.parse_args()

    texts = sample_texts(Path(args.texts))
    results = {}
    with local_serve(args.throughput_optimized) as base:
        for model in args.models:
            config = app_args(model, "split", Path(args.config), args)
            sizes = args.baseline_batches
            print(f"==> {model}: in-process model.encode, the best of batch {sizes}, {config['dtype']}", flush=True)
            baseline = max((in_process(model, texts[:args.baseline_texts], size, config["dtype"]) for size in sizes),
                           key=lambda b: b["texts_per_s"])
            print(f"    {baseline['texts_per_s']:.1f} texts/s (batch {baseline['batch_size']}), "
                  f"{baseline['cpu_ms_per_text']:.1f} CPU ms/text", flush=True)
            for stages in args.stages:
                results[f"{model} {stages}"] = run_model(model, stages, texts, args, base, baseline)
    report = {"command": command(), "hardware": hardware(), "texts": args.texts, "settings": vars(args),
              "results": results}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    print("\n| model, stages | texts/request | in-process texts/s | "
          + " | ".join(f"c={c} texts/s (p50 / p95 ms)" for c in args.concurrency)
          + " | ratio | Serve overhead CPU ms/text | model replicas max / end |")
    print("|---" * (6 + len(args.concurrency)) + "|")
    for label, r in results.items():
        model_stage = "Model" if r["stages"] == "fused" else "Decoder"
        for per_request, peak in r["saturation"].items():
            cells = " | ".join(f"{x['texts_per_s']:.1f} ({x['p50_ms']:.0f} / {x['p95_ms']:.0f})"
                               for x in r["serve"] if x["texts_per_request"] == per_request)
            print(f"| {label} | {per_request} | {r['in_process']['texts_per_s']:.1f} | {cells} | {peak['ratio']:.2f} "
                  f"| {peak['overhead_cpu_ms_per_text']:.1f} | {r['max_replicas_under_load'][model_stage]} / "
                  f"{r['replicas_at_end'].get(model_stage)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
