"""Building blocks of a model: Hugging Face parts loaded by source, the projector, and parts placed on a device.

Imports inside model/ run one way: this module knows nothing of presets, saved directories or the Causal2Vec class;
those build on it (presets, io -> sources -> causal2vec).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from causal2vec.errors import Causal2VecError
from causal2vec.model import gguf
from causal2vec.model.config import Causal2VecConfig
from causal2vec.model.context_encoder import ContextEncoder, Projector
from causal2vec.model.devices import resolve_device, resolve_dtype


@dataclass
class Parts:
    """What a Causal2Vec model is made of. `context_encoder` or `decoder` is None when only the other part was
    loaded (an encoder replica never holds the LLM); both tokenizers are always there (they are small)."""

    config: Causal2VecConfig
    context_encoder: ContextEncoder | None
    decoder: nn.Module | None
    encoder_tokenizer: Any
    decoder_tokenizer: Any


def seeded(seed: int, make: Callable):
    """Run `make` under a fixed torch seed without disturbing the caller's RNG state: every process (Ray worker,
    replica) that builds a random-init part gets the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def assemble_parts(config: Causal2VecConfig, encoder: nn.Module | None, decoder: nn.Module | None, encoder_tokenizer,
                   decoder_tokenizer, *, projector_state: dict | None = None, decoder_hidden: int | None = None,
                   device=None, dtype=None, seed: int = 0) -> Parts:
    """Wrap a loaded encoder with its projector and place every part on the device and dtype.

    The projector maps into the decoder's hidden size: `decoder_hidden` says it when the decoder is not loaded.
    A fresh projector is drawn under `seed`; `projector_state` restores a trained one."""
    if decoder is not None and decoder.config.is_encoder_decoder:
        raise Causal2VecError(f"{config.decoder!r} is an encoder-decoder model; Causal2Vec needs a decoder-only LLM")
    context_encoder = None
    if config.use_ctx_token and encoder is not None:
        freeze_pooler(encoder)
        out_dim = decoder.get_input_embeddings().embedding_dim if decoder is not None else decoder_hidden
        projector = seeded(seed, lambda: Projector(encoder.config.hidden_size, out_dim, config.projector_hidden,
                                                   config.projector_init))
        if projector_state is not None:
            projector.load_state_dict(projector_state)
        context_encoder = ContextEncoder(encoder, projector, config.encoder_pooling)
    if decoder is not None:
        freeze_pooler(decoder)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    for module in (context_encoder, decoder):
        if module is not None:
            module.to(device=device, dtype=dtype).eval()
    return Parts(config, context_encoder, decoder, encoder_tokenizer or decoder_tokenizer, decoder_tokenizer)


def local_source(name_or_path: str) -> str:
    """What transformers loads for a part's source: GGUF files become their cached dequantized directory."""
    return str(gguf.local_dir(name_or_path)) if gguf.is_gguf(name_or_path) else name_or_path


def load_hf_part(name_or_path: str, role: str, attn_implementation: str | None = None) -> nn.Module:
    """An encoder or decoder's weights, named by hub id, local directory or GGUF file."""
    from transformers import AutoModel

    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return hf_call(name_or_path, role, lambda: AutoModel.from_pretrained(local_source(name_or_path), **options))


def load_tokenizer(name_or_path: str, role: str):
    from transformers import AutoTokenizer

    return hf_call(name_or_path, role, lambda: AutoTokenizer.from_pretrained(local_source(name_or_path)))


def hidden_size(name_or_path: str, role: str = "decoder") -> int:
    """A part's hidden size from its config alone (no weights)."""
    from transformers import AutoConfig

    return hf_call(name_or_path, role, lambda: AutoConfig.from_pretrained(local_source(name_or_path))).hidden_size


def hf_call(name_or_path: str, role: str, loader: Callable):
    try:
        return loader()
    except OSError as exc:  # HF raises OSError for a missing local dir, an unknown id, or no network
        raise Causal2VecError(f"cannot load the {role} {name_or_path!r}: {exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0]}. Pass an existing local directory, or a hub id "
                              "reachable from this machine") from exc


def freeze_pooler(model: nn.Module) -> None:
    """BERT's pooler is unused here: frozen, it stays out of the optimizer and of distributed gradient reduction,
    while the saved checkpoint stays a complete, standard HF model."""
    if getattr(model, "pooler", None) is not None:
        model.pooler.requires_grad_(False)
