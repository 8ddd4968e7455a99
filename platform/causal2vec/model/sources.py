"""Where a model comes from, as one picklable value, and loading its parts from there.

A ModelSource is
    a preset      a name in presets.PRESETS (`tiny`, `minilm-small`, `smollm2`, ...)
    a directory   written by save_pretrained
    parts         a new model from an encoder and a decoder, each a Hugging Face hub id, an HF directory or a GGUF
                  file (`x.gguf`, `gguf:<path>`, `gguf:<package>`), with a fresh projector
plus config overrides (pooling, max lengths, ...). Ray tasks, actors and replicas receive one; `load_model`
(causal2vec.py) turns it into a model, whole or one part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causal2vec.config import absolute_if_exists
from causal2vec.errors import Causal2VecError
from causal2vec.model import io, presets
from causal2vec.model.config import Causal2VecConfig

PARTS = ("all", "encoder", "decoder")  # an encoder replica or actor loads no decoder weights, and vice versa


@dataclass(frozen=True)
class ModelSource:
    name: str | None = None  # a preset, or a saved model directory
    encoder: str | None = None  # or both parts of a new model
    decoder: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields to change, e.g. {"pooling": "last"}

    def __post_init__(self) -> None:
        if (self.name is None) == (self.encoder is None and self.decoder is None) or \
                (self.name is None and not (self.encoder and self.decoder)):
            raise Causal2VecError("name a model by a preset or saved directory, or by an encoder and a decoder")

    @classmethod
    def of(cls, value: str | Path | ModelSource, **overrides) -> ModelSource:
        """A source from a preset name or a path (made absolute: workers run elsewhere), or a source with more
        overrides."""
        if isinstance(value, ModelSource):
            return dataclasses.replace(value, overrides={**value.overrides, **overrides}) if overrides else value
        name = str(value)
        return cls(name=name if name in presets.PRESETS else absolute_if_exists(name), overrides=overrides)

    @classmethod
    def from_config(cls, config: Causal2VecConfig) -> ModelSource:
        """A new model as a config describes it: its encoder and decoder, every other field kept."""
        fields = config.to_dict()
        return cls(encoder=fields.pop("encoder"), decoder=fields.pop("decoder"), overrides=fields)

    @property
    def kind(self) -> str:
        if self.name is None:
            return "parts"
        return "preset" if self.name in presets.PRESETS else "directory"

    @property
    def label(self) -> str:
        """How tables and logs name the model: the preset, the directory, or `encoder + decoder`."""
        return self.name if self.name is not None else f"{self.encoder} + {self.decoder}"


def load_builder(source: str | Path | ModelSource):
    """The model's tokenizers and config, without weights: what tokenizing tasks and the Serve ingress need."""
    from causal2vec.model.tokenization import BatchBuilder

    plan = _plan(ModelSource.of(source))
    return BatchBuilder(*plan.tokenizers(), plan.config)


def load_parts(source: str | Path | ModelSource, part: str = "all", *, device=None, dtype=None, seed: int = 0):
    """The model's parts (build.Parts) on `device` in `dtype`; `part="encoder"` or `"decoder"` loads only that
    part's weights. `seed` draws a new model's projector (presets draw their own, saved models load theirs)."""
    from causal2vec.model.build import assemble_parts

    if part not in PARTS:
        raise Causal2VecError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    plan = _plan(ModelSource.of(source), seed)
    if part == "encoder" and not plan.config.use_ctx_token:
        raise Causal2VecError("this model has no Contextual token (use_ctx_token=false), so no encoder part")
    with_encoder, with_decoder = part != "decoder" and plan.config.use_ctx_token, part != "encoder"
    parts = assemble_parts(
        plan.config, plan.encoder() if with_encoder else None, plan.decoder() if with_decoder else None,
        *plan.tokenizers(), projector_state=plan.projector_state() if with_encoder else None,
        decoder_hidden=plan.decoder_hidden() if with_encoder and not with_decoder else None,
        device=device, dtype=dtype, seed=plan.seed)
    if plan.adapter is not None and parts.decoder is not None:
        from peft import PeftModel

        parts.decoder = PeftModel.from_pretrained(parts.decoder, plan.adapter, is_trainable=False)
    return parts


@dataclass
class _Plan:
    """How to load each piece of one source."""

    config: Causal2VecConfig
    tokenizers: Callable[[], tuple]  # (encoder tokenizer, decoder tokenizer)
    encoder: Callable[[], Any]
    decoder: Callable[[], Any]
    decoder_hidden: Callable[[], int]  # without loading the decoder's weights
    projector_state: Callable[[], dict | None] = lambda: None
    adapter: Path | None = None  # a saved LoRA adapter to put on the decoder
    seed: int = 0


def _plan(source: ModelSource, seed: int = 0) -> _Plan:
    from causal2vec.model import build

    if source.kind == "preset":
        preset = presets.get(source.name)
        return _Plan(dataclasses.replace(preset.config(), **source.overrides), preset.tokenizers, preset.encoder,
                     lambda: preset.decoder(preset.decoder_config()), lambda: preset.decoder_config().hidden_size,
                     seed=presets.PROJECTOR_SEED)
    if source.kind == "directory":
        saved = io.read(source.name, source.overrides)
        config, encoder, decoder = saved.config, saved.path(saved.config.encoder), saved.path(saved.config.decoder)
        projector_state = saved.projector_state
        adapter = saved.root / saved.adapter if saved.adapter else None
    else:
        config = Causal2VecConfig(encoder=source.encoder, decoder=source.decoder, **source.overrides)
        config = dataclasses.replace(config, encoder_source=config.encoder_source or config.encoder,
                                     decoder_source=config.decoder_source or config.decoder)
        encoder, decoder, projector_state, adapter = config.encoder, config.decoder, lambda: None, None

    def tokenizers() -> tuple:
        decoder_tokenizer = build.load_tokenizer(decoder, "decoder")
        return (build.load_tokenizer(encoder, "encoder") if config.use_ctx_token else decoder_tokenizer,
                decoder_tokenizer)

    return _Plan(config, tokenizers, lambda: build.load_hf_part(encoder, "encoder"),
                 lambda: build.load_hf_part(decoder, "decoder", config.attn_implementation),
                 lambda: build.hidden_size(decoder), projector_state, adapter, seed)
