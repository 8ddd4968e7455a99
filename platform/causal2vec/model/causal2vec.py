"""Causal2Vec: splice one Contextual token into a decoder-only LLM's input and pool [h_ctx ; h_eos].

The decoder's causal attention is left untouched; every text token can still see a summary of the whole text
because the CTX vector, computed by a small bidirectional encoder, sits before the text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from causal2vec.errors import Causal2VecError
from causal2vec.model.config import Causal2VecConfig, LoraSettings
from causal2vec.model.context_encoder import ContextEncoder
from causal2vec.model.devices import resolve_device, resolve_dtype
from causal2vec.model.tokenization import Batch, BatchBuilder, DecoderBatch, EncoderBatch, per_text, validate_texts

log = logging.getLogger(__name__)


class Causal2Vec(nn.Module):
    """The embedding model. Build with `from_pretrained` (saved dir or preset) or `from_config` (HF ids/paths)."""

    def __init__(self, config: Causal2VecConfig, context_encoder: ContextEncoder | None, decoder: nn.Module,
                 encoder_tokenizer, decoder_tokenizer):
        super().__init__()
        if config.use_ctx_token and context_encoder is None:
            raise Causal2VecError("use_ctx_token=True needs a context encoder")
        self.config = config
        self.context_encoder = context_encoder
        self.decoder = decoder
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.builder = BatchBuilder(encoder_tokenizer, decoder_tokenizer, config)

    # -- construction and persistence (the logic lives in io.py / presets.py) ------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path, *, device: str | None = None,
                        dtype: str | torch.dtype | None = None, **config_overrides) -> Causal2Vec:
        """Load a saved model directory, or build a named preset (`tiny`, `minilm-small`, ...).

        `config_overrides` change non-structural config fields, e.g. `max_decoder_length=128` or `pooling="last"`.
        """
        from causal2vec.model import io

        return io.load(path_or_preset, device=device, dtype=dtype, **config_overrides)

    @classmethod
    def from_config(cls, config: Causal2VecConfig, *, device: str | None = None,
                    dtype: str | torch.dtype | None = None, seed: int = 0) -> Causal2Vec:
        """Assemble a new model from an encoder and a decoder (HF ids or local paths); the projector starts fresh."""
        from causal2vec.model import io

        return io.build(config, device=device, dtype=dtype, seed=seed)

    def save_pretrained(self, path: str | Path, *, merge_lora: bool = False) -> Path:
        from causal2vec.model import io

        return io.save(self, path, merge_lora=merge_lora)

    # -- LoRA ----------------------------------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.decoder, PeftModel)

    def enable_lora(self, settings: LoraSettings | None = None, seed: int = 0) -> Causal2Vec:
        """Wrap the decoder with trainable LoRA adapters; the encoder and projector stay fully trainable.

        The adapters' random init is seeded, so every worker of a distributed run starts from the same model.
        """
        from peft import LoraConfig, get_peft_model

        from causal2vec.model.presets import seeded

        if self.has_lora:
            raise Causal2VecError("the decoder already has LoRA adapters")
        settings = settings or self.config.lora or LoraSettings()
        lora = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                          target_modules=_lora_targets(self.decoder, settings.target_modules))
        self.decoder = seeded(seed, lambda: get_peft_model(self.decoder, lora))
        if settings.train_norms:
            for module in self.decoder.modules():
                if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                    module.requires_grad_(True)
        self.config.lora = settings
        return self

    def merge_lora(self) -> Causal2Vec:
        """Fold the adapters into the decoder weights (faster inference, plain decoder on save)."""
        if self.has_lora:
            self.decoder = self.decoder.merge_and_unload()
            self.config.lora = None
        return self

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.decoder.get_input_embeddings().embedding_dim

    @property
    def embedding_dim(self) -> int:
        return 2 * self.hidden_size if self.config.pooling == "concat" else self.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.get_input_embeddings().weight.dtype

    # -- the two stages (serving runs them in separate replicas) -------------------------------------------------
    def context_vectors(self, batch: EncoderBatch) -> torch.Tensor:
        """Encoder stage: texts -> one CTX vector each, already in the decoder's hidden size and dtype."""
        return self.context_encoder(batch.input_ids, batch.attention_mask).to(self.dtype)

    def decoder_hidden_states(self, batch: DecoderBatch, ctx: torch.Tensor | None) -> torch.Tensor:
        """Last hidden states of the decoder over the full layout, with CTX spliced in at `ctx_index`."""
        embeds = self.decoder.get_input_embeddings()(batch.input_ids)
        if self.config.use_ctx_token:
            if ctx is None:
                raise Causal2VecError("this model needs CTX vectors for the decoder stage")
            rows = torch.arange(embeds.shape[0], device=embeds.device)
            embeds = embeds.index_put((rows, batch.ctx_index), ctx.to(embeds.dtype))
        out = self.decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False)
        return out.last_hidden_state

    def pool(self, hidden: torch.Tensor, batch: DecoderBatch, normalize: bool | None = None) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        mode = self.config.pooling
        if mode == "mean":
            mask = batch.pool_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        elif mode == "last":
            pooled = hidden[rows, batch.eos_index]
        elif mode == "ctx":
            pooled = hidden[rows, batch.ctx_index]
        else:  # concat: [h_ctx ; h_eos]
            pooled = torch.cat([hidden[rows, batch.ctx_index], hidden[rows, batch.eos_index]], dim=-1)
        normalize = self.config.normalize if normalize is None else normalize
        return F.normalize(pooled.float(), dim=-1).to(pooled.dtype) if normalize else pooled

    def embed_with_context(self, batch: DecoderBatch, ctx: torch.Tensor | None,
                           normalize: bool | None = None) -> torch.Tensor:
        """Decoder stage: decoder batch + CTX vectors -> embeddings."""
        return self.pool(self.decoder_hidden_states(batch, ctx), batch, normalize)

    def forward(self, batch: Batch, normalize: bool | None = None) -> torch.Tensor:
        """Both stages, differentiable: what training calls."""
        ctx = self.context_vectors(batch.encoder) if batch.encoder is not None else None
        return self.embed_with_context(batch.decoder, ctx, normalize)

    # -- the one public inference entry --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], instruction: str | Sequence[str | None] | None = None, *,
               batch_size: int = 32, normalize: bool | None = None, show_progress: bool = False) -> np.ndarray:
        """Embed texts -> float32 array [n, embedding_dim], in input order.

        Texts are processed longest-first so each batch holds similar lengths (less padding); the output is put
        back in input order. `instruction` (one for all, or one per text) goes to the decoder only.
        """
        texts = validate_texts(texts)
        if batch_size < 1:
            raise Causal2VecError(f"batch_size must be >= 1, got {batch_size}")
        instructions = per_text(instruction, len(texts))
        out = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():  # not inference_mode: ZeRO-3's parameter hooks run here during training evals
                for start in tqdm(range(0, len(order), batch_size), desc="embedding", unit="batch",
                                  disable=not show_progress):
                    idx = order[start:start + batch_size]
                    batch = self.builder([texts[i] for i in idx], [instructions[i] for i in idx]).to(self.device)
                    out[idx] = self(batch, normalize).float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def to_device(self, device: str | None = None, dtype: str | torch.dtype | None = None) -> Causal2Vec:
        device = resolve_device(device)
        return self.to(device=device, dtype=resolve_dtype(dtype, device))


def _lora_targets(decoder: nn.Module, targets: list[str] | str | None) -> list[str] | None:
    """`all-linear`: every linear layer of the decoder (attention and MLP) but BERT's unused pooler, by full name.
    None: peft's default for the architecture (Llama/Qwen2/Mistral/GPT-2 attention projections); BERT-as-decoder
    needs naming."""
    if targets == "all-linear":
        return sorted(name for name, module in decoder.named_modules()
                      if isinstance(module, nn.Linear) and "pooler" not in name)
    if targets is None and getattr(decoder.config, "model_type", None) == "bert":
        return ["query", "value"]
    return targets
