"""The one stage runner. Every path that runs the model over many rows cuts them into forward passes here:
`Causal2Vec.encode`, the bulk job's stages, the Serve deployments (each a thin adapter over `encoder_pass` /
`decoder_pass`) and training's micro-batches (`length_buckets`, `in_input_order`).

    rows -> sorted by token length, longest first -> passes of `rows_per_pass` rows, each padded only to its own
         -> the stage, without autograd -> float32 results back in input order, with each row's truncation flag
            and real token count

Sorting is what makes batching cheap: 64 random Debian texts padded together cost twice their real tokens
(bench/bulk_embed.py). This module is the only place that sorts rows by length (tests/test_inference.py checks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from causal2vec.errors import Causal2VecError
from causal2vec.model import pooling
from causal2vec.model.tokenization import per_text


@dataclass
class StageOutput:
    vectors: np.ndarray  # [rows, dim] float32 in input order (float32 carries bf16 / fp16 results exactly)
    truncated: list[bool]  # rows the stage cut to the model's length limit
    tokens: list[int]  # real tokens per row in the stage's input, layout included
    padded_tokens: int  # tokens the passes ran, padding included


def length_buckets(lengths: Sequence[int], rows_per_pass: int, sort: bool = True) -> list[list[int]]:
    """Row indices cut into passes of at most `rows_per_pass`: longest first when `sort` (each pass is padded to its
    own longest row, so similar lengths together waste less), input order otherwise."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else list(range(len(lengths)))
    return [order[s:s + rows_per_pass] for s in range(0, len(order), rows_per_pass)]


def in_input_order(passes: Sequence[Sequence[int]], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The passes' outputs stacked back into input row order (differentiable: training's forward uses it)."""
    rows = torch.tensor([i for part in passes for i in part], device=outputs[0].device)
    return torch.cat(list(outputs))[rows.argsort()]


def encoder_pass(model, token_ids: Sequence[Sequence[int]], *, rows_per_pass: int, sort: bool = True,
                 progress: bool = False) -> StageOutput:
    """CTX vectors (in the decoder's hidden size) for raw encoder token ids (`builder.tokenize_for_encoder`)."""
    builder, out = model.builder, _Rows(len(token_ids))

    def step(rows: list[int]) -> torch.Tensor:
        batch = out.record(rows, builder.encoder_batch([token_ids[i] for i in rows]))
        return model.context_vectors(batch.to(model.device))

    passes = length_buckets([len(ids) for ids in token_ids], rows_per_pass, sort)
    return out.result(_run(passes, step, model.hidden_size, "context encoder", progress))


def decoder_pass(model, token_ids: Sequence[Sequence[int]], ctx: np.ndarray | Sequence[np.ndarray] | None, *,
                 instructions: str | Sequence[str | None] | None = None,
                 normalize: bool | None | Sequence[bool | None] = None, rows_per_pass: int, sort: bool = True,
                 progress: bool = False) -> StageOutput:
    """Embeddings for raw decoder token ids (`builder.tokenize_for_decoder`) and their CTX vectors (None for a model
    without the Contextual token). `instructions`: one for all rows or one per row. `normalize`: the model's default
    (None), or a bool for all rows, or one per row (None there: the default)."""
    builder, out, n = model.builder, _Rows(len(token_ids)), len(token_ids)
    instructions = per_text(instructions, n)
    flags = _normalize_flags(normalize, model.config.normalize, n)
    ctx = torch.from_numpy(np.array(ctx, dtype=np.float32)) if ctx is not None and n else None  # a writable copy

    def step(rows: list[int]) -> torch.Tensor:
        batch = out.record(rows, builder.decoder_batch([token_ids[i] for i in rows], [instructions[i] for i in rows]))
        vectors = ctx[rows].to(model.device, model.dtype) if ctx is not None else None
        pooled = model.embed_with_context(batch.to(model.device), vectors, normalize=False)
        return pooling.normalize(pooled, flags if isinstance(flags, bool) else [flags[i] for i in rows])

    passes = length_buckets(builder.decoder_lengths(token_ids, instructions)[0], rows_per_pass, sort)
    return out.result(_run(passes, step, model.embedding_dim, "decoder", progress))


def _normalize_flags(normalize, default: bool, n: int) -> bool | list[bool]:
    if not isinstance(normalize, (list, tuple)):
        return default if normalize is None else bool(normalize)
    if len(normalize) != n:
        raise Causal2VecError(f"got {len(normalize)} normalize flags for {n} texts; pass one flag or one per text")
    return [default if flag is None else bool(flag) for flag in normalize]


class _Rows:
    """Per-row truncation flags and token counts, and the padded tokens, filled in pass by pass."""

    def __init__(self, n: int):
        self.truncated, self.tokens, self.padded = [False] * n, [0] * n, 0

    def record(self, rows: list[int], batch):
        for i, cut, count in zip(rows, batch.truncated, batch.attention_mask.sum(1).tolist()):
            self.truncated[i], self.tokens[i] = cut, count
        self.padded += batch.attention_mask.numel()
        return batch

    def result(self, vectors: np.ndarray) -> StageOutput:
        return StageOutput(vectors, self.truncated, self.tokens, self.padded)


def _run(passes: list[list[int]], step: Callable[[list[int]], torch.Tensor], dim: int, stage: str,
         progress: bool) -> np.ndarray:
    if not passes:
        return np.zeros((0, dim), np.float32)
    with torch.no_grad():  # not inference_mode: ZeRO-3's parameter hooks run here during training evaluations
        outputs = [step(rows).float().cpu() for rows in tqdm(passes, desc=stage, unit="pass", disable=not progress)]
    return in_input_order(passes, outputs).numpy()
