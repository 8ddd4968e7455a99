"""Rebuild the bundled samples from the Debian package-description data set.

    python -m causal2vec.samples.build /path/to/debian-pkgs

The samples are small on purpose (the repo ships them): enough for the demo, the tests and the `tiny` tokenizers.
  corpus.parquet   id, text, section           2,500 documents (the pairs' and queries' positives + distractors)
  pairs.parquet    query, positive             training pairs from the data set's train split
  queries.parquet  query_id, query, doc_id     dev-split queries whose document is in the sample corpus
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).parent
N_PAIRS, N_QUERIES, N_CORPUS, MAX_CHARS, SEED = 1500, 300, 2500, 1200, 0


def main(data_dir: str) -> None:
    data = Path(data_dir)
    rng = np.random.default_rng(SEED)
    corpus = pq.read_table(data / "corpus.parquet")
    corpus = corpus.filter(pc.less_equal(pc.utf8_length(corpus["text"]), MAX_CHARS))
    in_corpus = pa.array(corpus["doc_id"].to_pylist())

    def pick(split: str, n: int) -> pa.Table:
        t = pq.read_table(data / f"{split}.parquet")
        t = t.filter(pc.is_in(t["doc_id"], in_corpus))
        return t.take(np.sort(rng.choice(t.num_rows, n, replace=False)))

    train, dev = pick("train", N_PAIRS), pick("dev", N_QUERIES)
    needed = set(train["doc_id"].to_pylist()) | set(dev["doc_id"].to_pylist())
    rest = [i for i, d in enumerate(corpus["doc_id"].to_pylist()) if d not in needed]
    extra = rng.choice(rest, N_CORPUS - len(needed), replace=False)
    keep = pc.is_in(corpus["doc_id"], pa.array(sorted(needed)))
    sample = pa.concat_tables([corpus.filter(keep), corpus.take(np.sort(extra))])
    sample = sample.select(["doc_id", "text", "section"]).rename_columns(["id", "text", "section"])
    sample = sample.take(pc.sort_indices(sample["id"]))
    text_of = dict(zip(sample["id"].to_pylist(), sample["text"].to_pylist()))
    pairs = pa.table({"query": train["query"], "positive": [text_of[d] for d in train["doc_id"].to_pylist()]})
    queries = dev.select(["query_id", "query", "doc_id"])
    for name, table in [("corpus", sample), ("pairs", pairs), ("queries", queries)]:
        pq.write_table(table, HERE / f"{name}.parquet", compression="zstd")
        print(f"{name}.parquet: {table.num_rows} rows")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m causal2vec.samples.build /path/to/debian-pkgs")
    main(sys.argv[1])
