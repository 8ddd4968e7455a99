"""`build_app(args)`: the serving graph from typed, validated arguments: ingress -> encoder -> decoder
(`stages: split`) or ingress -> one model deployment (`stages: fused`).

This is what serve_configs/*.yaml import (`import_path: causal2vec.serve.app:build_app`), so `serve run
serve_configs/local.yaml` on a laptop, `serve deploy serve_configs/gpu.yaml` on a GPU cluster and `causal2vec
serve` start the same application with different numbers (serve/config.py holds them).
"""

from __future__ import annotations

from causal2vec.serve.api import EmbeddingAPI
from causal2vec.serve.config import check_model_fits, parse_args
from causal2vec.serve.deployments import ContextEncoderDeployment, DecoderDeployment, FusedDeployment

__all__ = ["build_app", "parse_args"]

# calls a model replica holds at once unless configured: a batch merges at most this many request chunks
DEFAULT_ONGOING_CALLS = 64


def build_app(args: dict | None = None):
    """The Serve application; raises Causal2VecError on a bad config."""
    args = parse_args(args)
    config = check_model_fits(args)
    enc, dec, ing = args.encoder, args.decoder, args.ingress
    decoder_kind = FusedDeployment if args.stages == "fused" else DecoderDeployment
    decoder = decoder_kind.options(**dec.deployment_options(DEFAULT_ONGOING_CALLS)).bind(
        args.model, args.device, args.dtype, max_batch_tokens=dec.max_batch_tokens,
        batch_wait_timeout_s=dec.batch_wait_timeout_s, torch_threads=dec.torch_threads,
        passes=dec.passes())
    encoder = None
    if config.use_ctx_token and args.stages == "split":
        encoder = ContextEncoderDeployment.options(**enc.deployment_options(DEFAULT_ONGOING_CALLS)).bind(
            args.model, args.device, args.dtype, max_batch_size=enc.max_batch_size,
            batch_wait_timeout_s=enc.batch_wait_timeout_s, torch_threads=enc.torch_threads,
            passes=enc.passes())
    return EmbeddingAPI.options(**ing.deployment_options(256)).bind(encoder, decoder, args)
