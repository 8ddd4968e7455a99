"""`build_app(args)`: the serving graph (ingress -> encoder -> decoder) from typed, validated arguments.

This is what serve_configs/*.yaml import (`import_path: causal2vec.serve.app:build_app`), so `serve run
serve_configs/local.yaml` on a laptop and `serve deploy serve_configs/gpu.yaml` on a GPU cluster start the same
application with different numbers. Everything about the deployments is configured here, under `args` (not in the
config file's `deployments:` overrides), because Serve silently ignores unknown autoscaling keys and this module
checks them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from causal2vec.errors import Causal2VecError

log = logging.getLogger(__name__)

# The autoscaling_config keys Ray Serve 2.60 reads (PLATFORM_NOTES); anything else would be dropped silently.
AUTOSCALING_KEYS = frozenset({
    "min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests", "look_back_period_s",
    "upscale_delay_s", "downscale_delay_s", "downscale_to_zero_delay_s", "upscaling_factor", "downscaling_factor",
    "aggregation_function", "policy"})

QUERY_INSTRUCTION = "Instruct: Given a search query, retrieve relevant passages that answer the query\nQuery: "


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageArgs(_Strict):
    """Placement and scaling of one deployment."""

    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    autoscaling_config: dict[str, Any] | None = None
    num_replicas: int | None = Field(None, ge=1)
    max_ongoing_requests: int | None = Field(None, ge=1)
    max_queued_requests: int = Field(2048, ge=-1)  # -1: unlimited; past it callers get BackPressureError -> 503

    @field_validator("autoscaling_config")
    @classmethod
    def _known_keys(cls, value: dict | None) -> dict | None:
        if value is None:
            return None
        unknown = sorted(set(value) - AUTOSCALING_KEYS)
        if unknown:
            raise ValueError(f"unknown autoscaling_config key(s) {', '.join(unknown)} (Serve would ignore them); "
                             f"known keys: {', '.join(sorted(AUTOSCALING_KEYS))}")
        from ray.serve.config import AutoscalingConfig

        AutoscalingConfig(**value)  # values and min <= initial <= max
        return value

    @model_validator(mode="after")
    def _one_scaling_mode(self):
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        return self

    def deployment_options(self, default_ongoing: int) -> dict[str, Any]:
        options: dict[str, Any] = {"ray_actor_options": self.ray_actor_options,
                                   "max_ongoing_requests": self.max_ongoing_requests or default_ongoing,
                                   "max_queued_requests": self.max_queued_requests}
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        return options


class ModelStageArgs(StageArgs):
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    torch_threads: int | None = Field(None, ge=1)  # Ray sets 1 thread for fractional num_cpus
    # a batch runs as forward passes of at most this many rows, sorted by length: each pass is padded only to its
    # own longest row (requests arrive in random length order; 64 random Debian texts pad to twice their tokens)
    rows_per_pass: int = Field(16, ge=1)


class EncoderArgs(ModelStageArgs):
    max_batch_size: int = Field(64, ge=1)  # texts per encoder batch


class DecoderArgs(ModelStageArgs):
    max_batch_tokens: int = Field(16384, ge=1)  # padded decoder tokens per batch (rows x longest row)
    max_batch_size: int = Field(64, ge=1)  # texts per batch, enforced through max_ongoing_requests


class IngressArgs(StageArgs):
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.25})
    max_queued_requests: int = Field(-1, ge=-1)


class ServeArgs(_Strict):
    """The application's arguments (`args:` in a Serve config file)."""

    model: str = "tiny"  # a saved model directory or a preset
    served_model_name: str | None = None  # the `model` clients send; default: the model's directory/preset name
    device: str = "auto"
    dtype: str = "auto"
    lancedb_uri: str | None = None  # /v1/search serves the tables under this LanceDB directory
    max_items_per_request: int = Field(256, ge=1)
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    api_keys_env: str | None = "CAUSAL2VEC_API_KEYS"  # comma-separated keys in this environment variable
    api_keys_file: str | None = None  # or one key per line in this file (read on the ingress's node)
    tasks: dict[str, str] = Field(default_factory=lambda: {"query": QUERY_INSTRUCTION, "document": ""})
    health_timeout_s: float = Field(5.0, gt=0)
    encoder: EncoderArgs = Field(default_factory=EncoderArgs)
    decoder: DecoderArgs = Field(default_factory=DecoderArgs)
    ingress: IngressArgs = Field(default_factory=IngressArgs)

    @model_validator(mode="after")
    def _defaults(self):
        if self.served_model_name is None:
            self.served_model_name = Path(self.model.rstrip("/")).name
        if self.lancedb_uri and "://" not in self.lancedb_uri:  # replicas do not share the caller's cwd
            self.lancedb_uri = str(Path(self.lancedb_uri).expanduser().absolute())
        for name in ("encoder", "decoder"):
            stage = getattr(self, name)
            if stage.max_ongoing_requests is not None and stage.max_ongoing_requests < stage.max_batch_size:
                raise ValueError(f"{name}.max_ongoing_requests ({stage.max_ongoing_requests}) is below "
                                 f"{name}.max_batch_size ({stage.max_batch_size}): Serve never batches more items "
                                 "than a replica holds, so batches could not fill")
        return self


def parse_args(args: dict | ServeArgs | None) -> ServeArgs:
    if isinstance(args, ServeArgs):
        return args
    try:
        return ServeArgs.model_validate(args or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
        raise Causal2VecError(f"invalid serve args: {problems}") from exc


def check_model_fits(args: ServeArgs):
    """The model's config; refuses a decoder token budget the longest input cannot fit in (it would fail every
    maximal request)."""
    from causal2vec.model.io import load_builder

    config = load_builder(args.model).config
    if args.decoder.max_batch_tokens < config.max_decoder_length:
        raise Causal2VecError(f"decoder.max_batch_tokens ({args.decoder.max_batch_tokens}) is below the model's "
                              f"max_decoder_length ({config.max_decoder_length}): one maximal input would not fit a "
                              "batch; raise max_batch_tokens")
    return config


def build_app(args: dict | None = None):
    """The Serve application: EmbeddingAPI(ContextEncoder, Decoder). Raises Causal2VecError on a bad config."""
    from causal2vec.serve.api import EmbeddingAPI
    from causal2vec.serve.deployments import ContextEncoderDeployment, DecoderDeployment
    args = parse_args(args)
    config = check_model_fits(args)
    enc, dec, ing = args.encoder, args.decoder, args.ingress
    decoder = DecoderDeployment.options(**dec.deployment_options(2 * dec.max_batch_size)).bind(
        args.model, args.device, args.dtype, max_batch_tokens=dec.max_batch_tokens,
        batch_wait_timeout_s=dec.batch_wait_timeout_s, torch_threads=dec.torch_threads,
        rows_per_pass=dec.rows_per_pass)
    encoder = None
    if config.use_ctx_token:
        encoder = ContextEncoderDeployment.options(**enc.deployment_options(2 * enc.max_batch_size)).bind(
            args.model, args.device, args.dtype, max_batch_size=enc.max_batch_size,
            batch_wait_timeout_s=enc.batch_wait_timeout_s, torch_threads=enc.torch_threads,
            rows_per_pass=enc.rows_per_pass)
    return EmbeddingAPI.options(**ing.deployment_options(256)).bind(encoder, decoder, args)
