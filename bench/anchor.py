"""The same-run anchor: all-MiniLM-L6-v2 fine-tuned alone with sentence-transformers on the same pairs.

Causal2Vec puts a decoder LLM after this very encoder; the decoder earns its cost only if the combined model beats
the encoder trained alone on the same data. MultipleNegativesRankingLoss (in-batch negatives InfoNCE) with the same
global batch, max length and number of pairs as the Causal2Vec run, scored by the same evaluator (`Anchor.encode`
has Causal2Vec's signature; MiniLM takes no instruction). Its temperature stays at sentence-transformers' default
(scale 20 = t 0.05), MiniLM's own best-known setting: the anchor is not handicapped with the LLM's t=0.02.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


class Anchor:
    """A sentence-transformers model behind Causal2Vec's `encode` signature, for the local evaluator."""

    def __init__(self, model):
        self.model = model

    @property
    def dtype(self):
        return self.model.dtype

    def encode(self, texts, instruction=None, *, batch_size: int = 64, show_progress: bool = False,
               normalize: bool | None = None) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                                    normalize_embeddings=True, convert_to_tensor=True)
        return vectors.float().cpu().numpy()


def train_anchor(pairs: Path, out: Path, *, samples: int, batch_size: int, lr: float = 5e-5,
                 temperature: float = 0.05, max_length: int = 128, warmup_steps: int = 10, seed: int = 0,
                 bf16: bool = False, negatives: int = 0, device: str | None = None) -> dict:
    """Fine-tune all-MiniLM-L6-v2 on the first `samples` pairs of a shuffled `pairs` file; save it to `out`.
    `bf16` autocast is off by default: through the HF Trainer it measured slower than fp32 here (14 vs 10 s/step).
    `negatives`: that many of each pair's mined hard negatives (the file's `negatives` column) join the in-batch
    ones, as they do for the Causal2Vec run. `device`: default the GPU if there is one, else the CPU."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

    from causal2vec.model.devices import resolve_device
    from causal2vec.model.presets import minilm_path

    table = pq.read_table(pairs, columns=["query", "positive"] + (["negatives"] if negatives else []))
    order = np.random.default_rng(seed).permutation(table.num_rows)[:samples]
    table = table.take(order)
    columns = {"anchor": table["query"].to_pylist(), "positive": table["positive"].to_pylist()}
    for k in range(negatives):
        columns[f"negative_{k + 1}"] = [row[k] for row in table["negatives"].to_pylist()]
    data = Dataset.from_dict(columns)
    device = resolve_device(device)
    model = SentenceTransformer(str(minilm_path()), device=str(device))
    model.max_seq_length = max_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=1, max_steps=samples // batch_size,
        per_device_train_batch_size=batch_size, learning_rate=lr, warmup_steps=warmup_steps,
        lr_scheduler_type="linear", batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
        logging_steps=10, report_to="none", seed=seed, use_cpu=device.type == "cpu", dataloader_drop_last=True,
        bf16=bf16)
    loss = losses.MultipleNegativesRankingLoss(model, scale=1.0 / temperature)
    started = time.perf_counter()
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    wall = time.perf_counter() - started
    model.save(str(out / "model"))
    steps = samples // batch_size
    return {"model": "all-MiniLM-L6-v2 fine-tuned alone (sentence-transformers, MultipleNegativesRankingLoss)",
            "pairs": steps * batch_size, "steps": steps, "batch_size": batch_size, "lr": lr,
            "temperature": temperature, "max_length": max_length, "bf16": bf16, "hard_negatives": negatives,
            "train_s": round(wall, 1),
            "samples_per_s": round(steps * batch_size / wall, 2), "model_dir": str(out / "model")}


def load_anchor(model_dir: str | Path, dtype: str = "fp32", device: str | None = None) -> Anchor:
    """`dtype` and `device` as for Causal2Vec.from_pretrained: the anchor is embedded like the model it is compared
    with."""
    import torch
    from sentence_transformers import SentenceTransformer

    from causal2vec.model.devices import resolve_device

    model = SentenceTransformer(str(model_dir), device=str(resolve_device(device)))
    return Anchor(model.to(torch.bfloat16) if dtype == "bf16" else model)
