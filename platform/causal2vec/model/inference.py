"""The one stage runner. Every path that runs the model over many rows cuts them into forward passes here:
`Causal2Vec.encode`, the bulk job's stages, the Serve deployments (each a thin adapter over `encoder_pass` /
`decoder_pass`) and training's micro-batches (`length_buckets`, `in_input_order`).

    rows -> sorted by token length, longest first -> passes of `rows_per_pass` rows (or cut where the padding saved
         is worth a pass: `pass_cost`), each padded only to its own longest row
         -> the stage, without autograd -> float32 results back in input order, with each row's truncation flag
            and real token count

Sorting is what makes batching cheap: 64 random Debian texts padded together cost twice their real tokens
(bench/bulk_embed.py). This module is the only place that sorts rows by length (tests/test_inference.py checks).
"""

from __future__ import annotations

import time
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


def length_buckets(lengths: Sequence[int], rows_per_pass: int, sort: bool = True,
                   pass_cost: int | None = None) -> list[list[int]]:
    """Row indices cut into passes of at most `rows_per_pass`: longest first when `sort` (each pass is padded to its
    own longest row, so similar lengths together waste less), input order otherwise.

    `pass_cost`: what one more forward pass costs, in padded tokens (per-layer kernel launches and Python: dozens of
    tokens on a CPU, thousands on a GPU). With it, sorted rows are cut where the padding saved is worth a pass: on a
    small batch of random lengths (a served batch) that beats full passes. Without it, every pass but the last is
    full (right when rows come globally sorted, as in `encode` and the bulk job)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else list(range(len(lengths)))
    if pass_cost is None or not sort:
        return [order[s:s + rows_per_pass] for s in range(0, len(order), rows_per_pass)]
    return [order[s:e] for s, e in _cheapest_cuts([lengths[i] for i in order], rows_per_pass, pass_cost)]


def _cheapest_cuts(longest_first: list[int], most: int, pass_cost: int) -> list[tuple[int, int]]:
    """Rows sorted longest first cut into passes of at most `most` rows, with the fewest padded tokens plus
    `pass_cost` per pass (a pass runs its rows at its first row's length): dynamic programming from the end, one
    numpy step per row (a GPU batch of 512 rows in passes of up to 128 costs ~3 ms, not a Python double loop)."""
    n = len(longest_first)
    best, end = np.zeros(n + 1), np.full(n + 1, n)
    for s in range(n - 1, -1, -1):
        ends = np.arange(s + 1, min(n, s + most) + 1)
        costs = pass_cost + (ends - s) * longest_first[s] + best[ends]
        pick = len(costs) - 1 - int(np.argmin(costs[::-1]))  # on a tie, the longer pass
        best[s], end[s] = costs[pick], ends[pick]
    cuts, s = [], 0
    while s < n:
        cuts.append((s, int(end[s])))
        s = int(end[s])
    return cuts


def in_input_order(passes: Sequence[Sequence[int]], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The passes' outputs stacked back into input row order (differentiable: training's forward uses it)."""
    rows = torch.tensor([i for part in passes for i in part], device=outputs[0].device)
    return torch.cat(list(outputs))[rows.argsort()]


def encoder_pass(model, token_ids: Sequence[Sequence[int]], *, rows_per_pass: int, sort: bool = True,
                 pass_cost: int | None = None, progress: bool = False) -> StageOutput:
    """CTX vectors (in the decoder's hidden size) for raw encoder token ids (`builder.tokenize_for_encoder`)."""
    builder, out = model.builder, _Rows(len(token_ids))

    def step(rows: list[int]) -> torch.Tensor:
        batch = out.record(rows, builder.encoder_batch([token_ids[i] for i in rows]))
        return model.context_vectors(batch.to(model.device))

    passes = length_buckets([len(ids) for ids in token_ids], rows_per_pass, sort, pass_cost)
    return out.result(_run(passes, step, model.hidden_size, "context encoder", progress))


def decoder_pass(model, token_ids: Sequence[Sequence[int]], ctx: np.ndarray | Sequence[np.ndarray] | None, *,
                 instructions: str | Sequence[str | None] | None = None,
                 normalize: bool | None | Sequence[bool | None] = None, rows_per_pass: int, sort: bool = True,
                 pass_cost: int | None = None, progress: bool = False) -> StageOutput:
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

    passes = length_buckets(builder.decoder_lengths(token_ids, instructions)[0], rows_per_pass, sort, pass_cost)
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


def measure_pass_cost(model, short: int = 16, long: int = 128, repeats: int = 3) -> int | None:
    """What one more forward pass costs on this device, in padded tokens of the parts `model` holds (encoder,
    decoder, or both back to back): one row timed at two lengths, best of `repeats`, the intercept over the slope.
    None when the timings show no cost per token (noise): then full passes are the safe choice."""
    builder, text = model.builder, " ".join(["embedding"] * 2 * long)
    enc = builder.tokenize_for_encoder([text])[0] if model.part != "decoder" and model.config.use_ctx_token else None
    dec = builder.tokenize_for_decoder([text])[0] if model.part != "encoder" else None
    longest = min(long, *(len(ids) for ids in (enc, dec) if ids is not None))
    if longest <= short:
        return None
    zero_ctx = np.zeros((1, model.hidden_size), np.float32) if model.config.use_ctx_token else None

    def seconds(n: int) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            ctx = encoder_pass(model, [enc[:n]], rows_per_pass=1).vectors if enc is not None else zero_ctx
            if dec is not None:
                decoder_pass(model, [dec[:n]], ctx, rows_per_pass=1)
            best = min(best, time.perf_counter() - start)
        return best

    seconds(short)  # warm-up: first-call allocations
    fast, slow = seconds(short), seconds(longest)
    per_token = (slow - fast) / max(1, longest - short)
    if per_token <= 0:
        return None
    return max(0, round((fast - short * per_token) / per_token))
