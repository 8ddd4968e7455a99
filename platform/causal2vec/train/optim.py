"""What the optimiser sees: parameter groups and their learning rates, the per-group schedules, DeepSpeed's config
(and the op it need not build) and CPU bf16 autocast. The training loop (loop.py) and bench/train_throughput.py's
plain loop share them."""

from __future__ import annotations

import math

import torch

from causal2vec.model.devices import cpu_has_native_bf16
from causal2vec.train.config import TrainConfig


def parameter_groups(model, config: TrainConfig) -> list[dict]:
    """LoRA adapters (or the whole decoder without LoRA) at lr_lora; the pretrained encoder at lr_encoder; the
    projector, which starts from random weights, at lr_projector (default lr_encoder)."""
    o = config.optim
    groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": o.lr_lora,
               "name": "decoder"}]
    if model.context_encoder is not None:
        ctx = model.context_encoder
        groups.append({"params": [p for p in ctx.encoder.parameters() if p.requires_grad], "lr": o.lr_encoder,
                       "name": "encoder"})
        groups.append({"params": list(ctx.projector.parameters()), "lr": o.lr_projector or o.lr_encoder,
                       "name": "projector"})
    return groups


def lr_lambda(config: TrainConfig, total_steps: int, start: int = 0):
    """The learning-rate factor per step for a parameter group that starts training at step `start` (0 before it):
    linear warm-up over `warmup_steps`, then the schedule down to `total_steps`."""
    warmup, schedule = config.optim.warmup_steps, config.optim.schedule

    def factor(step: int) -> float:
        step -= start
        if step < 0:
            return 0.0
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - start - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def group_schedules(config: TrainConfig, total_steps: int, groups: list[dict]) -> list:
    """One lr factor per parameter group: the decoder's adapters wait out the projector-alignment steps."""
    return [lr_lambda(config, total_steps, config.optim.align_steps if g["name"] == "decoder" else 0)
            for g in groups]


def cpu_autocast(config: TrainConfig, use_gpu: bool):
    """bf16 autocast for CPU runs that ask for bf16 (see DeepSpeedSection.bf16); a no-op otherwise."""
    bf16 = config.deepspeed.bf16
    enabled = not use_gpu and (bf16 is True or (bf16 == "native" and cpu_has_native_bf16()))
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def deepspeed_config(config: TrainConfig, use_gpu: bool) -> dict:
    ds = config.deepspeed
    bf16 = use_gpu and ds.bf16 in ("auto", "native", True)
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": config.optim.micro_batch_size,
        "gradient_accumulation_steps": config.optim.grad_accumulation,
        "gradient_clipping": config.optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # torch AdamW with two parameter groups
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def skip_shm_comm_build() -> None:
    """DeepSpeed JIT-builds its shared-memory all-reduce when its comm backend starts (40-200 s of C++ on 2 cores,
    and again whenever another ninja version last wrote the shared torch-extensions cache), yet only its
    inference all-reduce uses it: ZeRO training all-reduces through torch.distributed. Marked unusable, it is not
    built; DeepSpeed keeps this dict for such edits."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
