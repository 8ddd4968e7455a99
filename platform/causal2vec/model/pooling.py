"""Pooling: the decoder's last hidden states -> one vector per text, and that vector's size.

    concat   [h_ctx ; h_eos]            2 x hidden   (the paper's; the default)
    last     h_eos                      hidden
    ctx      h_ctx                      hidden
    mean     mean of h over CTX .. EOS  hidden       (BOS and the instruction are never averaged)

A new mode is a function in POOLERS plus its name in causal2vec.config.Pooling (a test checks that they agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from causal2vec.model.tokenization import DecoderBatch


def _rows(hidden: torch.Tensor) -> torch.Tensor:
    return torch.arange(hidden.shape[0], device=hidden.device)


def _concat(hidden: torch.Tensor, batch: DecoderBatch) -> torch.Tensor:
    rows = _rows(hidden)
    return torch.cat([hidden[rows, batch.ctx_index], hidden[rows, batch.eos_index]], dim=-1)


def _last(hidden: torch.Tensor, batch: DecoderBatch) -> torch.Tensor:
    return hidden[_rows(hidden), batch.eos_index]


def _ctx(hidden: torch.Tensor, batch: DecoderBatch) -> torch.Tensor:
    return hidden[_rows(hidden), batch.ctx_index]


def _mean(hidden: torch.Tensor, batch: DecoderBatch) -> torch.Tensor:
    mask = batch.pool_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


# mode -> (pooling function, output size in multiples of the decoder's hidden size)
POOLERS = {"concat": (_concat, 2), "last": (_last, 1), "ctx": (_ctx, 1), "mean": (_mean, 1)}


def pool(hidden: torch.Tensor, batch: DecoderBatch, mode: str) -> torch.Tensor:
    return POOLERS[mode][0](hidden, batch)


def output_dim(mode: str, hidden_size: int) -> int:
    return POOLERS[mode][1] * hidden_size


def normalize(vectors: torch.Tensor, which: bool | list[bool] = True) -> torch.Tensor:
    """L2-normalise the rows `which` selects (all, none, or one flag per row), in fp32, back in the input dtype."""
    if which is True or which is False:
        return F.normalize(vectors.float(), dim=-1).to(vectors.dtype) if which else vectors
    flags = torch.tensor(which, device=vectors.device).unsqueeze(-1)
    return torch.where(flags, F.normalize(vectors.float(), dim=-1).to(vectors.dtype), vectors)
