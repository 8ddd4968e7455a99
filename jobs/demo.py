"""The README's main job: build the bundled `tiny` model and embed a few sample texts.

Later stages (train -> bulk-embed -> serve -> query) join this entry point as they land.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    import numpy as np
    import pyarrow.parquet as pq

    from causal2vec import Causal2Vec
    from causal2vec.cli import quiet_third_party
    from causal2vec.samples import CORPUS, QUERIES

    quiet_third_party(verbose=False)
    step = lambda msg: print(f"\n==> {msg}", flush=True)  # noqa: E731

    step("building the bundled `tiny` Causal2Vec model (random-init BERT encoder + Llama decoder, offline)")
    t0 = time.perf_counter()
    model = Causal2Vec.from_pretrained("tiny")
    print(f"    encoder hidden {model.context_encoder.encoder.config.hidden_size}, decoder hidden "
          f"{model.hidden_size}, embedding dim {model.embedding_dim} (concat of CTX and EOS states), "
          f"{time.perf_counter() - t0:.1f}s")

    docs = pq.read_table(CORPUS).slice(0, 500).to_pylist()
    queries = pq.read_table(QUERIES).slice(0, 3).to_pylist()
    step(f"embedding {len(docs)} sample Debian package descriptions")
    t0 = time.perf_counter()
    doc_vecs = model.encode([d["text"] for d in docs], batch_size=32, show_progress=True)
    dt = time.perf_counter() - t0
    print(f"    {doc_vecs.shape[0]} x {doc_vecs.shape[1]} float32 in {dt:.1f}s ({len(docs) / dt:.0f} docs/s)")

    step("embedding three queries (with a query-side instruction) and listing their nearest documents")
    instruction = "Instruct: Given a package synopsis, retrieve its description\nQuery: "
    q_vecs = model.encode([q["query"] for q in queries], instruction=instruction)
    for q, scores in zip(queries, q_vecs @ doc_vecs.T):
        print(f"    query: {q['query']!r}")
        for i in np.argsort(-scores)[:3]:
            print(f"      {scores[i]:+.3f}  {docs[i]['id']:<28} {docs[i]['text'][:60]!r}")
    print("\n    (tiny is random-init, so these neighbours are not meaningful yet: it exists to exercise the code.)")
    step("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
