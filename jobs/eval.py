"""`python jobs/eval.py --model DIR --corpus c.parquet --queries q.parquet` (or via `ray job submit`). The same as
`causal2vec eval`; see `causal2vec eval --help`."""
import sys

from causal2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
