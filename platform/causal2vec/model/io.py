"""The saved model directory: read its description, write a model into it atomically. Nothing is pickled.

    causal2vec.json          {"format_version", "library_version", "config", "lora_adapter"}
    encoder/                 HF encoder weights + its tokenizer
    decoder/                 HF decoder weights (full, or the LoRA base) + its tokenizer
    decoder_lora/            peft adapter, only when saved with unmerged LoRA
    projector.safetensors    the MLP that maps the encoder's pooled vector into the decoder's hidden size
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causal2vec.errors import Causal2VecError
from causal2vec.model.config import Causal2VecConfig
from causal2vec.model.presets import PRESETS
from causal2vec.version import __version__

MODEL_FILE = "causal2vec.json"
ENCODER_DIR, DECODER_DIR, ADAPTER_DIR, PROJECTOR_FILE = "encoder", "decoder", "decoder_lora", "projector.safetensors"


@dataclass
class SavedModel:
    """A saved model directory, described (no weights read yet)."""

    root: Path
    config: Causal2VecConfig  # with the caller's overrides applied
    adapter: str | None  # the LoRA adapter's directory when saved unmerged

    def path(self, ref: str) -> str:
        """A part's directory: `encoder` / `decoder` inside the model, or the hub id a config still names."""
        local = self.root / ref
        return str(local) if local.exists() else ref

    def projector_state(self) -> dict:
        from safetensors.torch import load_file

        return load_file(self.root / PROJECTOR_FILE)


def read(name: str, overrides: dict[str, Any] | None = None) -> SavedModel:
    """A saved model directory's description; `overrides` change non-structural config fields (pooling, lengths)."""
    root = Path(name).expanduser()
    if not (root / MODEL_FILE).is_file():
        hint = f"no {MODEL_FILE} in that directory" if root.is_dir() else "no such directory"
        raise Causal2VecError(f"cannot load Causal2Vec model {name!r}: {hint}. Pass a directory written by "
                              f"save_pretrained or a preset ({', '.join(PRESETS)})")
    meta = json.loads((root / MODEL_FILE).read_text())
    config = dataclasses.replace(Causal2VecConfig.from_dict(meta["config"]), **(overrides or {}))
    return SavedModel(root, config, meta.get("lora_adapter"))


def save(model, path: str | Path, *, merge_lora: bool = False) -> Path:
    """Write the directory format atomically (a temp dir renamed into place), so a crash leaves no half model.

    `merge_lora=True` merges the adapters into this model's decoder first (in place)."""
    from safetensors.torch import save_file

    if model.part != "all":
        raise Causal2VecError(f"this model holds only its {model.part} part; save a model loaded whole")
    if merge_lora:
        model.merge_lora()
    target = Path(path).expanduser().resolve()
    if target.exists() and not (target / MODEL_FILE).is_file() and any(target.iterdir()):
        raise Causal2VecError(f"refusing to overwrite {target}: it exists and is not a Causal2Vec model directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if model.context_encoder is not None:
            model.context_encoder.encoder.save_pretrained(tmp / ENCODER_DIR)
            model.encoder_tokenizer.save_pretrained(tmp / ENCODER_DIR)
            projector = model.context_encoder.projector.state_dict()
            save_file({k: v.detach().contiguous().cpu() for k, v in projector.items()}, tmp / PROJECTOR_FILE)
        if model.has_lora:
            _base_decoder_save(model.decoder, tmp / DECODER_DIR)
            model.decoder.save_pretrained(tmp / ADAPTER_DIR)
        else:
            model.decoder.save_pretrained(tmp / DECODER_DIR)
        model.decoder_tokenizer.save_pretrained(tmp / DECODER_DIR)
        config = dataclasses.replace(model.config, encoder=ENCODER_DIR, decoder=DECODER_DIR,
                                     encoder_source=model.config.encoder_source or model.config.encoder,
                                     decoder_source=model.config.decoder_source or model.config.decoder)
        meta = {"format_version": config.format_version, "library_version": __version__,
                "config": config.to_dict(), "lora_adapter": ADAPTER_DIR if model.has_lora else None}
        (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _base_decoder_save(peft_decoder, directory: Path) -> None:
    """Save the LoRA base as a plain HF model: strip adapter weights and peft's `base_layer` indirection."""
    base = peft_decoder.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(directory, state_dict=state)
