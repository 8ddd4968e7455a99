"""The serving application's typed arguments: what `args:` holds in a Serve config file (serve_configs/*.yaml,
deploy/rayservice.yaml) and what `causal2vec serve` builds from its flags.

Everything about the deployments is configured here, under `args` (not in the config file's `deployments:`
overrides), because Serve silently ignores unknown autoscaling keys and these classes check them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from causal2vec.config import QUERY_INSTRUCTION, Strict, absolute, parse
from causal2vec.errors import Causal2VecError

# The autoscaling_config keys Ray Serve 2.60 reads (PLATFORM_NOTES); anything else would be dropped silently.
AUTOSCALING_KEYS = frozenset({
    "min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests", "look_back_period_s",
    "upscale_delay_s", "downscale_delay_s", "downscale_to_zero_delay_s", "upscaling_factor", "downscaling_factor",
    "aggregation_function", "policy"})


class StageArgs(Strict):
    """Placement and scaling of one deployment."""

    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    autoscaling_config: dict[str, Any] | None = None
    num_replicas: int | None = Field(None, ge=1, description="a fixed number of replicas (instead of autoscaling)")
    max_ongoing_requests: int | None = Field(None, ge=1, description="calls a replica holds at once (a batch merges "
                                                                   "at most this many)")
    max_queued_requests: int = Field(2048, ge=-1, description="calls queued before callers get 503 (-1: no limit)")
    access_log: bool = Field(False, description="log every call the replica handles (a few hundred microseconds of "
                                                "CPU each; the ingress's log already has every HTTP request)")

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

    def replica_calls(self) -> int:
        """Calls this stage's replicas can usefully hold: at its most replicas, each at its autoscaling target."""
        if self.autoscaling_config is not None:
            scaling = self.autoscaling_config
            return math.ceil(scaling.get("max_replicas", 1) * scaling.get("target_ongoing_requests", 2))
        return 2 * (self.num_replicas or 1)

    def deployment_options(self, default_ongoing: int) -> dict[str, Any]:
        options: dict[str, Any] = {"ray_actor_options": self.ray_actor_options,
                                   "max_ongoing_requests": self.max_ongoing_requests or default_ongoing,
                                   "max_queued_requests": self.max_queued_requests,
                                   "logging_config": {"enable_access_log": self.access_log}}
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        return options


class ModelStageArgs(StageArgs):
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")
    torch_threads: int | None = Field(None, ge=1, description="torch threads (Ray sets 1 for fractional num_cpus)")
    # requests arrive in random length order (64 random Debian texts pad to twice their tokens): a batch runs as
    # length-sorted passes, each padded only to its own longest row
    rows_per_pass: int = Field(16, ge=1, description="rows per forward pass, after sorting a batch by length")
    # a served batch holds random lengths: passes are cut where the padding saved is worth a pass (smollm2's served
    # replicas on 2 CPU cores: 90 -> 75 ms of CPU per text against full passes of 4; README, bench/serve_load.py)
    pass_cost: int | Literal["auto"] | None = Field(
        "auto", description="what one more forward pass costs, in padded tokens (auto: measured by each replica at "
                            "start; null: full passes of rows_per_pass)")

    def passes(self) -> dict:
        """How a batch is cut into forward passes (model/inference.py)."""
        return {"rows_per_pass": self.rows_per_pass, "pass_cost": self.pass_cost}


class EncoderArgs(ModelStageArgs):
    max_batch_size: int = Field(64, ge=1, description="texts per batch (the ingress also cuts requests to this)")


class DecoderArgs(ModelStageArgs):
    max_batch_tokens: int = Field(16384, ge=1, description="decoder tokens per batch, layout included (it runs as "
                                                           "length-sorted passes of rows_per_pass rows)")


class IngressArgs(StageArgs):
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.25})
    access_log: bool = Field(True, description="log every HTTP request (method, path, status, latency)")
    coalesce_wait_s: float = Field(0.01, ge=0, description="while a model call is out, how long the ingress collects "
                                   "requests into one call per stage (each call costs CPU; an idle ingress sends at "
                                   "once)")
    max_queued_requests: int = Field(-1, ge=-1, description="requests queued before callers get 503 (-1: no limit)")
    max_calls_in_flight: int | None = Field(None, ge=1, description="merged calls this ingress replica keeps "
                                            "outstanding; past it, requests wait and go out together when one "
                                            "returns (default: what the model stages' scaling can use, see "
                                            "ServeArgs.calls_in_flight)")


class ServeArgs(Strict):
    """The application's arguments (`args:` in a Serve config file)."""

    model: str = Field("tiny", description="a saved model directory or a preset")
    served_model_name: str | None = Field(None, description="the `model` clients send (default: the model's "
                                                            "directory or preset name)")
    device: str = Field("auto", description="auto (cuda if a replica has a GPU, else cpu), cpu, cuda")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), native (bf16 where the "
                                           "hardware has it), fp32, bf16, fp16")
    lancedb_uri: str | None = Field(None, description="/v1/search serves the tables under this LanceDB directory")
    max_items_per_request: int = Field(256, ge=1, description="texts per request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="request body size limit")
    api_keys_env: str | None = Field("CAUSAL2VEC_API_KEYS", description="an environment variable of "
                                                                        "comma-separated API keys")
    api_keys_file: str | None = Field(None, description="a file of API keys, one per line (read on the ingress's "
                                                        "node)")
    stages: Literal["split", "fused"] = Field("split", description="split: encoder and decoder deployments that "
                                              "scale on their own (GPU); fused: one deployment runs both (small "
                                              "models, CPU hosts); `decoder:` configures it")
    tasks: dict[str, str] = Field(default_factory=lambda: {"query": QUERY_INSTRUCTION, "document": ""})
    health_timeout_s: float = Field(2.0, gt=0, description="how long /health waits for each deployment (under a "
                                    "typical client timeout of 5 s, so a lost stage is a 503, not a timeout)")
    encoder: EncoderArgs = Field(default_factory=EncoderArgs)
    decoder: DecoderArgs = Field(default_factory=DecoderArgs)
    ingress: IngressArgs = Field(default_factory=IngressArgs)

    @model_validator(mode="after")
    def _defaults(self):
        if self.served_model_name is None:
            self.served_model_name = Path(self.model.rstrip("/")).name
        if self.lancedb_uri:  # replicas do not share the caller's working directory
            self.lancedb_uri = absolute(self.lancedb_uri)
        return self

    def calls_in_flight(self) -> int:
        """The ingress's cap on outstanding merged calls: enough for every model stage to reach its most replicas
        (autoscaling adds one when ongoing calls per replica pass `target_ongoing_requests`), and two per fixed
        replica (one running, one queued behind it). Below the cap requests go out within `coalesce_wait_s`; at the
        cap the replicas are busy anyway, so waiting requests merge into one call: the busier the service, the fewer
        calls (and their per-call CPU) per text."""
        if self.ingress.max_calls_in_flight:
            return self.ingress.max_calls_in_flight
        stages = [self.decoder] + ([self.encoder] if self.stages == "split" else [])
        return max(stage.replica_calls() for stage in stages)


def parse_args(args: dict | ServeArgs | None) -> ServeArgs:
    return args if isinstance(args, ServeArgs) else parse(ServeArgs, args or {}, "serve args")


def check_model_fits(args: ServeArgs):
    """The model's config; refuses a decoder token budget the longest input cannot fit in (it would fail every
    maximal request)."""
    from causal2vec.model.sources import load_builder

    config = load_builder(args.model).config
    if args.decoder.max_batch_tokens < config.max_decoder_length:
        raise Causal2VecError(f"decoder.max_batch_tokens ({args.decoder.max_batch_tokens}) is below the model's "
                              f"max_decoder_length ({config.max_decoder_length}): one maximal input would not fit a "
                              "batch; raise max_batch_tokens")
    return config
