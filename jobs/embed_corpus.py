"""Embed a corpus into an indexed LanceDB table with Ray Data (resumable: rerun the same command after a kill).

    ray job submit --working-dir . -- python jobs/embed_corpus.py --model tiny \
        --input platform/causal2vec/samples/corpus.parquet --table ./lancedb::corpus --fts
    python jobs/embed_corpus.py --model DIR --input 'data/*.jsonl' --table ./lancedb::docs    # local Ray, started here

Prints progress, a summary, and one `RESULT_JSON {...}` line for scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv: list[str] | None = None) -> int:
    from causal2vec.embed.pipeline import add_arguments, format_summary, run_from_args
    from causal2vec.errors import Causal2VecError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("causal2vec").setLevel(logging.INFO)
    try:
        summary = run_from_args(args)
    except Causal2VecError as exc:
        print(f"embed_corpus: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print("RESULT_JSON " + json.dumps(summary, default=str))  # one line, for scripts and tests
    return 0


if __name__ == "__main__":
    sys.exit(main())
