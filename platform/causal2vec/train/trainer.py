"""Ray Train wiring: prepare the data on the driver, then TorchTrainer + DeepSpeed workers (loop.py)."""

from __future__ import annotations

import logging

from causal2vec.train.config import TrainConfig
from causal2vec.train.data import prepare_source

log = logging.getLogger(__name__)


def run_training(config: TrainConfig):
    """Fit and return Ray Train's Result (`return_value` holds rank 0's history and export directory)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from causal2vec.train.loop import train_loop_per_worker

    sources, datasets = [], {}
    for i, source in enumerate(config.data.train):
        prepared = prepare_source(source.path, source.name or f"train{i}", config.model.source(),
                                  num_negatives=config.data.num_hard_negatives,
                                  default_instruction=source.instruction, seed=config.data.seed)
        log.info("%s: %d training rows (%d dropped)", prepared.name, prepared.rows, prepared.dropped)
        print(f"data {prepared.name}: {prepared.rows} rows, {prepared.dropped} dropped (missing/empty text or "
              f"too few hard negatives)", flush=True)
        sources.append({"name": prepared.name, "rows": prepared.rows, "dropped": prepared.dropped})
        datasets[f"train{i}"] = prepared.dataset

    worker_env = {} if config.ray.use_gpu else {"DS_ACCELERATOR": "cpu"}  # set by each worker before deepspeed
    resources = {"CPU": config.ray.cpus_per_worker, **config.ray.worker_resources}
    if config.ray.use_gpu:
        resources["GPU"] = config.ray.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(), "sources": sources, "env": worker_env},
        torch_config=TorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=config.ray.name, storage_path=config.ray.storage_path,
                             failure_config=FailureConfig(max_failures=config.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.ray.keep_checkpoints)),
        datasets=datasets,
    )
    return trainer.fit()
