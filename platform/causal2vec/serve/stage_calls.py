"""The ingress's side of the model stages: requests that arrive together go out as one call per stage, and /health
asks whether the stages answer.

Each handle call costs the ingress (Serve's router) and the model replica a few ms of CPU whatever it carries, so
while a call is out the ingress collects the requests that arrive within `coalesce_wait_s` (an idle ingress sends at
once), concatenates their texts and cuts them into calls that fit one batch's budget (a big request spans several
calls, small ones share one). It also keeps at most `ServeArgs.calls_in_flight()` merged calls outstanding: past that
the replicas are busy anyway, and the requests that arrive meanwhile go out together when a call returns. So merging
grows with load, and a lone request pays no window.
Results are sliced back per request. A call that fails for a reason other than load or a lost replica is retried
request by request, so one bad request never fails the requests it travelled with.
"""

# No `from __future__ import annotations` (see api.py): Serve pickles the ingress, and this class with it.
import asyncio
import contextlib
import time

import numpy as np

from causal2vec.serve.config import ServeArgs
from causal2vec.serve.protocol import awaitable, model_error
from causal2vec.serve.wire import DecoderCall, Prepared, TokenRows, chunks

RETRYABLE = 503  # overloaded, replica lost, not ready: the same for every request in the call


class StageCalls:
    """Handles to the model deployments: `run` sends a request through them, `not_ready` is /health's check."""

    def __init__(self, encoder, decoder, args: ServeArgs):
        """`decoder` is the Decoder deployment (split) or the one Model deployment (fused); `encoder` is None when
        fused or without a CTX token."""
        from ray.serve.metrics import Counter, Gauge

        self.encoder, self.decoder, self.args = encoder, decoder, args
        self.fused = args.stages == "fused"
        self.handles = {"decoder" if not self.fused else "model": decoder} | \
            ({"encoder": encoder} if encoder is not None else {})
        self._answered = {name: asyncio.Event() for name in self.handles}  # set when a call on the stage succeeds
        self._answered_since = dict.fromkeys(self.handles, 0.0)  # when the latest successful call was sent
        self._waiting: list[tuple[Prepared, asyncio.Future]] = []
        self._collector: asyncio.Future | None = None
        self._sending: set[asyncio.Future] = set()  # the event loop keeps only weak references to tasks
        self.max_sends = args.calls_in_flight()
        self.calls_sent = 0  # merged calls sent (each may span several handle calls when over a batch's budget)
        self.m_calls = Counter("causal2vec_ingress_calls", description="Merged calls the ingress sent to the model "
                               "stages (requests per call = the merging under load).")
        self.m_in_flight = Gauge("causal2vec_items_in_flight",
                                 description="Texts sent to the model deployments and not yet answered.")
        self._in_flight = 0

    async def run(self, request: Prepared) -> list[np.ndarray]:
        """The request's vectors: sent at once when no call is out, else with the requests that arrive within
        `coalesce_wait_s` of it (or later, when `max_sends` calls are out)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if not self._sending:
            self._flush()
        elif self._collector is None or self._collector.done():
            self._collector = asyncio.ensure_future(self._collect())
        return await future

    async def _collect(self) -> None:
        await asyncio.sleep(self.args.ingress.coalesce_wait_s)
        self._flush()

    def _flush(self) -> None:
        """Send everything waiting as one merged call, unless `max_sends` calls are out (a returning call flushes)."""
        if not self._waiting or len(self._sending) >= self.max_sends:
            return
        jobs, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._send(jobs))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future) -> None:
        self._sending.discard(task)
        if self._collector is None or self._collector.done():  # else the window is still collecting
            self._flush()

    async def _send(self, jobs: list[tuple[Prepared, asyncio.Future]]) -> None:
        self.calls_sent += 1
        self.m_calls.inc()
        try:
            vectors = await self._call([request for request, _ in jobs])
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            if len(jobs) > 1 and getattr(exc, "status", None) != RETRYABLE:  # find the request at fault: each alone
                await asyncio.gather(*(self._send([job]) for job in jobs))
                return
            for _, future in jobs:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for request, future in jobs:
            end = start + len(request.lengths)
            if not future.done():  # the client may have gone
                future.set_result(vectors[start:end])
            start = end

    async def _call(self, requests: list[Prepared]) -> list[np.ndarray]:
        """The requests' texts in calls that fit one batch each; in split mode the encoder's response is handed to
        the decoder call, not awaited here."""
        lengths = [n for r in requests for n in r.lengths]
        dec_ids = [ids for r in requests for ids in r.decoder_ids]
        enc_ids = [ids for r in requests for ids in r.encoder_ids] if requests[0].encoder_ids is not None else None
        instructions = [r.instruction for r in requests for _ in r.lengths]
        normalize = [r.normalize for r in requests for _ in r.lengths]
        responses, started = [], time.monotonic()
        self._in_flight += len(lengths)
        self.m_in_flight.set(self._in_flight)
        try:
            for part in chunks(lengths, self.args.encoder.max_batch_size, self.args.decoder.max_batch_tokens):
                rows = slice(part.start, part.stop)
                enc = TokenRows.pack(enc_ids[rows]) if enc_ids is not None else None
                call = DecoderCall(TokenRows.pack(dec_ids[rows]), instructions[rows], normalize[rows],
                                   sum(lengths[rows]))
                if self.fused:  # back-pressure can raise right here, at the call
                    responses.append(self.decoder.remote(enc, call))
                else:
                    ctx = self.encoder.remote(enc) if enc is not None else None
                    responses.append(self.decoder.remote(call, ctx))
            vectors = await asyncio.gather(*(awaitable(r) for r in responses))
        except Exception as exc:
            for response in responses:  # the first failure fails the call: stop the rest
                with contextlib.suppress(Exception):  # cancel() re-raises a call's own failure
                    response.cancel()
            raise model_error(exc) from exc
        finally:
            self._in_flight -= len(lengths)
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
