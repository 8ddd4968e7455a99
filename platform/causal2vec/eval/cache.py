"""An evaluation's embeddings written to disk in chunks, so that an interrupted run resumes where it stopped.

Embedding a 63k-document corpus with an LLM takes one to several hours on a CPU; without this an interruption
loses all of it. Each chunk is written atomically once embedded; a rerun loads the chunks it finds and embeds the
rest. Chunks live in a subfolder named by what made them: the texts, the instruction, the dtype and the model (its
embedding of a fixed probe text, as tables are identified: store/identity.py). Another model, dtype or text list
gets its own subfolder, so stale vectors never mix into a score and one cache folder serves any number of models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from causal2vec.store.identity import PROBE_TEXT

log = logging.getLogger(__name__)

CHUNK_ROWS = 4096  # ~4 min of SmolLM2 on a CPU in bf16: what an interruption costs at most


def encode_resumable(model, texts: Sequence[str], cache: str | Path, *, instruction: str | None = None,
                     batch_size: int = 64, chunk_rows: int = CHUNK_ROWS, show_progress: bool = False) -> np.ndarray:
    """`model.encode(texts, instruction)`, chunk by chunk through a subfolder of `cache` (created if missing)."""
    folder = chunk_folder(model, texts, cache, instruction=instruction, chunk_rows=chunk_rows)
    folder.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), chunk_rows)
    parts = []
    for number, start in enumerate(starts):
        path = folder / f"chunk-{number:05d}.npy"
        if path.exists():
            parts.append(np.load(path))
            continue
        if show_progress:
            log.info("embedding chunk %d/%d (rows %d-%d) into %s", number + 1, len(starts), start,
                     min(start + chunk_rows, len(texts)) - 1, folder)
        vectors = model.encode(texts[start:start + chunk_rows], instruction=instruction, batch_size=batch_size,
                               show_progress=show_progress)
        partial = path.with_name(path.stem + ".partial.npy")
        np.save(partial, vectors)
        os.replace(partial, path)  # atomic: a chunk file is either absent or whole
        parts.append(vectors)
    return np.concatenate(parts)


def chunk_folder(model, texts: Sequence[str], cache: str | Path, *, instruction: str | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> Path:
    """The subfolder of `cache` for these texts embedded by this model. The probe embedding is rounded to 3
    decimals: the same weights and dtype give the same name in any process (another model differs by far more)."""
    digest = hashlib.sha256(json.dumps([instruction, chunk_rows, str(getattr(model, "dtype", ""))]).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    digest.update((np.round(np.asarray(model.encode([PROBE_TEXT])[0], np.float64), 3) + 0.0).tobytes())  # no -0.0
    return Path(cache) / f"{len(texts)}-texts-{digest.hexdigest()[:16]}"
