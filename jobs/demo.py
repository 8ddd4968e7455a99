"""The README's main job: train -> bulk-embed -> serve -> query, on a local Ray head, then shut it all down.

    python jobs/demo.py                      # minilm-small fine-tuned briefly (jobs/configs/demo.yaml); ~5-10 min
    python jobs/demo.py --tiny               # the random-init tiny preset with a shortened run (a smoke test)
    python jobs/demo.py --set optim.max_steps=30 --limit-docs 1000 --output-dir /tmp/demo --keep-serving

Starts `ray start --head` (own temp dir and ports), submits jobs/train.py and jobs/embed_corpus.py with
`ray job submit --working-dir .`, deploys the Serve app with a generated config (`serve deploy`), queries
/v1/embeddings and /v1/search, then stops Serve and the head and checks that no Ray process is left. Everything
lands in --output-dir (default ./demo_output): logs/, runs/ (checkpoints), model/, lancedb/, serve.yaml,
summary.json. The logic lives in causal2vec.demo.run_demo.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from causal2vec.demo import run_demo
    from causal2vec.errors import Causal2VecError

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
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted (everything was shut down)", file=sys.stderr)
        return 130
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
