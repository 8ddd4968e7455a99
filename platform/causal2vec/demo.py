"""The one-command demo (`make demo`): the whole platform on one machine, through the same doors a cluster uses.

    local Ray head (`ray start --head`)  ->  `ray job submit` jobs/train.py (Ray Train + DeepSpeed, checkpoints, export)
    ->  `ray job submit` jobs/embed_corpus.py (Ray Data -> LanceDB table, indexed)
    ->  `serve deploy` of a generated config (causal2vec.serve.app:build_app with the trained model + the table)
    ->  /v1/embeddings (the `openai` client) and /v1/search  ->  serve shutdown, head stopped, no process left

Nothing here is demo-only machinery: the jobs, the Serve application and its config format are the ones an operator
submits to a GPU cluster (docs/operators-guide.md); only the cluster is local. The head gets its own short
--temp-dir (Ray's Unix socket paths are length-capped), free ports for every service (several Ray instances can share
this machine) and token auth disabled (a throwaway cluster bound to 127.0.0.1). It is stopped by finding the
processes that belong to that temp dir and their children with psutil: `ray stop` would stop every Ray on the
machine.

This module prints: it is the demo's console (the library proper logs). Everything it runs is also written under
the output directory: logs/ (full job logs), runs/ (checkpoints), model/ (the export), lancedb/ (the table),
serve.yaml (the deployed Serve config) and summary.json (what a test or a script reads).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from causal2vec.errors import Causal2VecError

TABLE = "samples"
SERVED_NAME = "causal2vec-demo"
# The default run: the pretrained MiniLM pair (`minilm-small`) fine-tuned for a few steps, so search answers mean
# something. `tiny=True`: the random-init tiny preset with a shortened run (what the tests use; ~2 minutes).
DEFAULT_TRAIN_CONFIG = "jobs/configs/demo.yaml"
TINY_TRAIN_CONFIG = "jobs/configs/tiny.yaml"
TINY_OVERRIDES = ["ray.name=demo", "optim.max_steps=6", "ray.report_every_steps=3", "ray.checkpoint_every_steps=3",
                  "data.dev.limit_queries=50", "data.dev.limit_corpus=300"]
EMBED_CONFIG = "jobs/configs/embed-tiny.yaml"  # stage resources that fit a 4-logical-CPU local head
SERVE_TEMPLATE = "serve_configs/local.yaml"
OWNED = ("logs", "runs", "model", "lancedb", "data", "serve.yaml", "summary.json")  # what a rerun replaces


class DemoError(Causal2VecError):
    """A demo step failed; the message names the step and the log to read."""


def repo_root() -> Path:
    """The checkout the demo submits (`ray job submit --working-dir .` uploads it): jobs/, configs, samples."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "jobs" / "train.py").is_file():
        raise DemoError(f"the demo runs from a source checkout (jobs/train.py next to platform/); {root} is not one")
    return root


# -- the console -----------------------------------------------------------------------------------------------------
class Console:
    """`==> step` headers with timings, indented detail lines, and the timings kept for the summary."""

    def __init__(self, write: Callable[[str], None] = print):
        self.write = write
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()

    def info(self, text: str = "") -> None:
        for line in str(text).splitlines() or [""]:
            self.write(f"    {line}" if line else "")

    @contextmanager
    def step(self, key: str, title: str) -> Iterator[None]:
        self.write(f"\n==> {title}")
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[key] = round(time.monotonic() - t0, 1)
            self.write(f"    [{key}: {self.timings[key]:.1f}s, {time.monotonic() - self.started:.0f}s so far]")


# -- a local head ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every ray/serve command and, through `ray start`, of the cluster's jobs and replicas:
    the virtualenv's bin first on PATH (a job's `python` is this one), auth off, no usage stats, offline HF."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)  # every command here names its cluster explicitly
    return {**env, **(extra or {})}


def ray_bin(name: str = "ray") -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


@dataclass
class LocalHead:
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
            raise DemoError(f"`ray start --head` failed:\n{(out.stdout + out.stderr)[-3000:]}")
        return " ".join(cmd)

    def processes(self) -> list:
        """This cluster's processes: those naming its temp dir, and all their descendants (workers and agents
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
        """Terminate every process of this cluster, kill what remains after `timeout` (gcs_server, the raylet and
        some agents outwait a SIGTERM for tens of seconds; nothing of a finished demo needs a graceful exit) and
        check none is alive."""
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
        """Processes of this cluster still alive: any pid seen in it, or anything naming its temp dir."""
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


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# -- jobs ------------------------------------------------------------------------------------------------------------
_TRAIN_REPORT = re.compile(r"'step': (\d+).*?'loss': ([0-9.]+).*?'samples_per_s': ([0-9.]+)")
_COMMIT = re.compile(r"committed (\d+) rows to")


def submit_job(head: LocalHead, root: Path, args: list[str], log_path: Path, console: Console,
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
    result = next((ln.removeprefix("RESULT_JSON ") for ln in reversed(lines) if ln.startswith("RESULT_JSON ")), None)
    if proc.returncode != 0 or result is None:
        errors = list(dict.fromkeys(_plain(ln) for ln in lines if ": error:" in ln))  # the job's own message
        tail = "\n".join(_plain(ln) for ln in lines[-15:])
        raise DemoError(f"the job `python {' '.join(args[:1])}` failed (exit {proc.returncode}); full log: "
                        f"{log_path}\n" + ("\n".join(errors) if errors else tail))
    return json.loads(result)


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


def _train_echo(line: str) -> str | None:
    if line.startswith("data "):
        return line
    if "Reporting training result" in line and "from rank 0" in line:
        m = _TRAIN_REPORT.search(line)
        if m:
            dev = re.search(r"'dev_ndcg_at_10': ([0-9.]+)", line)
            return (f"step {int(m[1]):>4}  loss {float(m[2]):.4f}  {float(m[3]):6.1f} samples/s"
                    + (f"  dev nDCG@10 {float(dev[1]):.4f}" if dev else ""))
    return None


def _embed_echo() -> Callable[[str], str | None]:
    total = [0]

    def echo(line: str) -> str | None:
        m = _COMMIT.search(line)
        if m:
            total[0] += int(m[1])
            return f"committed {int(m[1])} rows to LanceDB ({total[0]} so far)"
        return None

    return echo


# -- serve -----------------------------------------------------------------------------------------------------------
def write_serve_config(root: Path, path: Path, *, model: str, lancedb_uri: str, port: int, dtype: str) -> dict:
    """serve_configs/local.yaml with this run's model, table directory, port and dtype (what `serve deploy` reads)."""
    import yaml

    config = yaml.safe_load((root / SERVE_TEMPLATE).read_text())
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    (app,) = config["applications"]
    app["args"].update({"model": model, "served_model_name": SERVED_NAME, "device": "cpu", "dtype": dtype,
                        "lancedb_uri": lancedb_uri, "api_keys_env": None})  # a local, loopback-only demo
    from causal2vec.serve.app import parse_args

    parse_args(app["args"])  # the same check build_app makes, before the cluster sees it
    header = (f"# Generated by the demo from {SERVE_TEMPLATE}: the trained model and its LanceDB table.\n"
              f"#   serve deploy {path} --address <dashboard>\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, width=120))
    return config


def wait_for_app(head: LocalHead, url: str, timeout: float = 300) -> None:
    """Until the app is RUNNING (Serve's REST API on the dashboard) and /health answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    status, message = "?", ""
    while time.monotonic() < deadline:
        try:
            apps = httpx.get(f"{head.dashboard}/api/serve/applications/", timeout=10).json().get("applications", {})
            app = apps.get("causal2vec") or {}
            status, message = app.get("status", "?"), app.get("message", "")
            if status == "DEPLOY_FAILED":
                raise DemoError(f"the Serve application failed to deploy: {message}")
            if status == "RUNNING" and httpx.get(f"{url}/health", timeout=10).status_code == 200:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    raise DemoError(f"the Serve application is not ready after {timeout:.0f}s (status {status}): {message}")


def query_app(url: str, corpus: list[dict], queries: list[dict], console: Console, tiny: bool = False
              ) -> dict[str, Any]:
    """The two routes, as a client would call them: /v1/embeddings (openai client) and /v1/search (httpx)."""
    import httpx
    import numpy as np

    by_id = {d["id"]: d for d in corpus}
    sample = next(q for q in queries if q["doc_id"] in by_id)
    doc = by_id[sample["doc_id"]]
    other = next(d for d in corpus if d["id"] != doc["id"])
    out: dict[str, Any] = {"doc_id": doc["id"], "query": sample["query"]}

    try:
        from openai import OpenAI
    except ImportError:  # not installed: the same request over plain HTTP
        OpenAI = None  # noqa: N806
    texts = [doc["text"], other["text"]]
    if OpenAI is not None:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused-locally", max_retries=0, timeout=120)
        docs = client.embeddings.create(model=SERVED_NAME, input=texts)
        query = client.embeddings.create(model=SERVED_NAME, input=[sample["query"]], extra_body={"task": "query"})
        vectors = [d.embedding for d in docs.data] + [query.data[0].embedding]
        tokens, via = docs.usage.prompt_tokens, "openai client"
    else:
        docs = _post(httpx, f"{url}/v1/embeddings", {"model": SERVED_NAME, "input": texts})
        query = _post(httpx, f"{url}/v1/embeddings", {"model": SERVED_NAME, "input": [sample["query"]],
                                                       "task": "query"})
        vectors = [d["embedding"] for d in docs["data"]] + [query["data"][0]["embedding"]]
        tokens, via = docs["usage"]["prompt_tokens"], "httpx"
    v = np.asarray(vectors, dtype=np.float32)
    cos = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    out.update(embedding_dim=int(v.shape[1]), via=via, cosine_query_doc=float(cos[2, 0]),
               cosine_query_other=float(cos[2, 1]))
    console.info(f"POST /v1/embeddings ({via}): 2 documents ({tokens} tokens) + 1 query with task=query")
    console.info(f"  dim {v.shape[1]}, doc[{doc['id']}] = [{', '.join(f'{x:+.3f}' for x in v[0, :5])}, ...], "
                 f"|v| = {np.linalg.norm(v[0]):.3f}")
    console.info(f"  cosine(query, its document {doc['id']!r}) = {cos[2, 0]:+.3f}   "
                 f"cosine(query, another document {other['id']!r}) = {cos[2, 1]:+.3f}")

    def search(body: dict) -> list[dict]:
        return _post(httpx, f"{url}/v1/search", {"table": TABLE, **body})["data"]

    hits = search({"query": doc["text"], "k": 3})
    out["self_search"] = [{"id": h["id"], "distance": h.get("_distance")} for h in hits]
    console.info(f"\nPOST /v1/search with the text of document {doc['id']!r} (k=3):")
    _show_hits(console, hits, doc["id"])
    console.info("  -> the document itself ranks first" if hits and hits[0]["id"] == doc["id"]
                 else "  -> the document did NOT rank first")

    hits = search({"query": sample["query"], "k": 5, "task": "query"})
    out["query_search"] = [{"id": h["id"], "distance": h.get("_distance")} for h in hits]
    console.info(f"\nPOST /v1/search with the sample query {sample['query']!r} (task=query, k=5; judged answer "
                 f"{doc['id']!r}):")
    _show_hits(console, hits, doc["id"])

    judged = [q for q in queries if q["doc_id"] in by_id][:30]
    ranks = []
    for q in judged:
        ids = [h["id"] for h in search({"query": q["query"], "k": 10, "task": "query"})]
        ranks.append(ids.index(q["doc_id"]) + 1 if q["doc_id"] in ids else None)
    found = [r for r in ranks if r]
    out["queries_top10"] = {"queries": len(ranks), "found": len(found), "top1": sum(r == 1 for r in found),
                            "mrr_at_10": sum(1 / r for r in found) / max(len(ranks), 1)}
    console.info(f"\n{len(ranks)} sample queries through /v1/search: the judged package is in the top 10 for "
                 f"{len(found)}, first for {out['queries_top10']['top1']} (MRR@10 "
                 f"{out['queries_top10']['mrr_at_10']:.3f})")
    if tiny:
        console.info("(the tiny preset is random-init and barely trained: its neighbours are not meaningful yet, it "
                     "exercises the code; the default demo fine-tunes the pretrained minilm-small)")
    return out


def _post(httpx, url: str, body: dict) -> dict:
    response = httpx.post(url, json=body, timeout=120)
    if response.status_code != 200:
        raise DemoError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def _show_hits(console: Console, hits: list[dict], mark: str) -> None:
    for i, h in enumerate(hits, 1):
        score = f"distance {h['_distance']:.4f}" if "_distance" in h else ""
        text = " ".join(h["text"].split())
        console.info(f"  {i}. {'*' if h['id'] == mark else ' '} {h['id']:<26} {score}  {text[:70]!r}")


# -- the demo --------------------------------------------------------------------------------------------------------
def run_demo(output_dir: str | Path = "demo_output", *, tiny: bool = False, train_overrides: list[str] | None = None,
             limit_docs: int | None = None, keep_serving: bool = False, num_cpus: int = 4,
             write: Callable[[str], None] = print) -> dict[str, Any]:
    """Train -> bulk-embed -> serve -> query on a local Ray head, then shut everything down.

    output_dir: where everything goes (the demo's own subdirectories in it are replaced on every run).
    tiny: the random-init `tiny` preset with a shortened run (a quick smoke run) instead of jobs/configs/demo.yaml.
    train_overrides: `section.key=value` overrides for jobs/train.py, applied after the demo's own.
    limit_docs: embed only the first N documents of the sample corpus (default: all 2,500).
    keep_serving: leave the app up after the queries until Ctrl-C.
    Returns the summary also written to <output_dir>/summary.json; raises DemoError when a step fails (after
    shutting everything down).
    """
    import pyarrow.parquet as pq

    from causal2vec.samples import CORPUS, QUERIES
    from causal2vec.train.config import load_config

    root = repo_root()
    out = Path(output_dir).expanduser().resolve()
    console = Console(write)
    summary: dict[str, Any] = {"output_dir": str(out), "tiny": tiny, "ok": False}
    dtype = "fp32" if tiny or not _native_bf16() else "bf16"  # bf16 where the CPU has it: ~3x faster here
    config = TINY_TRAIN_CONFIG if tiny else DEFAULT_TRAIN_CONFIG
    sets = ([*TINY_OVERRIDES] if tiny else []) + [f"ray.storage_path={out / 'runs'}", f"output_dir={out / 'model'}",
                                                  *(train_overrides or [])]
    try:  # the job validates it again; a typo should not cost a cluster start first
        load_config(root / config, sets)
    except Causal2VecError as exc:
        raise DemoError(f"--set: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = out / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    head = LocalHead(num_cpus=num_cpus)
    served = False
    failure: BaseException | None = None
    try:
        with console.step("ray", f"starting a local Ray head ({num_cpus} logical CPUs on {os.cpu_count()} cores, "
                                 "its own temp dir and ports)"):
            head.start()
            console.info(f"dashboard {head.dashboard}   temp dir {head.temp_dir}")
            summary["ray"] = {"dashboard": head.dashboard, "temp_dir": str(head.temp_dir)}

        with console.step("train", f"training {'the tiny preset' if tiny else 'minilm-small'} on the bundled sample "
                                   f"pairs: ray job submit jobs/train.py ({config})"):
            args = ["jobs/train.py", "--config", config]
            for item in sets:
                args += ["--set", item]
            train = submit_job(head, root, args, out / "logs" / "train.log", console, _train_echo, exclude=out)
            final = train.get("final") or {}
            console.info(f"final step {final.get('step')}: loss {final.get('loss', float('nan')):.4f}"
                         + (f", dev nDCG@10 {final['dev_ndcg_at_10']:.4f}" if "dev_ndcg_at_10" in final else ""))
            console.info(f"checkpoint {train.get('checkpoint')}\nexported model {train.get('export_dir')}")
            console.info(f"full log {out / 'logs' / 'train.log'}")
            summary["train"] = train

        corpus = pq.read_table(CORPUS)
        if limit_docs:
            corpus = corpus.slice(0, limit_docs)
            (out / "data").mkdir(parents=True, exist_ok=True)
            source = out / "data" / f"corpus-{corpus.num_rows}.parquet"
            pq.write_table(corpus, source)
        else:
            source = CORPUS
        model_dir = train["export_dir"]
        spec = f"{out / 'lancedb'}::{TABLE}"
        with console.step("embed", f"bulk-embedding {corpus.num_rows} sample documents into LanceDB with the trained "
                                   f"model ({dtype}): ray job submit jobs/embed_corpus.py"):
            args = ["jobs/embed_corpus.py", "--config", EMBED_CONFIG, "--model", model_dir, "--input", str(source),
                    "--table", spec, "--dtype", dtype, "--overwrite"]
            embed = submit_job(head, root, args, out / "logs" / "embed.log", console, _embed_echo(), exclude=out)
            from causal2vec.embed.pipeline import format_summary

            console.info(format_summary(embed))
            console.info(f"full log {out / 'logs' / 'embed.log'}")
            summary["embed"] = embed

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve_yaml = out / "serve.yaml"
        with console.step("serve", "starting the Serve application (encoder -> decoder deployments behind the "
                                   "OpenAI-compatible ingress): serve deploy"):
            write_serve_config(root, serve_yaml, model=model_dir, lancedb_uri=str(out / "lancedb"), port=port,
                               dtype=dtype)
            console.info(f"$ serve deploy {serve_yaml} --address {head.dashboard}")
            served = True
            _run([ray_bin("serve"), "deploy", str(serve_yaml), f"--address={head.dashboard}"], root, "serve deploy")
            wait_for_app(head, url)
            console.info(f"serving {SERVED_NAME!r} at {url}/v1 (routes /v1/embeddings, /v1/search, /v1/models, "
                         "/health, /metrics)")
            summary["serve"] = {"url": url, "config": str(serve_yaml), "model": SERVED_NAME}

        with console.step("query", "querying the service"):
            docs = corpus.select(["id", "text"]).to_pylist()
            queries = pq.read_table(QUERIES).to_pylist()
            summary["queries"] = query_app(url, docs, queries, console, tiny)

        if keep_serving:
            console.info(f"\nthe service stays up: try\n  curl -s {url}/v1/embeddings -H 'Content-Type: "
                         f"application/json' -d '{{\"model\": \"{SERVED_NAME}\", \"input\": \"a text editor\"}}'\n"
                         "Ctrl-C to shut everything down")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    except BaseException as exc:  # noqa: BLE001 - shut down first, then re-raise
        failure = exc
    finally:
        with console.step("shutdown", "shutting down: serve shutdown, then the head's processes"):
            if served:
                try:
                    _run([ray_bin("serve"), "shutdown", "--yes", f"--address={head.dashboard}"], root,
                         "serve shutdown", timeout=120)
                    console.info("Serve shut down")
                except DemoError as exc:
                    console.info(f"serve shutdown failed ({exc}); stopping the processes anyway")
            cleanup = head.stop()
            summary["cleanup"] = cleanup
            if cleanup["left"]:
                console.info(f"WARNING: {len(cleanup['left'])} process(es) of this cluster are still alive: "
                             f"{cleanup['left']}")
            else:
                console.info(f"stopped {cleanup['stopped']} processes; psutil finds none of the {cleanup['seen']} "
                             f"processes this cluster ran still alive, and none naming {cleanup['temp_dir']}: no "
                             "Ray process left behind")
    summary["timings"] = console.timings
    summary["wall_seconds"] = round(time.monotonic() - console.started, 1)
    summary["ok"] = failure is None and not summary["cleanup"]["left"]
    if failure is not None:
        summary["error"] = f"{type(failure).__name__}: {failure}"
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if failure is not None:
        raise failure
    console.write(f"\n==> done in {summary['wall_seconds']:.0f}s ("
                  + ", ".join(f"{k} {v:.0f}s" for k, v in console.timings.items())
                  + f"); everything is under {out}")
    return summary


def _run(cmd: list[str], root: Path, what: str, timeout: float = 300) -> str:
    out = subprocess.run(cmd, cwd=root, env=ray_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise DemoError(f"`{what}` failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout


def _native_bf16() -> bool:
    try:
        from causal2vec.model.devices import cpu_has_native_bf16

        return cpu_has_native_bf16()
    except ImportError:
        return False


__all__ = ["run_demo", "DemoError", "LocalHead", "write_serve_config", "repo_root"]
