"""`causal2vec serve`: the serving application on the connected Ray cluster (RAY_ADDRESS) or on a local one started
here, until interrupted. Its settings are ServeArgs: a Serve config file's application `args` (`--config
serve_configs/local.yaml`, whose host and port it also takes) or a YAML of those args, `--set a.b=value`, and one
flag per setting."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from causal2vec.config import add_flags, flag_values, load, read_config
from causal2vec.serve.config import ServeArgs

APP_NAME = "causal2vec"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a Serve config file (serve_configs/*.yaml: its first application's args, "
                                         "host and port) or a YAML file of the application's args")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set decoder.rows_per_pass=4")
    parser.add_argument("--host", help="the HTTP host (default: the config file's, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the HTTP port (default: the config file's, else 8000)")
    parser.add_argument("--name", default=APP_NAME, help=f"the Serve application's name (default {APP_NAME})")
    parser.add_argument("--route-prefix", default="/", help="where the API is mounted (default /)")
    add_flags(parser, ServeArgs)


def settings(args: argparse.Namespace) -> tuple[ServeArgs, dict[str, Any]]:
    """The application's arguments and HTTP options, from the config file, --set and the flags."""
    data = read_config(args.config)
    http = data.get("http_options") or {}
    if "applications" in data:  # a Serve config file: its first application
        data = (data["applications"] or [{}])[0].get("args") or {}
    app_args = load(ServeArgs, "serve args", data=data, sets=args.sets, overrides=flag_values(args))
    return app_args, {"host": args.host or http.get("host", "127.0.0.1"), "port": args.port or http.get("port", 8000)}


def serve_from_args(args: argparse.Namespace) -> None:
    """Start the application and serve until SIGINT / SIGTERM, then delete it."""
    from ray import serve

    from causal2vec.ray_init import ensure_ray
    from causal2vec.serve.app import build_app

    app_args, http = settings(args)
    app = build_app(app_args)  # a bad config fails here, before any cluster work
    ensure_ray()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options=http)
    serve.run(app, name=args.name, route_prefix=args.route_prefix)
    url = f"http://{http['host']}:{http['port']}{args.route_prefix.rstrip('/')}"
    print(f"serving {app_args.served_model_name!r} at {url}/v1 (/v1/embeddings, /v1/search, /v1/models, /health, "
          "/metrics); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        serve.delete(args.name)
        print(f"deleted the Serve application {args.name!r}", flush=True)
