"""Hard-negative mining: each query's nearest non-positive documents under a model, ranks 1..skip left out.

The nearest few are skipped because they are the likeliest false negatives (near-duplicates of the positive, or
unlabelled relevant documents).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from causal2vec.eval.retrieval import exact_top_k

log = logging.getLogger(__name__)


def mine_hard_negatives(model, queries: Sequence[str], positives: Sequence[str], corpus: Sequence[str], *,
                        num: int = 4, skip: int = 3, instruction: str | None = None, batch_size: int = 64,
                        show_progress: bool = False) -> list[list[str]]:
    """For each (query, positive): `num` corpus texts ranked after the first `skip` non-positive neighbours."""
    unique = list(dict.fromkeys(corpus))  # duplicates would fill a query's negatives with one text
    doc_vecs = model.encode(unique, batch_size=batch_size, show_progress=show_progress)
    query_vecs = model.encode(list(queries), instruction=instruction, batch_size=batch_size,
                              show_progress=show_progress)
    _, index = exact_top_k(query_vecs, doc_vecs, min(len(unique), skip + num + 1))
    negatives = []
    for positive, row in zip(positives, index):
        ranked = [unique[j] for j in row if unique[j] != positive]
        negatives.append(ranked[skip:skip + num])
    short = sum(len(n) < num for n in negatives)
    if short:
        log.warning("%d queries got fewer than %d negatives (corpus of %d texts)", short, num, len(unique))
    return negatives
