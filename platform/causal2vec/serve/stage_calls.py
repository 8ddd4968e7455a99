"""The ingress's side of the model stages: one call per stage per request chunk, and whether the stages answer."""

# No `from __future__ import annotations` (see api.py): Serve pickles the ingress, and this class with it.
import asyncio
import contextlib
import time

import numpy as np

from causal2vec.serve.config import ServeArgs
from causal2vec.serve.protocol import awaitable, model_error
from causal2vec.serve.wire import DecoderCall, Prepared, TokenRows, chunks


class StageCalls:
    """Handles to the model deployments: `run` sends a request through them, `not_ready` is /health's check."""

    def __init__(self, encoder, decoder, args: ServeArgs):
        """`decoder` is the Decoder deployment (split) or the one Model deployment (fused); `encoder` is None when
        fused or without a CTX token."""
        from ray.serve.metrics import Gauge

        self.encoder, self.decoder, self.args = encoder, decoder, args
        self.fused = args.stages == "fused"
        self.handles = {"decoder" if not self.fused else "model": decoder} | \
            ({"encoder": encoder} if encoder is not None else {})
        self._answered = {name: asyncio.Event() for name in self.handles}  # set when a call on the stage succeeds
        self._answered_since = dict.fromkeys(self.handles, 0.0)  # when the latest successful call was sent
        self.m_in_flight = Gauge("causal2vec_items_in_flight",
                                 description="Texts sent to the model deployments and not yet answered.")
        self._in_flight = 0

    async def run(self, request: Prepared) -> list[np.ndarray]:
        """One call per stage per chunk (a chunk fits one batch's budget; most requests are one chunk). In split
        mode the encoder's response is handed to the decoder call, not awaited here."""
        responses, started = [], time.monotonic()
        n = len(request.lengths)
        self._in_flight += n
        self.m_in_flight.set(self._in_flight)
        try:
            for part in chunks(request.lengths, self.args.encoder.max_batch_size, self.args.decoder.max_batch_tokens):
                enc = TokenRows.pack(request.encoder_ids[part.start:part.stop]) \
                    if request.encoder_ids is not None else None
                call = DecoderCall(TokenRows.pack(request.decoder_ids[part.start:part.stop]), request.instruction,
                                   request.normalize, sum(request.lengths[part.start:part.stop]))
                if self.fused:  # back-pressure can raise right here, at the call
                    responses.append(self.decoder.remote(enc, call))
                else:
                    ctx = self.encoder.remote(enc) if enc is not None else None
                    responses.append(self.decoder.remote(call, ctx))
            vectors = await asyncio.gather(*(awaitable(r) for r in responses))
        except Exception as exc:
            for response in responses:  # the first failure fails the request: stop the rest
                with contextlib.suppress(Exception):  # cancel() re-raises a call's own failure
                    response.cancel()
            raise model_error(exc) from exc
        finally:
            self._in_flight -= n
            self.m_in_flight.set(self._in_flight)
        self._mark_answered(started)
        return [v for part in vectors for v in part]

    async def not_ready(self) -> str | None:
        """Why the service cannot answer now (a stage's name and problem), or None."""
        for name, handle in self.handles.items():
            problem = await self._stage_problem(name, handle)
            if problem:
                return f"the {name} deployment is not ready ({problem})"
        return None

    async def _stage_problem(self, name: str, handle) -> str | None:
        """A stage is ready when its replicas answer a ping, or when a model call sent after this check began
        succeeds first: under load a ping queues behind full batches, and /health must not wait for them."""
        began = time.monotonic()
        deadline = began + self.args.health_timeout_s
        ping = asyncio.ensure_future(awaitable(handle.ready.remote()))
        try:
            while True:
                answered = asyncio.ensure_future(self._answered[name].wait())
                done, _ = await asyncio.wait({ping, answered}, timeout=max(0.0, deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
                answered.cancel()
                if ping in done:
                    return None if ping.exception() is None else type(ping.exception()).__name__
                if not done:
                    return f"no answer within {self.args.health_timeout_s:g} s"
                if self._answered_since[name] >= began:
                    return None
        finally:
            ping.cancel()

    def _mark_answered(self, started: float) -> None:
        """Every stage answered a call sent at `started`; wake the health checks waiting for proof."""
        for name in self.handles:
            self._answered_since[name] = max(self._answered_since[name], started)
            self._answered[name].set()
            self._answered[name] = asyncio.Event()
