"""Training in one process on one device, without Ray or DeepSpeed: the same model, rows and order, loss, parameter
groups, schedules, clipping and dev evaluation as the Ray loop (loop.py).

For benches that time the step itself, and for a machine with a GPU but not the cluster stack (the lent accelerator
has no Ray or DeepSpeed). One process sees the whole global batch, so `micro_batch_size` here is the global batch:
InfoNCE over one worker x 2b equals 2 workers x b with the cross-worker gather (loss.py). No checkpoints or resume.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pyarrow as pa
import torch

from causal2vec import readers
from causal2vec.train.config import TrainConfig
from causal2vec.train.data import ORDER, TokenizePairs
from causal2vec.train.loop import build_model, dev_metrics, dev_task, encoder_loss_dim, micro_batch_loss, peak_memory_gb
from causal2vec.train.optim import cpu_autocast, group_schedules, parameter_groups


def training_rows(config: TrainConfig) -> pa.Table:
    """Every training source's valid rows as token columns, in the seeded order the Ray job uses
    (data.prepare_source). Several sources follow one another; the Ray job interleaves their batches instead
    (data.epoch_schedule), so with more than one source the two loops see batches in a different order."""
    tables = []
    for source in config.data.train:
        tokenize = TokenizePairs(config.model.source(), config.data.num_hard_negatives, source.instruction,
                                 config.data.seed)
        tables.append(tokenize(readers.read_table(source.path, what="training data")).sort_by(ORDER))
    return pa.concat_tables(tables)


def autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast with fp32 weights on a GPU when the config asks for bf16 (DeepSpeed would hold bf16 weights
    with fp32 master copies); on a CPU, what the Ray loop does (optim.cpu_autocast)."""
    if device.type != "cuda":
        return cpu_autocast(config, use_gpu=False)
    bf16 = config.deepspeed.bf16 in ("auto", "native", True) and torch.cuda.is_bf16_supported()
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_single(config: TrainConfig, rows: pa.Table, device: str | torch.device, *, steps: int,
                 report_every: int = 10, on_report: Callable[[dict], None] | None = None):
    """`steps` optimizer steps over `rows` (training_rows), cycling through them in order; returns (model,
    history). Every `report_every` steps, every `data.dev.every_steps` and the last a history row: loss, lr,
    samples/s and tokens/s over the window, peak memory, the pre-clip gradient norm, and dev nDCG@10 on the dev
    steps and the last."""
    device = torch.device(device)
    torch.manual_seed(config.data.seed)
    model = build_model(config).to(device)
    encoder_dim = encoder_loss_dim(model, config)
    groups = parameter_groups(model, config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_schedules(config, steps, groups))
    dev = dev_task(config) if config.data.dev else None
    dev_every = (dev is not None and config.data.dev.every_steps) or 0
    mb = config.optim.micro_batch_size
    per_epoch = rows.num_rows // mb
    if per_epoch == 0:
        raise ValueError(f"{rows.num_rows} training rows make no micro-batch of {mb}")
    history, window = [], {"loss": 0.0, "samples": 0, "tokens": 0, "norm": 0.0, "t0": time.perf_counter()}
    model.train()
    for step in range(1, steps + 1):
        loss, batch = micro_batch_loss(model, model.builder, rows.slice(((step - 1) % per_epoch) * mb, mb), config,
                                       device, steps_done=step - 1, encoder_dim=encoder_dim,
                                       precision=autocast(config, device), gather=False)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window["loss"] += loss.item()
        window["norm"] += float(norm)
        window["samples"] += batch.queries
        window["tokens"] += batch.tokens
        evaluate_dev = dev is not None and (step == steps or (dev_every > 0 and step % dev_every == 0))
        if step % report_every and step != steps and not evaluate_dev:
            continue
        n, elapsed = step - (history[-1]["step"] if history else 0), time.perf_counter() - window["t0"]
        row = {"step": step, "epoch": (step - 1) // per_epoch, "loss": window["loss"] / n,
               "lr": scheduler.get_last_lr()[0], "samples": step * mb, "samples_per_s": window["samples"] / elapsed,
               "tokens_per_s": window["tokens"] / elapsed, "peak_memory_gb": round(peak_memory_gb(), 2),
               "grad_norm": window["norm"] / n}
        if evaluate_dev:
            row |= dev_metrics(model, dev, config)
        history.append(row)
        if on_report:
            on_report(row)
        window.update(loss=0.0, samples=0, tokens=0, norm=0.0, t0=time.perf_counter())
    return model, history
