"""Evaluate a model: `python jobs/eval.py --model DIR --corpus c.parquet --queries q.parquet` (or via ray job submit).

A thin entry point over `causal2vec eval`; see `causal2vec eval --help` for every flag.
"""

import sys

from causal2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
