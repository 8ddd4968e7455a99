"""The per-worker training loop: DeepSpeed engine, contrastive steps, metrics, checkpoint/resume, dev eval, export.

Runs inside a Ray Train worker (trainer.py) with torch.distributed already initialised (gloo on CPU, nccl on GPU).
Every rank runs the same sequence of collective calls: the same number of batches (equal shards), the same
reports (ray.train.report is a barrier), the same dev evaluations (ZeRO-3 gathers weights collectively).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from causal2vec.model.causal2vec import load_model
from causal2vec.model.inference import in_input_order
from causal2vec.train.config import TrainConfig
from causal2vec.train.data import TrainBatch, collate, epoch_schedule, iterate_epoch
from causal2vec.train.loss import batch_loss
from causal2vec.train.optim import (cpu_autocast, deepspeed_config, group_schedules, parameter_groups,
                                    skip_shm_comm_build)

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
DS_TAG = "deepspeed"


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint so a restart continues mid-epoch."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # micro-batches of this epoch already consumed (per rank)
    samples: int = 0  # queries seen, all ranks
    restarts: int = 0
    history: list[dict] = field(default_factory=list)  # every report so far, so a resumed run keeps its curve


def build_model(config: TrainConfig):
    """The model a run starts from, identical on every rank (presets are seeded, saved dirs are files)."""
    m = config.model
    model = load_model(m.source(), device="cpu", dtype="fp32")
    if config.optim.halves_loss_weight and model.config.pooling != "concat":
        raise ValueError(f"optim.halves_loss_weight trains the halves of a concat embedding; this model pools "
                         f"'{model.config.pooling}'")
    if m.lora.enabled and not model.has_lora:
        model.enable_lora(m.lora.settings())
    if m.gradient_checkpointing:
        # non-reentrant: the reentrant variant breaks under ZeRO-3 + LoRA ("Recomputed values ... differ")
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
        model.decoder.gradient_checkpointing_enable(**kwargs)
        if model.context_encoder is not None:
            model.context_encoder.encoder.gradient_checkpointing_enable(**kwargs)
    if config.optim.encoder_loss_weight and (model.context_encoder is None or not model.config.use_ctx_token):
        raise ValueError("optim.encoder_loss_weight trains the context encoder; this model has none")
    return model


def encoder_loss_dim(model, config: TrainConfig) -> int:
    """How many columns of pooled encoder vectors the loss reads after each embedding (loss.batch_loss): the
    encoder's width when `optim.encoder_loss_weight` trains them, else 0 (the forward then leaves them out)."""
    return model.context_encoder.encoder.config.hidden_size if config.optim.encoder_loss_weight else 0


def train_loop_per_worker(loop_config: dict) -> dict | None:
    """Entry point Ray Train runs on every worker. `loop_config`: {"config": TrainConfig dict, "sources": [...]}."""
    os.environ.update(loop_config.get("env", {}))  # before importing deepspeed: DS_ACCELERATOR=cpu on CPU runs
    import deepspeed
    import ray.train

    skip_shm_comm_build()
    config = TrainConfig.model_validate(loop_config["config"])
    sources = loop_config["sources"]  # [{"name", "rows"}], rows after validation
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config.ray.use_gpu else torch.device("cpu")
    torch.manual_seed(config.data.seed)

    model = build_model(config)
    builder = model.builder
    encoder_dim = encoder_loss_dim(model, config)
    mb, accum = config.optim.micro_batch_size, config.optim.grad_accumulation
    batches_per_source = [s["rows"] // world // mb for s in sources]
    micro_per_epoch = sum(batches_per_source)
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"not one optimizer step per epoch: {sum(s['rows'] for s in sources)} rows over {world} "
                         f"workers x micro-batch {mb} x accumulation {accum}; lower the batch or add data")
    total_steps = config.optim.epochs * steps_per_epoch
    if config.optim.max_steps:
        total_steps = min(total_steps, config.optim.max_steps)

    groups = parameter_groups(model, config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.optim.weight_decay)
    schedules = group_schedules(config, total_steps, groups)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(config, config.ray.use_gpu),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedules))

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory, tag=DS_TAG, load_module_strict=False)
            state = TrainState(**json.loads((Path(directory) / STATE_FILE).read_text()))
        state.restarts += 1
        log.info("rank %d resumed at step %d (epoch %d, micro-batch %d)", rank, state.step, state.epoch,
                 state.position)

    dev = dev_task(config) if config.data.dev else None
    shards = [ray.train.get_dataset_shard(f"train{i}") for i in range(len(sources))]
    window = {"loss": 0.0, "n": 0, "samples": 0, "tokens": 0, "grad_norm": 0.0, "steps": 0,
              "t0": time.perf_counter()}
    history = state.history
    engine.train()
    epochs = _epochs(shards, batches_per_source, steps_per_epoch * accum, config, state)
    for position, table in epochs:
        if state.step >= total_steps:  # resumed from the final checkpoint of a finished run
            break
        _maybe_fail(config, state, rank)
        loss, batch = micro_batch_loss(engine, builder, table, config, device, steps_done=state.step,
                                       encoder_dim=encoder_dim, precision=cpu_autocast(config, config.ray.use_gpu))
        b = batch.queries
        engine.backward(loss)
        engine.step()
        state.position = position + 1
        window["loss"] += loss.item()
        window["n"] += 1
        window["samples"] += b * world
        window["tokens"] += batch.tokens
        if state.position % accum:
            continue
        state.step += 1
        state.samples += b * world * accum
        window["grad_norm"] += float(engine.get_global_grad_norm() or 0.0)
        window["steps"] += 1
        last = state.step >= total_steps
        save = state.step % config.ray.checkpoint_every_steps == 0 and not last
        if state.step % config.ray.report_every_steps == 0 or save or last:
            metrics = _window_metrics(window, state, scheduler, world) | {"optimizer_step": _optimizer_step(engine)}
            if dev is not None and config.data.dev.every_steps and state.step % config.data.dev.every_steps == 0:
                metrics |= dev_metrics(engine.module, dev, config)
            history.append(metrics)
            if rank == 0:  # past Ray Train's print patch, which tees a wrapped stdout: the line would come twice
                print(progress_line(metrics, total_steps), file=sys.__stdout__, flush=True)
            if not last:  # the last step reports once, below, after the export
                _report(engine, state, metrics, save=save)
        if last:
            break

    if not history or history[-1]["step"] != state.step:
        history.append({"step": state.step})
    final = history[-1]  # the last step's metrics, completed in place with the dev score and the export
    if dev is not None and "dev_ndcg_at_10" not in final:  # not already evaluated at this step
        final |= dev_metrics(engine.module, dev, config)
    export_dir = config.export_dir
    _export(engine, config, rank, export_dir)
    final["export_dir"] = str(export_dir)
    _report(engine, state, final, save=True)
    where = {k: v for k, v in asdict(state).items() if k != "history"}
    return {"history": history, "state": where, "export_dir": str(export_dir)} if rank == 0 else None


def micro_batch_loss(model, builder, table, config: TrainConfig, device, *, steps_done: int, encoder_dim: int,
                     precision, gather: bool = True) -> tuple[torch.Tensor, TrainBatch]:
    """One micro-batch's forward and loss, as this loop and the single-process one (single.py) take them. During
    projector alignment (the first `optim.align_steps` steps) decoder rows are cut after CTX and only the CTX state
    trains; the adapters' learning rate is 0 then (optim.group_schedules). `precision`: the autocast context."""
    batch = collate(builder, table, config.optim.rows_per_pass, through_ctx=steps_done < config.optim.align_steps)
    with precision:
        embeddings = embed_passes(model, batch, device, with_encoder_vectors=encoder_dim > 0)
    return batch_loss(embeddings, batch.queries, config.optim, gather=gather, encoder_dim=encoder_dim), batch


def embed_passes(model, batch: TrainBatch, device, **forward) -> torch.Tensor:
    """Embeddings of every row of the micro-batch, in row order, one differentiable forward per pass."""
    return in_input_order([rows for rows, _ in batch.passes],
                          [model(part.to(device), **forward).float() for _, part in batch.passes])


def _epochs(shards, batches_per_source: list[int], micro_per_epoch: int, config: TrainConfig, state: TrainState):
    """(position, micro-batch) across epochs, continuing from `state` (mid-epoch after a resume)."""
    while state.epoch < config.optim.epochs:
        schedule = epoch_schedule(batches_per_source, config.data.seed, state.epoch)[:micro_per_epoch]
        yield from iterate_epoch(shards, schedule, config.optim.micro_batch_size, skip=state.position)
        state.epoch += 1
        state.position = 0


def _optimizer_step(engine) -> int:
    """The step count inside the optimizer's own state: proves a resume restored the optimizer, not just a
    counter."""
    optimizer = engine.optimizer
    while hasattr(optimizer, "optimizer"):  # DeepSpeed's ZeRO wrappers around the torch optimizer
        optimizer = optimizer.optimizer
    for state in optimizer.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def _window_metrics(window: dict, state: TrainState, scheduler, world: int) -> dict:
    """Loss averaged over ranks and the steps since the last report; throughput over the same window."""
    loss = torch.tensor([window["loss"] / max(1, window["n"])], dtype=torch.float64)
    tokens = torch.tensor([float(window["tokens"])], dtype=torch.float64)
    peak = torch.tensor([peak_memory_gb()], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(loss)
        dist.all_reduce(tokens)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        loss /= world
    elapsed = time.perf_counter() - window["t0"]
    metrics = {"step": state.step, "epoch": state.epoch, "loss": float(loss), "lr": scheduler.get_last_lr()[0],
               "samples_per_s": window["samples"] / elapsed, "tokens_per_s": float(tokens) / elapsed,
               "samples": state.samples, "restarts": state.restarts, "peak_memory_gb": round(float(peak), 2),
               "grad_norm": window["grad_norm"] / max(1, window["steps"])}  # before clipping (max_grad_norm)
    window.update(loss=0.0, n=0, samples=0, tokens=0, grad_norm=0.0, steps=0, t0=time.perf_counter())
    return metrics


def progress_line(metrics: dict, total_steps: int) -> str:
    """One console line per report: Ray forwards it to the driver, so a long run shows where it stands."""
    line = (f"step {metrics['step']}/{total_steps}  loss {metrics['loss']:.3f}  lr {metrics['lr']:.1e}  "
            f"grad norm {metrics['grad_norm']:.1f}  {metrics['samples_per_s']:.2f} samples/s  "
            f"peak {metrics['peak_memory_gb']:.1f} GB")
    if "dev_ndcg_at_10" in metrics:
        line += f"  dev nDCG@10 {metrics['dev_ndcg_at_10']:.4f}"
    return line


def peak_memory_gb() -> float:
    """This worker's peak memory so far: the GPU's allocator peak on GPU runs, the process's peak RSS on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _report(engine, state: TrainState, metrics: dict, *, save: bool) -> None:
    """One ray.train.report on every rank; with `save`, each rank adds its DeepSpeed shard to the checkpoint."""
    import ray.train

    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        engine.save_checkpoint(directory, tag=DS_TAG, exclude_frozen_parameters=True)
        if ray.train.get_context().get_world_rank() == 0:
            (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(state)))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _maybe_fail(config: TrainConfig, state: TrainState, rank: int) -> None:
    """Fault injection for tests: rank 1 dies once, hard, when it reaches `ray.fail_at_step`.

    It first waits a few of Ray Train's controller polls: the controller registers a reported checkpoint only when
    it next polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), so a crash within one poll of a
    checkpoint restarts from the one before it.
    """
    at = config.ray.fail_at_step
    if at is None or rank != 1 or state.step != at:
        return
    marker = Path(config.ray.storage_path) / config.ray.name / f".failed-at-{at}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
        os._exit(1)


def dev_task(config: TrainConfig):
    from causal2vec.eval.retrieval import RetrievalTask

    dev = config.data.dev
    task = RetrievalTask.from_files(dev.corpus, dev.queries, name="dev", description=dev.description,
                                    limit_queries=dev.limit_queries)
    return task.with_corpus_limit(dev.limit_corpus) if dev.limit_corpus else task


def dev_metrics(model, task, config: TrainConfig) -> dict:
    """Every rank evaluates (ZeRO-3 needs all ranks in each forward); all get the same numbers."""
    from causal2vec.eval.retrieval import evaluate

    was_training = model.training
    with cpu_autocast(config, config.ray.use_gpu):  # the training dtype: bf16 autocast makes CPU evals ~2x faster
        scores = evaluate(model, task, batch_size=64)
    model.train(was_training)
    return {"dev_ndcg_at_10": scores["ndcg_at_10"], "dev_recall_at_10": scores["recall_at_10"]}


def _export(engine, config: TrainConfig, rank: int, export_dir: Path) -> None:
    """Rank 0 writes a normal model directory. Under ZeRO-3 the weights are gathered from every rank first (all
    ranks enter the gather); the copy is then loaded into a fresh model, so LoRA merging never touches the
    engine's partitioned parameters."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank == 0:
        model = build_model(config.model_copy(update={"model": config.model.model_copy(
            update={"gradient_checkpointing": False})}))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "lora_" in k or "projector" in k]:
            raise RuntimeError(f"export: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.save_pretrained(export_dir, merge_lora=config.merge_lora)
        log.info("exported the trained model to %s", export_dir)
    if dist.is_initialized():
        dist.barrier()
