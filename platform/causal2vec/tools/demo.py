"""The one-command demo (`make demo`): the whole platform on one machine, through the same doors a cluster uses.

    local Ray head (`ray start --head`)  ->  `ray job submit` jobs/train.py (Ray Train + DeepSpeed, checkpoints, export)
    ->  `ray job submit` jobs/embed_corpus.py (Ray Data -> LanceDB table, indexed)
    ->  `serve deploy` of a generated config (causal2vec.serve.app:build_app with the trained model + the table)
    ->  /v1/embeddings (the `openai` client) and /v1/search  ->  serve shutdown, head stopped, no process left

Nothing here is demo-only machinery: the jobs, the Serve application and its config format are the ones an operator
submits to a GPU cluster (docs/operators-guide.md); only the cluster is local. The head gets its own short
--temp-dir (Ray's Unix socket paths are length-capped), free ports for every service (several Ray instances can share
this machine) and token auth disabled (a throwaway cluster bound to 127.0.0.1); processes.py starts and stops it,
job_submit.py submits the jobs, demo_serving.py deploys and queries the app.

This module prints: it is the demo's console (the library proper logs). Everything it runs is also written under
the output directory: logs/ (full job logs), runs/ (checkpoints), model/ (the export), lancedb/ (the table),
serve.yaml (the deployed Serve config) and summary.json (what a test or a script reads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from causal2vec.errors import USAGE_ERROR, Causal2VecError
from causal2vec.tools import checkout
from causal2vec.tools.cluster.nodes import RayNode
from causal2vec.tools.demo_serving import SERVED_NAME, TABLE, query_app, wait_for_app, write_serve_config
from causal2vec.tools.job_submit import embed_echo, submit_job, train_echo
from causal2vec.tools.processes import ProcessError, free_port, ray_bin, run

# The default run: the pretrained MiniLM pair (`minilm-small`) fine-tuned for a few steps, so search answers mean
# something. `tiny=True`: the random-init tiny preset with a shortened run (what the tests use; ~2 minutes).
DEFAULT_TRAIN_CONFIG = "jobs/configs/demo.yaml"
TINY_TRAIN_CONFIG = "jobs/configs/tiny.yaml"
TINY_OVERRIDES = ["ray.name=demo", "optim.max_steps=6", "ray.report_every_steps=3", "ray.checkpoint_every_steps=3",
                  "data.dev.limit_queries=50", "data.dev.limit_corpus=300"]
EMBED_CONFIG = "jobs/configs/embed-tiny.yaml"  # stage resources that fit a 4-logical-CPU local head
OWNED = ("logs", "runs", "model", "lancedb", "data", "serve.yaml", "summary.json")  # what a rerun replaces


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


def run_demo(output_dir: str | Path = "demo_output", *, tiny: bool = False, train_overrides: list[str] | None = None,
             limit_docs: int | None = None, keep_serving: bool = False, num_cpus: int = 4,
             write: Callable[[str], None] = print) -> dict[str, Any]:
    """Train -> bulk-embed -> serve -> query on a local Ray head, then shut everything down.

    output_dir: where everything goes (the demo's own subdirectories in it are replaced on every run).
    tiny: the random-init `tiny` preset with a shortened run (a quick smoke run) instead of jobs/configs/demo.yaml.
    train_overrides: `section.key=value` overrides for jobs/train.py, applied after the demo's own.
    limit_docs: embed only the first N documents of the sample corpus (default: all 2,500).
    keep_serving: leave the app up after the queries until Ctrl-C.
    Returns the summary also written to <output_dir>/summary.json; raises ProcessError when a step fails (after
    shutting everything down).
    """
    import pyarrow.parquet as pq

    from causal2vec.model.devices import native_dtype_name
    from causal2vec.samples import CORPUS, QUERIES
    from causal2vec.train.config import load_config

    root = checkout()
    out = Path(output_dir).expanduser().resolve()
    console = Console(write)
    summary: dict[str, Any] = {"output_dir": str(out), "tiny": tiny, "ok": False}
    dtype = "fp32" if tiny else native_dtype_name("cpu")  # bf16 where the CPU has it: ~3x faster here
    config = TINY_TRAIN_CONFIG if tiny else DEFAULT_TRAIN_CONFIG
    sets = ([*TINY_OVERRIDES] if tiny else []) + [f"ray.storage_path={out / 'runs'}", f"output_dir={out / 'model'}",
                                                  *(train_overrides or [])]
    try:  # the job validates it again; a typo should not cost a cluster start first
        load_config(root / config, sets)
    except Causal2VecError as exc:
        raise Causal2VecError(f"--set: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = out / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    head = RayNode(num_cpus=num_cpus)
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
            train = submit_job(head, root, args, out / "logs" / "train.log", console, train_echo, exclude=out)
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
            embed = submit_job(head, root, args, out / "logs" / "embed.log", console, embed_echo(), exclude=out)
            from causal2vec.embed.job import format_summary

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
            run([ray_bin("serve"), "deploy", str(serve_yaml), f"--address={head.dashboard}"], root, "serve deploy")
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
                    run([ray_bin("serve"), "shutdown", "--yes", f"--address={head.dashboard}"], root,
                        "serve shutdown", timeout=120)
                    console.info("Serve shut down")
                except ProcessError as exc:
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


def main(argv: list[str] | None = None) -> int:
    """`python jobs/demo.py` (`make demo`): exit 0 when done, 2 on a usage error, 1 when a step failed, 130 when
    interrupted (everything shut down in every case)."""
    parser = argparse.ArgumentParser(prog="jobs/demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="the random-init tiny preset with a shortened run instead of jobs/configs/demo.yaml")
    parser.add_argument("--output-dir", default="demo_output", help="where everything goes (default demo_output)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config value, e.g. --set optim.max_steps=30")
    parser.add_argument("--limit-docs", type=int, default=None, metavar="N",
                        help="embed only the first N sample documents (default all 2,500)")
    parser.add_argument("--keep-serving", action="store_true", help="keep the service up after the queries, "
                                                                    "until Ctrl-C")
    args = parser.parse_args(argv)
    if args.limit_docs is not None and args.limit_docs < 1:
        parser.error("--limit-docs must be at least 1")

    from causal2vec.cli import quiet_third_party
    from causal2vec.ray_init import job_environment

    job_environment()
    quiet_third_party(verbose=False)
    # `kill`, a closed terminal or a CI timeout must still shut the cluster down: turn them into KeyboardInterrupt,
    # which run_demo handles like Ctrl-C (stops Serve and the head, then re-raises)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        run_demo(args.output_dir, tiny=args.tiny, train_overrides=args.overrides, limit_docs=args.limit_docs,
                 keep_serving=args.keep_serving, write=lambda line: print(line, flush=True))
    except Causal2VecError as exc:
        print(f"\ndemo: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except ProcessError as exc:
        print(f"\ndemo: a step failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted (everything was shut down)", file=sys.stderr)
        return 130
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
