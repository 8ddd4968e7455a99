"""The two model stages as Serve deployments, each batched with @serve.batch and autoscaled on its own. Each replica
loads only its part of the model: an encoder replica holds no LLM weights, a decoder replica no encoder.

ContextEncoderDeployment: encoder token ids -> CTX vectors (the small bidirectional encoder).
DecoderDeployment:        decoder token ids + CTX vectors -> embeddings (the LLM), batched by a padded-token budget
                          rather than an item count, so one long text does not blow up a batch.

The ingress tokenizes (it must count tokens and check truncation before anything is batched) and sends one item per
call, so @serve.batch merges items across requests. A batch runs through the stage runner (model/inference.py);
`context_vectors` and `embeddings` below are the adapters, which is what makes served vectors equal `model.encode`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from causal2vec.model.causal2vec import load_model
from causal2vec.model.inference import StageOutput, decoder_pass, encoder_pass

log = logging.getLogger(__name__)

# @serve.batch needs values at import; every replica resets both from its arguments (set_max_batch_size /
# set_batch_wait_timeout_s). The deployments take every setting as a required argument: `ServeArgs` (the `args:` of a
# Serve config, through `build_app`) is the one place that holds their defaults.
_IMPORT_TIME_BATCH = 1
_IMPORT_TIME_WAIT_S = 0.0


@dataclass
class DecoderItem:
    """One text for the decoder stage: its decoder token ids (before layout), instruction and normalisation.

    `tokens` is the row's length in the decoder input (layout included, after truncation): the batch's cost.
    """

    ids: list[int]
    instruction: str | None
    normalize: bool | None
    tokens: int


def padded_tokens(items: list[DecoderItem]) -> int:
    """A batch's cost as the decoder sees it: rows x the longest row (every row is padded to it)."""
    return len(items) * max(item.tokens for item in items)


def context_vectors(model, rows: list[list[int]], rows_per_pass: int) -> StageOutput:
    """The encoder replica's batch: token-id rows -> CTX vectors (float32 on the wire: numpy has no bf16, and
    bf16 -> fp32 -> bf16 is exact)."""
    return encoder_pass(model, rows, rows_per_pass=rows_per_pass)


def embeddings(model, pairs: list[tuple[DecoderItem, np.ndarray | None]], rows_per_pass: int) -> StageOutput:
    """The decoder replica's batch: items and their CTX vectors -> embeddings, each with its own instruction and
    normalisation."""
    items = [item for item, _ in pairs]
    ctx = [c for _, c in pairs] if model.config.use_ctx_token else None
    return decoder_pass(model, [i.ids for i in items], ctx, instructions=[i.instruction for i in items],
                        normalize=[i.normalize for i in items], rows_per_pass=rows_per_pass)


class _Stage:
    """What both stages share: loading their part of the model, metrics, and running a batch so one bad item cannot
    fail its neighbours."""

    stage = "stage"  # "encoder" or "decoder": also the part of the model the replica loads

    def _start(self, model: str, device: str | None, dtype: str | None, torch_threads: int | None,
               rows_per_pass: int, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model = load_model(model, self.stage, device=device, dtype=dtype)
        self.rows_per_pass = rows_per_pass
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._init_metrics()

    def _init_metrics(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self._batch_items = Histogram(
            "causal2vec_batch_items", description="Items per executed batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=("stage",))
        self._batch_seconds = Histogram(
            "causal2vec_batch_seconds", description="Model time per executed batch.",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], tag_keys=("stage",))
        self._item_failures = Counter(
            "causal2vec_item_failures", description="Items that failed inside a batch, by reason.",
            tag_keys=("stage", "reason"))
        for metric in (self._batch_items, self._batch_seconds, self._item_failures):
            metric.set_default_tags({"stage": self.stage})

    async def _run_isolated(self, run, items: list) -> list:
        """Run `run(items)` off the event loop (the replica keeps queueing the next batch meanwhile).

        If the whole batch fails, retry item by item and hand each failing item its own exception object; the
        public method raises it for that caller only.
        """
        start = time.perf_counter()
        try:
            out = await asyncio.to_thread(run, items)
        except Exception as exc:  # noqa: BLE001 - isolate, then report per item
            if len(items) == 1:
                self._item_failures.inc(tags={"reason": type(exc).__name__})
                log.warning("%s item failed: %s", self.stage, exc)
                return [exc]
            log.warning("%s batch of %d failed (%s); retrying item by item", self.stage, len(items), exc)
            out = []
            for item in items:
                out.extend(await self._run_isolated(run, [item]))
            return out
        self._batch_items.observe(len(items))
        self._batch_seconds.observe(time.perf_counter() - start)
        return out

    @staticmethod
    def _raise_if_failed(result):
        if isinstance(result, Exception):
            raise result
        return result

    def ready(self) -> bool:
        """A cheap call the ingress's /health sends to see that a replica answers."""
        return True

    def info(self) -> dict:
        """Which part of the model this replica holds, and its parameters (an encoder replica loads no LLM)."""
        return {"part": self.model.part, "parameters": sum(p.numel() for p in self.model.parameters())}


@serve.deployment(name="ContextEncoder")
class ContextEncoderDeployment(_Stage):
    """Encoder token ids -> one CTX vector each (float32 numpy, in the decoder's hidden size)."""

    stage = "encoder"

    def __init__(self, model: str, device: str | None, dtype: str | None, *, max_batch_size: int,
                 batch_wait_timeout_s: float, torch_threads: int | None, rows_per_pass: int):
        self._start(model, device, dtype, torch_threads, rows_per_pass, max_batch_size, batch_wait_timeout_s)

    def _run(self, rows: list[list[int]]) -> list[np.ndarray]:
        return list(context_vectors(self.model, rows, self.rows_per_pass).vectors)

    @serve.batch(max_batch_size=_IMPORT_TIME_BATCH, batch_wait_timeout_s=_IMPORT_TIME_WAIT_S)
    async def embed(self, rows: list[list[int]]) -> list:
        return await self._run_isolated(self._run, rows)

    async def __call__(self, ids: list[int]) -> np.ndarray:
        return self._raise_if_failed(await self.embed(ids))


@serve.deployment(name="Decoder")
class DecoderDeployment(_Stage):
    """DecoderItem + its CTX vector -> the embedding (float32 numpy).

    Batched by `padded_tokens` against `max_batch_tokens`; the number of items per batch is further capped by the
    replica's `max_ongoing_requests` (Serve never batches more items than a replica holds). Serve warns at start-up
    that max_batch_size exceeds max_ongoing_requests: expected here, where max_batch_size is a token budget.
    """

    stage = "decoder"

    def __init__(self, model: str, device: str | None, dtype: str | None, *, max_batch_tokens: int,
                 batch_wait_timeout_s: float, torch_threads: int | None, rows_per_pass: int):
        from ray.serve.metrics import Histogram

        self._start(model, device, dtype, torch_threads, rows_per_pass, max_batch_tokens, batch_wait_timeout_s)
        self._batch_tokens = Histogram(
            "causal2vec_batch_padded_tokens", description="Padded decoder tokens per executed batch.",
            boundaries=[64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])

    def info(self) -> dict:
        """What the ingress needs to know about the model without loading its weights (it builds the model's
        LanceDB identity from this and a probe text sent through both stages)."""
        config = self.model.config
        return {**super().info(), "embedding_dim": self.model.embedding_dim, "fingerprint": config.fingerprint(),
                "max_decoder_length": config.max_decoder_length, "max_encoder_length": config.max_encoder_length,
                "dtype": str(self.model.dtype)}

    def _run(self, pairs: list[tuple[DecoderItem, np.ndarray | None]]) -> list[np.ndarray]:
        out = embeddings(self.model, pairs, self.rows_per_pass)
        self._batch_tokens.observe(out.padded_tokens)
        return list(out.vectors)

    @serve.batch(max_batch_size=_IMPORT_TIME_BATCH, batch_wait_timeout_s=_IMPORT_TIME_WAIT_S,
                 batch_size_fn=lambda pairs: padded_tokens([item for item, _ in pairs]))
    async def embed(self, pairs: list[tuple[DecoderItem, np.ndarray | None]]) -> list:
        return await self._run_isolated(self._run, pairs)

    async def __call__(self, item: DecoderItem, ctx: np.ndarray | None) -> np.ndarray:
        return self._raise_if_failed(await self.embed((item, ctx)))
