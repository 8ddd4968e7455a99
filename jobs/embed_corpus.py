"""`ray job submit --working-dir . -- python jobs/embed_corpus.py --model tiny --input corpus.parquet --table
DIR::TABLE [--fts]` (or run it directly: a local Ray is started; rerun to resume). The same as `causal2vec
embed-corpus`; see `causal2vec embed-corpus --help`."""
import sys

from causal2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed-corpus", *sys.argv[1:]]))
