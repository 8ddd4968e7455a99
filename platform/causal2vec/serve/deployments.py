"""The model stages as Serve deployments, each batched with @serve.batch and autoscaled on its own.

`stages: split` (the GPU default) runs two deployments, and each replica loads only its part of the model:
ContextEncoderDeployment: encoder token ids -> CTX vectors (the small bidirectional encoder), batched by texts.
DecoderDeployment:        decoder token ids + CTX vectors -> embeddings (the LLM), batched by decoder tokens, so a
                          few long texts cannot blow up a batch.
`stages: fused` runs FusedDeployment, which holds the whole model and does both (small models, CPU hosts: one hop
fewer, no CTX vectors on the wire).

The ingress tokenizes (it must count tokens and check truncation before anything is batched), merges the requests
that arrive together and sends their texts in one call per stage (serve/wire.py); @serve.batch merges calls from
several ingress replicas, and results are split back per call. A batch runs through the stage runner
(model/inference.py); `context_vectors` and `embeddings` below are the adapters, which is what makes served vectors
equal `model.encode`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from ray import serve

from causal2vec.model.causal2vec import load_model
from causal2vec.model.inference import decoder_pass, encoder_pass, measure_pass_cost
from causal2vec.serve.wire import DecoderCall, TokenRows, texts_in, tokens_in

log = logging.getLogger(__name__)

# @serve.batch needs values at import; every replica resets both from its arguments (set_max_batch_size /
# set_batch_wait_timeout_s). The deployments take every setting as a required argument: `ServeArgs` (the `args:` of a
# Serve config, through `build_app`) is the one place that holds their defaults.
_IMPORT_TIME_BATCH = 1
_IMPORT_TIME_WAIT_S = 0.0


def context_vectors(model, calls: list[TokenRows], passes: dict) -> list[np.ndarray]:
    """The encoder's batch: each call's token-id rows -> its CTX vectors (float32 on the wire: numpy has no bf16,
    and bf16 -> fp32 -> bf16 is exact). `passes`: how the batch is cut (rows_per_pass, pass_cost)."""
    rows = [row for call in calls for row in call.rows()]
    return _split(encoder_pass(model, rows, **passes).vectors, [len(c) for c in calls])


def embeddings(model, calls: list[tuple[DecoderCall, np.ndarray | None]], passes: dict):
    """The decoder's batch: each call's rows and CTX vectors -> its embeddings, each row with its own instruction
    and normalisation; also the padded tokens the passes ran."""
    rows, instructions, normalize = [], [], []
    for call, _ in calls:
        rows += call.ids.rows()
        instructions += call.instructions
        normalize += call.normalize
    ctx = np.concatenate([c for _, c in calls]) if model.config.use_ctx_token else None
    out = decoder_pass(model, rows, ctx, instructions=instructions, normalize=normalize, **passes)
    return _split(out.vectors, [len(call.ids) for call, _ in calls]), out.padded_tokens


def _split(vectors: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(vectors, np.cumsum(sizes)[:-1])


class _Stage:
    """What every stage shares: loading its part of the model, metrics, and running a batch of calls so one bad call
    cannot fail its neighbours."""

    stage = "stage"  # "encoder", "decoder" or "fused"
    part = "all"  # the part of the model the replica loads

    def _start(self, model: str, device: str | None, dtype: str | None, torch_threads: int | None,
               passes: dict, batch_budget: int, batch_wait_timeout_s: float) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model = load_model(model, self.part, device=device, dtype=dtype)
        if passes["pass_cost"] == "auto":
            passes = {**passes, "pass_cost": measure_pass_cost(self.model)}
            log.info("%s replica: one forward pass costs as much as %s padded tokens", self.stage, passes["pass_cost"])
        self.passes = passes
        self.embed.set_max_batch_size(batch_budget)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._init_metrics()

    def _init_metrics(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self._batch_items = Histogram(
            "causal2vec_batch_items", description="Texts per executed batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], tag_keys=("stage",))
        self._batch_calls = Histogram(
            "causal2vec_batch_calls", description="Request chunks merged into one executed batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("stage",))
        self._batch_seconds = Histogram(
            "causal2vec_batch_seconds", description="Model time per executed batch.",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], tag_keys=("stage",))
        self._batch_tokens = Histogram(
            "causal2vec_batch_padded_tokens", description="Padded decoder tokens per executed batch.",
            boundaries=[64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], tag_keys=("stage",))
        self._item_failures = Counter(
            "causal2vec_item_failures", description="Calls that failed inside a batch, by reason.",
            tag_keys=("stage", "reason"))
        for metric in (self._batch_items, self._batch_calls, self._batch_seconds, self._batch_tokens,
                       self._item_failures):
            metric.set_default_tags({"stage": self.stage})

    def _run(self, calls: list) -> list[np.ndarray]:
        raise NotImplementedError

    async def _run_isolated(self, calls: list) -> list:
        """Run a batch off the event loop (the replica keeps queueing the next batch meanwhile).

        If the whole batch fails, retry call by call and hand each failing call its own exception object; the
        public method raises it for that caller only.
        """
        start = time.perf_counter()
        try:
            out = await asyncio.to_thread(self._run, calls)
        except Exception as exc:  # noqa: BLE001 - isolate, then report per call
            if len(calls) == 1:
                self._item_failures.inc(tags={"reason": type(exc).__name__})
                log.warning("%s call failed: %s", self.stage, exc)
                return [exc]
            log.warning("%s batch of %d calls failed (%s); retrying call by call", self.stage, len(calls), exc)
            out = []
            for call in calls:
                out.extend(await self._run_isolated([call]))
            return out
        self._batch_calls.observe(len(calls))
        self._batch_items.observe(sum(len(v) for v in out))
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
        """Which part of the model this replica holds, its parameters (an encoder replica loads no LLM) and how it
        cuts batches into passes (with its measured pass cost); a replica holding the decoder also describes the
        model (the ingress builds the model's LanceDB identity from this and a probe text, without loading
        weights)."""
        out = {"part": self.model.part, "parameters": sum(p.numel() for p in self.model.parameters()),
               "passes": self.passes}
        if self.part == "encoder":
            return out
        config = self.model.config
        return {**out, "embedding_dim": self.model.embedding_dim, "fingerprint": config.fingerprint(),
                "max_decoder_length": config.max_decoder_length, "max_encoder_length": config.max_encoder_length,
                "dtype": str(self.model.dtype)}


@serve.deployment(name="ContextEncoder")
class ContextEncoderDeployment(_Stage):
    """Encoder token ids (TokenRows) -> one CTX vector per row (float32 numpy, in the decoder's hidden size).
    Batched by texts against `max_batch_size`."""

    stage = part = "encoder"

    def __init__(self, model: str, device: str | None, dtype: str | None, *, max_batch_size: int,
                 batch_wait_timeout_s: float, torch_threads: int | None, passes: dict):
        self._start(model, device, dtype, torch_threads, passes, max_batch_size, batch_wait_timeout_s)

    def _run(self, calls: list[TokenRows]) -> list[np.ndarray]:
        return context_vectors(self.model, calls, self.passes)

    @serve.batch(max_batch_size=_IMPORT_TIME_BATCH, batch_wait_timeout_s=_IMPORT_TIME_WAIT_S, batch_size_fn=texts_in)
    async def embed(self, calls: list[TokenRows]) -> list:
        return await self._run_isolated(calls)

    async def __call__(self, rows: TokenRows) -> np.ndarray:
        return self._raise_if_failed(await self.embed(rows))


@serve.deployment(name="Decoder")
class DecoderDeployment(_Stage):
    """DecoderCall + its CTX vectors -> one embedding per row (float32 numpy).
    Batched by decoder tokens against `max_batch_tokens`."""

    stage = part = "decoder"

    def __init__(self, model: str, device: str | None, dtype: str | None, *, max_batch_tokens: int,
                 batch_wait_timeout_s: float, torch_threads: int | None, passes: dict):
        self._start(model, device, dtype, torch_threads, passes, max_batch_tokens, batch_wait_timeout_s)

    def _run(self, pairs: list[tuple[DecoderCall, np.ndarray | None]]) -> list[np.ndarray]:
        vectors, padded = embeddings(self.model, pairs, self.passes)
        self._batch_tokens.observe(padded)
        return vectors

    @serve.batch(max_batch_size=_IMPORT_TIME_BATCH, batch_wait_timeout_s=_IMPORT_TIME_WAIT_S,
                 batch_size_fn=lambda pairs: tokens_in([call for call, _ in pairs]))
    async def embed(self, pairs: list[tuple[DecoderCall, np.ndarray | None]]) -> list:
        return await self._run_isolated(pairs)

    async def __call__(self, call: DecoderCall, ctx: np.ndarray | None) -> np.ndarray:
        return self._raise_if_failed(await self.embed((call, ctx)))


@serve.deployment(name="Model")
class FusedDeployment(_Stage):
    """Both stages in one replica: encoder rows (None without a CTX token) + DecoderCall -> one embedding per row.
    Batched by decoder tokens against `max_batch_tokens`."""

    stage = "fused"

    def __init__(self, model: str, device: str | None, dtype: str | None, *, max_batch_tokens: int,
                 batch_wait_timeout_s: float, torch_threads: int | None, passes: dict):
        self._start(model, device, dtype, torch_threads, passes, max_batch_tokens, batch_wait_timeout_s)

    def _run(self, pairs: list[tuple[TokenRows | None, DecoderCall]]) -> list[np.ndarray]:
        ctx = context_vectors(self.model, [rows for rows, _ in pairs], self.passes) \
            if self.model.config.use_ctx_token else [None] * len(pairs)
        vectors, padded = embeddings(self.model, [(call, c) for (_, call), c in zip(pairs, ctx)], self.passes)
        self._batch_tokens.observe(padded)
        return vectors

    @serve.batch(max_batch_size=_IMPORT_TIME_BATCH, batch_wait_timeout_s=_IMPORT_TIME_WAIT_S,
                 batch_size_fn=lambda pairs: tokens_in([call for _, call in pairs]))
    async def embed(self, pairs: list[tuple[TokenRows | None, DecoderCall]]) -> list:
        return await self._run_isolated(pairs)

    async def __call__(self, rows: TokenRows | None, call: DecoderCall) -> np.ndarray:
        return self._raise_if_failed(await self.embed((rows, call)))
