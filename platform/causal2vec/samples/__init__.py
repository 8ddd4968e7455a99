"""Small bundled samples of the Debian package-description retrieval data (see build.py)."""

from pathlib import Path

SAMPLES_DIR = Path(__file__).parent
CORPUS = SAMPLES_DIR / "corpus.parquet"
PAIRS = SAMPLES_DIR / "pairs.parquet"
QUERIES = SAMPLES_DIR / "queries.parquet"
