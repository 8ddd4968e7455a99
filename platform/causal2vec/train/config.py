"""The typed training config: YAML file + `--set a.b=value` overrides, validated (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from causal2vec.config import Pooling, Strict, absolute, absolute_if_exists, load
from causal2vec.model.config import Causal2VecConfig, CtxPlacement, LoraSettings, ProjectorInit
from causal2vec.model.sources import ModelSource


class LoraSection(Strict):
    """LoRA on the decoder: `enabled` plus the model library's LoraSettings, whose defaults these are."""

    enabled: bool = True
    r: int = LoraSettings.r
    alpha: int = LoraSettings.alpha
    dropout: float = LoraSettings.dropout
    target_modules: list[str] | Literal["all-linear"] | None = LoraSettings.target_modules
    train_norms: bool = LoraSettings.train_norms

    def settings(self) -> LoraSettings:
        return LoraSettings(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=self.target_modules,
                            train_norms=self.train_norms)


class ModelSection(Strict):
    """Start from a preset or a saved model directory (`init`), or from HF encoder + decoder ids/paths."""

    init: str | None = "tiny"
    encoder: str | None = None
    decoder: str | None = None
    pooling: Pooling | None = None
    use_ctx_token: bool | None = None
    max_encoder_length: int | None = None
    max_decoder_length: int | None = None
    eos_token: str | None = None
    text_suffix: str | None = None
    ctx_prefix: str | None = None
    ctx_placement: CtxPlacement | None = None
    ctx_scale: float | None = Field(None, gt=0)
    projector_init: ProjectorInit | None = None
    lora: LoraSection = Field(default_factory=LoraSection)
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if self.encoder or self.decoder:
            if not (self.encoder and self.decoder):
                raise ValueError("model.encoder and model.decoder go together")
            self.init = None
        elif not self.init:
            raise ValueError("set model.init (a preset or saved model directory) or model.encoder + model.decoder")
        return self

    def config_overrides(self) -> dict[str, Any]:
        """The model settings this section sets: each of its fields that the model's own config has (but the
        sources, and LoRA, which the loop applies), so a setting added here reaches the model without a list."""
        settable = {f.name for f in fields(Causal2VecConfig)} - {"encoder", "decoder", "lora"}
        return {k: getattr(self, k) for k in type(self).model_fields if k in settable and getattr(self, k) is not None}

    def source(self) -> ModelSource:
        """The model a run starts from (LoRA and checkpointing are the loop's business)."""
        return ModelSource(self.init, self.encoder, self.decoder, self.config_overrides())


class TrainSource(Strict):
    """One training dataset: pairs with `query`, `positive`, optional `negatives` (list) and `instruction`."""

    path: str
    name: str | None = None
    instruction: str | None = None  # default query instruction for rows without their own


class DevSection(Strict):
    """Periodic retrieval evaluation (nDCG@10) on a dev split during training."""

    corpus: str
    queries: str
    description: str | None = None
    limit_queries: int | None = 500
    limit_corpus: int | None = 5000  # judged documents are always kept; the rest are distractors
    every_steps: int = 0  # 0 = only at the end


class DataSection(Strict):
    train: list[TrainSource]
    dev: DevSection | None = None
    num_hard_negatives: int = 0
    seed: int = 0


class OptimSection(Strict):
    lr_lora: float = 2e-4  # LoRA adapters on the decoder (or the full decoder when LoRA is off)
    lr_encoder: float = 5e-5  # the pretrained encoder, trained fully
    lr_projector: float | None = None  # the projector (random init), trained fully; None = lr_encoder
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # Projector alignment first, as multimodal LLMs do: the first `align_steps` optimizer steps train the encoder
    # and projector on the CTX state alone (decoder rows cut after CTX: about the encoder's cost), adapters idle.
    align_steps: int = 0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    micro_batch_size: int = 16  # per worker
    rows_per_pass: int | None = None  # length-sorted forward passes per micro-batch; None = micro_batch_size
    grad_accumulation: int = 1
    temperature: float = 0.05
    symmetric: bool = False
    # concat models only: each half of [h_ctx ; h_eos] is also trained to retrieve alone, at this weight (loss.py)
    halves_loss_weight: float = Field(0.0, ge=0.0)
    # models with a context encoder only: the encoder's pooled vector is also trained to retrieve alone (loss.py)
    encoder_loss_weight: float = Field(0.0, ge=0.0)
    encoder_temperature: float = Field(0.05, gt=0.0)  # sentence-transformers' default, MiniLM's own setting


class DeepSpeedSection(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    # auto: bf16 on GPU, fp32 on CPU. true on CPU: bf16 autocast (fp32 weights and optimizer; CPUs with native
    # bf16 run its matmuls several times faster), since DeepSpeed's bf16 mode targets accelerators. native: bf16
    # on GPU and on CPUs with native bf16 (AVX512-BF16/AMX), fp32 on other CPUs, where bf16 is emulated and slower
    bf16: Literal["auto", "native", True, False] = "auto"


class RaySection(Strict):
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1
    gpus_per_worker: float = 1
    # custom Ray resources each Train worker needs, e.g. {a100_node: 1}: workers run only on nodes declaring them
    worker_resources: dict[str, float] = Field(default_factory=dict)
    storage_path: str = "./runs"
    name: str = "causal2vec"
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 1
    report_every_steps: int = 10
    fail_at_step: int | None = None  # fault-injection for tests: rank 1 dies once at this step

    @field_validator("worker_resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        if {"CPU", "GPU"} & set(value):
            raise ValueError("CPUs and GPUs are ray.cpus_per_worker / ray.gpus_per_worker; worker_resources holds "
                             "custom resources")
        return value


class TrainConfig(Strict):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    optim: OptimSection = Field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    ray: RaySection = Field(default_factory=RaySection)
    output_dir: str | None = None  # where rank 0 exports the final model (default: <storage>/<name>/model)
    merge_lora: bool = True

    @model_validator(mode="after")
    def _alignment_needs_ctx(self) -> TrainConfig:
        if self.optim.align_steps and self.model.use_ctx_token is False:
            raise ValueError("optim.align_steps trains the Contextual token's projector; the model has none "
                             "(model.use_ctx_token=false)")
        return self

    @property
    def export_dir(self) -> Path:
        return Path(self.output_dir or Path(self.ray.storage_path) / self.ray.name / "model").expanduser().resolve()


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply `section.key=value` overrides (values parsed as YAML)."""
    config = load(TrainConfig, "training config", path=path, sets=overrides)
    # Ray Train workers run in another directory: make every local path absolute here, on the driver
    config.ray.storage_path = absolute(config.ray.storage_path)
    for source in config.data.train:
        source.path = absolute(source.path)
    if config.data.dev:
        config.data.dev.corpus = absolute(config.data.dev.corpus)
        config.data.dev.queries = absolute(config.data.dev.queries)
    if config.model.init:
        config.model.init = absolute_if_exists(config.model.init)
    if config.output_dir:
        config.output_dir = absolute(config.output_dir)
    return config
