"""Build, save and load Causal2Vec models. Nothing is pickled.

A saved model is a directory:
    causal2vec.json          {"format_version", "library_version", "config", "lora_adapter"}
    encoder/                 HF encoder weights + its tokenizer
    decoder/                 HF decoder weights (full, or the LoRA base) + its tokenizer
    decoder_lora/            peft adapter, only when saved with unmerged LoRA
    projector.safetensors    the MLP that maps the encoder's pooled vector into the decoder's hidden size
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from causal2vec.errors import Causal2VecError
from causal2vec.model import gguf
from causal2vec.model.causal2vec import Causal2Vec
from causal2vec.model.config import Causal2VecConfig
from causal2vec.model.context_encoder import ContextEncoder, Projector
from causal2vec.model.tokenization import BatchBuilder

log = logging.getLogger(__name__)

MODEL_FILE = "causal2vec.json"
ENCODER_DIR, DECODER_DIR, ADAPTER_DIR, PROJECTOR_FILE = "encoder", "decoder", "decoder_lora", "projector.safetensors"


def assemble(config: Causal2VecConfig, encoder: nn.Module | None, decoder: nn.Module, encoder_tokenizer,
             decoder_tokenizer, *, projector_state: dict | None = None, device=None, dtype=None,
             seed: int = 0) -> Causal2Vec:
    """Put loaded parts together into a model on the requested device and dtype."""
    if decoder.config.is_encoder_decoder:
        raise Causal2VecError(f"{config.decoder!r} is an encoder-decoder model; Causal2Vec needs a decoder-only LLM")
    context_encoder = None
    if config.use_ctx_token:
        if encoder is None:
            raise Causal2VecError("use_ctx_token=True needs an encoder")
        _freeze_pooler(encoder)
        from causal2vec.model.presets import seeded

        projector = seeded(seed, lambda: Projector(encoder.config.hidden_size,
                                                   decoder.get_input_embeddings().embedding_dim,
                                                   config.projector_hidden))
        if projector_state is not None:
            projector.load_state_dict(projector_state)
        context_encoder = ContextEncoder(encoder, projector, config.encoder_pooling)
    _freeze_pooler(decoder)
    model = Causal2Vec(config, context_encoder, decoder, encoder_tokenizer, decoder_tokenizer)
    return model.to_device(device, dtype).eval()


def build(config: Causal2VecConfig, *, device=None, dtype=None, seed: int = 0) -> Causal2Vec:
    """A new model from an encoder and a decoder named by HF id or local path; the projector starts fresh."""
    encoder, enc_tok = load_hf_encoder(config.encoder) if config.use_ctx_token else (None, None)
    decoder, dec_tok = load_hf_decoder(config.decoder, config.attn_implementation)
    config = dataclasses.replace(config, encoder_source=config.encoder_source or config.encoder,
                                 decoder_source=config.decoder_source or config.decoder)
    model = assemble(config, encoder, decoder, enc_tok or dec_tok, dec_tok, device=device, dtype=dtype, seed=seed)
    if config.lora is not None:
        model.enable_lora(config.lora)
    return model


def load(path_or_preset: str | Path, *, device=None, dtype=None, **config_overrides) -> Causal2Vec:
    """A saved model directory or a preset; `config_overrides` change non-structural fields (pooling, lengths)."""
    from causal2vec.model import presets

    name = str(path_or_preset)
    if name in presets.PRESETS:
        return presets.build(name, device=device, dtype=dtype, **config_overrides)
    root, meta, config = _saved_model(name, config_overrides)
    encoder, enc_tok = (load_hf_encoder(_resolve(root, config.encoder)) if config.use_ctx_token else (None, None))
    decoder, dec_tok = load_hf_decoder(_resolve(root, config.decoder), config.attn_implementation)
    projector_state = load_file(root / PROJECTOR_FILE) if config.use_ctx_token else None
    adapter = meta.get("lora_adapter")
    lora = config.lora
    config = dataclasses.replace(config, lora=None)  # the adapter below restores it
    model = assemble(config, encoder, decoder, enc_tok or dec_tok, dec_tok, projector_state=projector_state,
                     device=device, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model.decoder = PeftModel.from_pretrained(model.decoder, root / adapter, is_trainable=False)
        model.config.lora = lora
    return model.eval()


def load_for_stage(spec: str | Path, device: str | None = None, dtype: str | None = None, part: str = "all"):
    """(model, device) for one stage of a split deployment (bulk pipeline actors, Serve replicas).

    On an accelerator the `encoder` stage loads on CPU and moves only the context encoder to the device, so a
    fractional GPU holds the small encoder, not the LLM (the decoder weights stay in host memory).
    """
    from causal2vec.model.devices import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if part == "encoder" and dev.type != "cpu":
        model = load(spec, device="cpu", dtype=dt)
        model.context_encoder.to(dev)
        return model.eval(), dev
    return load(spec, device=str(dev), dtype=dt).eval(), dev


def load_builder(path_or_preset: str | Path, **config_overrides) -> BatchBuilder:
    """Just the tokenizers and config of a model (no weights): what data-pipeline tasks need to tokenize."""
    from transformers import AutoTokenizer

    from causal2vec.model import presets

    name = str(path_or_preset)
    if name in presets.PRESETS:
        preset = presets.get(name)
        return BatchBuilder(*preset.tokenizers(), dataclasses.replace(preset.config(), **config_overrides))
    root, _, config = _saved_model(name, config_overrides)
    dec_tok = AutoTokenizer.from_pretrained(_resolve(root, config.decoder))
    enc_tok = AutoTokenizer.from_pretrained(_resolve(root, config.encoder)) if config.use_ctx_token else dec_tok
    return BatchBuilder(enc_tok, dec_tok, config)


def load_builder_for_ids(encoder: str, decoder: str, **config_overrides) -> BatchBuilder:
    """Tokenizers + config for a new model assembled from HF ids or paths (see `build`)."""
    from transformers import AutoTokenizer

    config = Causal2VecConfig(encoder=encoder, decoder=decoder, **config_overrides)
    dec_tok = _hf_load(decoder, "decoder", lambda: AutoTokenizer.from_pretrained(local_source(decoder)))
    enc_tok = _hf_load(encoder, "encoder", lambda: AutoTokenizer.from_pretrained(local_source(encoder))) \
        if config.use_ctx_token else dec_tok
    return BatchBuilder(enc_tok, dec_tok, config)


def _saved_model(name: str, config_overrides: dict) -> tuple[Path, dict, Causal2VecConfig]:
    """A saved model directory's root, its causal2vec.json, and its config with the overrides applied."""
    from causal2vec.model import presets

    root = Path(name).expanduser()
    if not (root / MODEL_FILE).is_file():
        hint = f"no {MODEL_FILE} in that directory" if root.is_dir() else "no such directory"
        raise Causal2VecError(f"cannot load Causal2Vec model {name!r}: {hint}. Pass a directory written by "
                              f"save_pretrained or a preset ({', '.join(presets.PRESETS)})")
    meta = json.loads((root / MODEL_FILE).read_text())
    return root, meta, dataclasses.replace(Causal2VecConfig.from_dict(meta["config"]), **config_overrides)


def save(model: Causal2Vec, path: str | Path, *, merge_lora: bool = False) -> Path:
    """Write the directory format atomically (a temp dir renamed into place), so a crash leaves no half model.

    `merge_lora=True` merges the adapters into this model's decoder first (in place).
    """
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
            save_file({k: v.detach().contiguous().cpu() for k, v in model.context_encoder.projector.state_dict().items()},
                      tmp / PROJECTOR_FILE)
        if model.has_lora:
            _base_decoder_save(model.decoder, tmp / DECODER_DIR)
            model.decoder.save_pretrained(tmp / ADAPTER_DIR)
        else:
            model.decoder.save_pretrained(tmp / DECODER_DIR)
        model.decoder_tokenizer.save_pretrained(tmp / DECODER_DIR)
        config = dataclasses.replace(model.config, encoder=ENCODER_DIR, decoder=DECODER_DIR,
                                     encoder_source=model.config.encoder_source or model.config.encoder,
                                     decoder_source=model.config.decoder_source or model.config.decoder)
        meta = {"format_version": config.format_version, "library_version": _library_version(),
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


# -- Hugging Face parts -------------------------------------------------------------------------------------------
def local_source(name_or_path: str) -> str:
    """What transformers loads for a source: GGUF files become their cached dequantized directory (gguf.py)."""
    return str(gguf.local_dir(name_or_path)) if gguf.is_gguf(name_or_path) else name_or_path


def load_hf_encoder(name_or_path: str):
    from transformers import AutoModel, AutoTokenizer

    def load():
        path = local_source(name_or_path)
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    return _hf_load(name_or_path, "encoder", load)


def load_hf_decoder(name_or_path: str, attn_implementation: str = "sdpa"):
    from transformers import AutoModel, AutoTokenizer

    def load():
        path = local_source(name_or_path)
        return AutoModel.from_pretrained(path, attn_implementation=attn_implementation), \
            AutoTokenizer.from_pretrained(path)

    return _hf_load(name_or_path, "decoder", load)


def _hf_load(name_or_path: str, role: str, loader):
    try:
        return loader()
    except OSError as exc:  # HF raises OSError for a missing local dir, an unknown id, or no network
        raise Causal2VecError(f"cannot load the {role} {name_or_path!r}: {exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0]}. Pass an existing local directory, or a hub id "
                              "reachable from this machine") from exc


def _freeze_pooler(model: nn.Module) -> None:
    """BERT's pooler is unused here: frozen, it stays out of the optimizer and of distributed gradient reduction,
    while the saved checkpoint stays a complete, standard HF model."""
    if getattr(model, "pooler", None) is not None:
        model.pooler.requires_grad_(False)


def _base_decoder_save(peft_decoder, directory: Path) -> None:
    """Save the LoRA base as a plain HF model: strip adapter weights and peft's `base_layer` indirection."""
    base = peft_decoder.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(directory, state_dict=state)


def _resolve(root: Path, ref: str) -> str:
    local = root / ref
    return str(local) if local.exists() else ref


def _library_version() -> str:
    from causal2vec import __version__

    return __version__

