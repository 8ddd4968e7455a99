"""The identity of the model that wrote a table, stored in its schema metadata, and refusing any other model.

The identity is the model's name, config fingerprint, dim, pooling, normalisation, and a probe embedding. Vectors
from another model live in another space and would return confident nonsense, so search and resume refuse a model
whose identity does not match.

Why a probe embedding: the config fingerprint leaves out the weights (a fine-tuned model shares its base's config),
and hashing gigabytes of weights in every process that searches is slow. Embedding one fixed text is cheap and
compares what matters, the embedding function; a cosine tolerance lets an fp32-written table be searched by a bf16
replica of the same model.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from causal2vec.errors import Causal2VecError

META_KEY = "causal2vec"
PROBE_TEXT = "Causal2Vec identity probe: a fixed sentence whose embedding identifies the model's weights."
PROBE_MIN_COSINE = 0.99  # same weights in fp32 vs bf16 agree far above this; different weights fall far below

_IDENTITIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def describe(config, dim: int, dtype, probe, name: str | None = None) -> dict[str, Any]:
    """An identity (JSON-able) from a model's config, embedding size, dtype and embedding of PROBE_TEXT. Serve's
    ingress builds one this way from its deployments, holding no model itself."""
    return {
        "model": name or config.decoder_source or config.decoder,
        "fingerprint": config.fingerprint(),
        "dim": int(dim),
        "pooling": config.pooling,
        "normalize": bool(config.normalize),
        "encoder": config.encoder_source or config.encoder,
        "decoder": config.decoder_source or config.decoder,
        "dtype": str(dtype).removeprefix("torch."),
        "probe": [round(float(x), 6) for x in probe],
    }


def model_identity(model, name: str | None = None) -> dict[str, Any]:
    """What a table records about a (whole) model that wrote it. `name`: the preset or directory it was loaded from
    (models do not know their own path). Computed once per model object, so searching costs no extra forward pass
    per query (a model trained in place after that keeps its first identity)."""
    if model not in _IDENTITIES:
        _IDENTITIES[model] = describe(model.config, model.embedding_dim, model.dtype, model.encode([PROBE_TEXT])[0])
    identity = dict(_IDENTITIES[model])
    if name:
        identity["model"] = name
    return identity


def table_identity(table) -> dict[str, Any]:
    """The identity stored on a table by `embed-corpus`."""
    meta = table.schema.metadata or {}
    raw = meta.get(META_KEY.encode())
    if raw is None:
        raise Causal2VecError(f"table {table.name!r} has no causal2vec model metadata: it was not written by "
                              "`causal2vec embed-corpus`, so no model can be checked against it")
    return json.loads(raw)


def identity_mismatch(stored: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """Why `candidate` cannot search vectors made by `stored`, or None when they match."""
    import numpy as np

    if stored["dim"] != candidate["dim"]:
        return f"embedding dim {candidate['dim']} != the table's {stored['dim']}"
    if stored["fingerprint"] != candidate["fingerprint"]:
        diffs = [f"{k} {candidate.get(k)!r} vs {stored.get(k)!r}" for k in ("pooling", "normalize")
                 if stored.get(k) != candidate.get(k)]
        return "config fingerprint differs" + (f" ({', '.join(diffs)})" if diffs else "")
    a, b = np.asarray(stored["probe"], np.float64), np.asarray(candidate["probe"], np.float64)
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    if cosine < PROBE_MIN_COSINE:
        return f"same config but different weights (probe embedding cosine {cosine:.3f} < {PROBE_MIN_COSINE})"
    return None


def check_model(table, model, name: str | None = None) -> dict[str, Any]:
    """Refuse a model that did not write this table. `model`: a Causal2Vec model or an identity dict (what a
    process that holds no model, e.g. a Serve ingress, has). Returns the table's identity."""
    stored = table_identity(table)
    candidate = model if isinstance(model, dict) else model_identity(model, name)
    why = identity_mismatch(stored, candidate)
    if why:
        raise Causal2VecError(f"model {candidate['model']!r} does not match table {table.name!r}, which was embedded "
                              f"with model {stored['model']!r}: {why}. Search with the table's model, or re-embed "
                              "the corpus with this one")
    return stored
