"""Causal2Vec: splice one Contextual token into a decoder-only LLM's input and pool [h_ctx ; h_eos].

The decoder's causal attention is left untouched; every text token can still see a summary of the whole text
because the CTX vector, computed by a small bidirectional encoder, sits before the text.

`load_model(source, part=...)` is the one way a model is loaded (presets, saved directories, HF / GGUF parts);
`Causal2Vec.from_pretrained` / `from_config` are its spellings on the class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from causal2vec.errors import Causal2VecError
from causal2vec.model import io, pooling
from causal2vec.model.build import assemble_parts, seeded
from causal2vec.model.config import Causal2VecConfig, LoraSettings
from causal2vec.model.context_encoder import ContextEncoder
from causal2vec.model.devices import resolve_device, resolve_dtype
from causal2vec.model.inference import decoder_pass, encoder_pass
from causal2vec.model.sources import ModelSource, load_parts
from causal2vec.model.tokenization import Batch, BatchBuilder, DecoderBatch, EncoderBatch, per_text, validate_texts

log = logging.getLogger(__name__)


class Causal2Vec(nn.Module):
    """The embedding model, whole or one part: an encoder-only model (`part == "encoder"`) computes CTX vectors, a
    decoder-only one embeds texts given their CTX vectors (what split Serve replicas and bulk actors hold)."""

    def __init__(self, config: Causal2VecConfig, context_encoder: ContextEncoder | None, decoder: nn.Module | None,
                 encoder_tokenizer, decoder_tokenizer):
        super().__init__()
        if context_encoder is None and decoder is None:
            raise Causal2VecError("a model needs its context encoder, its decoder, or both")
        self.config = config
        self.context_encoder = context_encoder
        self.decoder = decoder
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.builder = BatchBuilder(encoder_tokenizer, decoder_tokenizer, config)

    # -- construction and persistence ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path | ModelSource, *, device: str | None = None,
                        dtype: str | torch.dtype | None = None, **config_overrides) -> Causal2Vec:
        """Load a saved model directory, or build a named preset (`tiny`, `minilm-small`, ...).

        `config_overrides` change non-structural config fields, e.g. `max_decoder_length=128` or `pooling="last"`.
        """
        return load_model(ModelSource.of(path_or_preset, **config_overrides), device=device, dtype=dtype)

    @classmethod
    def from_config(cls, config: Causal2VecConfig, *, device: str | None = None,
                    dtype: str | torch.dtype | None = None, seed: int = 0) -> Causal2Vec:
        """Assemble a new model from an encoder and a decoder (HF ids, paths or GGUF files); the projector starts
        fresh, drawn under `seed`."""
        return load_model(ModelSource.from_config(config), device=device, dtype=dtype, seed=seed)

    def save_pretrained(self, path: str | Path, *, merge_lora: bool = False) -> Path:
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
    def part(self) -> str:
        """"all", or the one part this model holds ("encoder" / "decoder")."""
        if self.decoder is None:
            return "encoder"
        return "decoder" if self.config.use_ctx_token and self.context_encoder is None else "all"

    @property
    def hidden_size(self) -> int:
        if self.decoder is None:
            return self.context_encoder.projector.net[-1].out_features
        return self.decoder.get_input_embeddings().embedding_dim

    @property
    def embedding_dim(self) -> int:
        return pooling.output_dim(self.config.pooling, self.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        if self.decoder is None:
            return self.context_encoder.projector.net[-1].weight.dtype
        return self.decoder.get_input_embeddings().weight.dtype

    # -- the two stages (serving and bulk jobs run them in separate processes) -----------------------------------
    def context_vectors(self, batch: EncoderBatch) -> torch.Tensor:
        """Encoder stage: texts -> one CTX vector each, already in the decoder's hidden size and dtype."""
        if self.context_encoder is None:
            raise Causal2VecError(f"this model holds only its {self.part} part; load it with part='encoder' or whole")
        return self.context_encoder(batch.input_ids, batch.attention_mask).to(self.dtype)

    def decoder_inputs(self, batch: DecoderBatch, ctx: torch.Tensor | None) -> torch.Tensor:
        """The decoder's input embeddings over the full layout, with CTX (times `ctx_scale`) spliced in at
        `ctx_index`."""
        if self.decoder is None:
            raise Causal2VecError("this model holds only its encoder part; load it with part='decoder' or whole")
        embeds = self.decoder.get_input_embeddings()(batch.input_ids)
        if self.config.use_ctx_token:
            if ctx is None:
                raise Causal2VecError("this model needs CTX vectors for the decoder stage")
            rows = torch.arange(embeds.shape[0], device=embeds.device)
            embeds = embeds.index_put((rows, batch.ctx_index), (ctx * self.config.ctx_scale).to(embeds.dtype))
        return embeds

    def decoder_hidden_states(self, batch: DecoderBatch, ctx: torch.Tensor | None) -> torch.Tensor:
        """Last hidden states of the decoder over the full layout."""
        out = self.decoder(inputs_embeds=self.decoder_inputs(batch, ctx), attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False)
        return out.last_hidden_state

    def pool(self, hidden: torch.Tensor, batch: DecoderBatch, normalize: bool | None = None) -> torch.Tensor:
        pooled = pooling.pool(hidden, batch, self.config.pooling)
        return pooling.normalize(pooled, self.config.normalize if normalize is None else normalize)

    def embed_with_context(self, batch: DecoderBatch, ctx: torch.Tensor | None,
                           normalize: bool | None = None) -> torch.Tensor:
        """Decoder stage: decoder batch + CTX vectors -> embeddings."""
        return self.pool(self.decoder_hidden_states(batch, ctx), batch, normalize)

    def forward(self, batch: Batch, normalize: bool | None = None, with_encoder_vectors: bool = False) -> torch.Tensor:
        """Both stages, differentiable: what training calls. `with_encoder_vectors` appends each text's pooled encoder
        vector (before the projector) to its embedding, for the encoder's own loss (optim.encoder_loss_weight); one
        tensor keeps training's row reordering as it is."""
        if not with_encoder_vectors:
            ctx = self.context_vectors(batch.encoder) if batch.encoder is not None else None
            return self.embed_with_context(batch.decoder, ctx, normalize)
        if batch.encoder is None or self.context_encoder is None:
            raise Causal2VecError("with_encoder_vectors needs a model with a context encoder and a CTX token")
        pooled = self.context_encoder.pool(batch.encoder.input_ids, batch.encoder.attention_mask)
        embeddings = self.embed_with_context(batch.decoder, self.context_encoder.project(pooled).to(self.dtype),
                                             normalize)
        return torch.cat([embeddings, pooled.to(embeddings.dtype)], dim=-1)

    # -- the one public inference entry --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], instruction: str | Sequence[str | None] | None = None, *,
               batch_size: int = 32, normalize: bool | None = None, show_progress: bool = False) -> np.ndarray:
        """Embed texts -> float32 array [n, embedding_dim], in input order.

        Both stages run through the stage runner (inference.py): rows sorted by token length, passes of
        `batch_size`, input order restored. `instruction` (one for all, or one per text) goes to the decoder only.
        """
        texts = validate_texts(texts)
        if batch_size < 1:
            raise Causal2VecError(f"batch_size must be >= 1, got {batch_size}")
        instructions = per_text(instruction, len(texts))
        was_training = self.training
        self.eval()
        try:
            ctx = encoder_pass(self, self.builder.tokenize_for_encoder(texts), rows_per_pass=batch_size,
                               progress=show_progress).vectors if self.config.use_ctx_token else None
            return decoder_pass(self, self.builder.tokenize_for_decoder(texts), ctx, instructions=instructions,
                                normalize=normalize, rows_per_pass=batch_size, progress=show_progress).vectors
        finally:
            self.train(was_training)

    def to_device(self, device: str | None = None, dtype: str | torch.dtype | None = None) -> Causal2Vec:
        device = resolve_device(device)
        return self.to(device=device, dtype=resolve_dtype(dtype, device))


def load_model(source: str | Path | ModelSource, part: str = "all", *, device: str | None = None,
               dtype: str | torch.dtype | None = None, seed: int = 0) -> Causal2Vec:
    """The one way to load a model: a preset, a saved directory or a new model from HF / GGUF parts
    (`ModelSource`). `part="encoder"` / `"decoder"` loads only that part's weights. `seed` draws a new model's
    projector; a config's `lora` settings put fresh adapters on a new decoder."""
    model = Causal2Vec(**vars(load_parts(source, part, device=device, dtype=dtype, seed=seed)))
    if model.config.lora is not None and model.decoder is not None and not model.has_lora:
        model.enable_lora(model.config.lora)
    return model.eval()


def assemble(config: Causal2VecConfig, encoder: nn.Module | None, decoder: nn.Module, encoder_tokenizer,
             decoder_tokenizer, *, projector_state: dict | None = None, device=None, dtype=None,
             seed: int = 0) -> Causal2Vec:
    """A model from parts already in memory (tests and benches build decoders of their own)."""
    if config.use_ctx_token and encoder is None:
        raise Causal2VecError("use_ctx_token=True needs an encoder")
    parts = assemble_parts(config, encoder, decoder, encoder_tokenizer, decoder_tokenizer,
                           projector_state=projector_state, device=device, dtype=dtype, seed=seed)
    return Causal2Vec(**vars(parts)).eval()


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
