"""What travels between the ingress and the model stages: one call per stage carries many texts.

The ingress merges the requests that arrive together and sends their texts to a stage in one handle call (not one
call per text, nor per request: each call costs the ingress and the replica a few ms of CPU whatever it carries),
and each stage's `@serve.batch` merges calls from several ingress replicas.
Token ids travel as one int32 buffer plus offsets (`TokenRows`), which pickles an order of magnitude faster than
lists of Python ints. Each stage's batch has a budget (encoder: texts; decoder and fused: decoder tokens, layout
included); the ingress cuts a request into chunks that fit it (`chunks`), so no call is ever too big for a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class TokenRows:
    """Ragged token-id rows as one int32 buffer: row i is flat[offsets[i]:offsets[i + 1]]."""

    flat: np.ndarray
    offsets: np.ndarray

    @classmethod
    def pack(cls, rows: Sequence[Sequence[int]]) -> TokenRows:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    def rows(self) -> list[list[int]]:
        return [self.flat[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def __len__(self) -> int:
        return len(self.offsets) - 1


@dataclass
class Prepared:
    """A request's texts, tokenized for both stages and checked: what the ingress sends through the stages."""

    encoder_ids: list[list[int]] | None  # None without a CTX token
    decoder_ids: list[list[int]]
    lengths: list[int]  # each row's decoder tokens, layout included
    instruction: str | None
    normalize: bool | None

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


@dataclass
class DecoderCall:
    """One call's rows for the decoder, each row's instruction and normalisation (rows come from several requests),
    and `tokens`, the rows' length in the decoder input (layout included, after truncation): the call's cost against
    the batch budget."""

    ids: TokenRows
    instructions: list[str | None]
    normalize: list[bool | None]
    tokens: int


def texts_in(calls: list[TokenRows]) -> int:
    """An encoder batch's cost: its texts."""
    return sum(len(c) for c in calls)


def tokens_in(calls: list[DecoderCall]) -> int:
    """A decoder (or fused) batch's cost: its decoder tokens. The batch runs as length-sorted passes
    (model/inference.py), so real tokens, not rows x the longest row, are what it costs."""
    return sum(c.tokens for c in calls)


def chunks(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[range]:
    """Consecutive slices of rows, each within both budgets (every single row fits: the server refuses
    at start-up a token budget below the model's longest input)."""
    out, start, tokens = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start >= max_texts or tokens + n > max_tokens):
            out.append(range(start, i))
            start, tokens = i, 0
        tokens += n
    if lengths:
        out.append(range(start, len(lengths)))
    return out
