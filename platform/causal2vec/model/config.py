"""Causal2VecConfig: every choice the paper leaves open is a field here, so ablations are config changes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from causal2vec.config import Pooling
from causal2vec.errors import Causal2VecError

FORMAT_VERSION = 1

# Fields added after models and tables were written, at the value that leaves the embedding function as it was:
# there they stay out of the fingerprint, so a table written before them keeps its identity.
NEUTRAL_SINCE_ADDED = {"ctx_scale": 1.0, "projector_init": "random"}

EncoderPooling = Literal["mean", "cls"]
PaddingSide = Literal["left", "right"]
CtxPlacement = Literal["after_instruction", "after_bos"]
ProjectorInit = Literal["random", "isometry"]


@dataclass
class LoraSettings:
    """LoRA on the decoder (peft). `target_modules`: module names, `"all-linear"` (attention and MLP), or None for
    peft's default for the architecture (the attention projections)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] | None = None
    # Also train the decoder's normalisation weights (a few thousand parameters): LLM hidden states carry a few
    # outlier dimensions that dominate cosine similarity, and the final norm's weights can scale them down directly.
    train_norms: bool = False


@dataclass
class Causal2VecConfig:
    """What a Causal2Vec model is, independent of its weights.

    `encoder` / `decoder` are Hugging Face ids or local directories; in a saved model directory they are rewritten
    to the relative sub-directories `encoder` / `decoder`, and the original ids are kept in `*_source` for lineage.
    """

    encoder: str
    decoder: str
    encoder_pooling: EncoderPooling = "mean"
    projector_hidden: int | None = None  # MLP hidden width; None -> the decoder's hidden size (2x the encoder's
    # for an isometry)
    # How a fresh projector starts: "random" (PyTorch's default init) or "isometry" (exactly x -> Qx, so the CTX
    # vector starts with the encoder's own geometry: context_encoder.Projector)
    projector_init: ProjectorInit = "random"
    pooling: Pooling = "concat"
    normalize: bool = True
    use_ctx_token: bool = True  # False: the decoder alone (the paper's "without Contextual token" ablation)
    ctx_placement: CtxPlacement = "after_instruction"  # [BOS][instr][CTX][text][EOS] vs [BOS][CTX][instr][text][EOS]
    # Fixed text placed just before the CTX slot. SmolLM2 turns the token right after BOS into a second attention
    # sink (a residual 3-6x a text token's, its final state near-constant across texts), so a document's CTX there,
    # unlike a query's after its instruction, carries little: "\n" moves it one place on (bench/ctx_probe.py).
    ctx_prefix: str | None = None
    # Multiplies the projected CTX vector where it enters the decoder. At the CTX's position SmolLM2's first layer
    # adds an update of norm ~80 to a fresh CTX vector of norm ~1, and later layers 30-600 each: the vector is
    # drowned and the CTX's last state retrieves at chance zero-shot. Scaled 3,000x it passes through the 30 layers
    # and retrieves about as well as the projector's output itself. Every layer reads it through an RMSNorm, so the
    # text tokens see a CTX of ordinary scale either way (bench/zero_shot.py --variant ... ctx_scale=3000).
    ctx_scale: float = 1.0
    padding_side: PaddingSide = "right"
    # The token closed onto every text, whose state `last` / `concat` pool; None = the tokenizer's EOS. An instruct
    # LLM's end-of-turn token (SmolLM2's <|im_end|>) always predicts the same next token, so its state starts out
    # nearly the same for every text; a plain token such as "\n" may start closer to a summary.
    eos_token: str | None = None
    # Fixed text closed onto every text instead of the EOS token; `last` / `concat` read its last token. A prompt
    # that asks for a summary ("\nSummarize the above in one word:") makes that state a summary before any training:
    # zero-shot SmolLM2 retrieves at 0.44 dev nDCG@10 that way, at chance (0.013) on <|im_end|>. Training from it
    # skips <|im_end|>'s 30-60 steps at the chance loss, yet scored below it after 100 (README, recipe round 7).
    text_suffix: str | None = None
    max_encoder_length: int = 512
    max_decoder_length: int = 512
    attn_implementation: str = "sdpa"
    lora: LoraSettings | None = None
    encoder_source: str | None = None
    decoder_source: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        _check_choice("pooling", self.pooling, Pooling)
        _check_choice("encoder_pooling", self.encoder_pooling, EncoderPooling)
        _check_choice("padding_side", self.padding_side, PaddingSide)
        _check_choice("ctx_placement", self.ctx_placement, CtxPlacement)
        _check_choice("projector_init", self.projector_init, ProjectorInit)
        if self.pooling in ("concat", "ctx") and not self.use_ctx_token:
            raise Causal2VecError(f"pooling={self.pooling!r} needs the Contextual token; set use_ctx_token=true "
                                  "or use pooling 'last' / 'mean'")
        if self.text_suffix is not None and (self.eos_token is not None or not self.text_suffix):
            raise Causal2VecError("text_suffix replaces the EOS token: set text_suffix (non-empty) or eos_token, "
                                  "not both")
        if not self.ctx_scale > 0:
            raise Causal2VecError(f"ctx_scale must be > 0, got {self.ctx_scale}")
        if self.max_decoder_length < 4 or self.max_encoder_length < 3:
            raise Causal2VecError("max_decoder_length must be >= 4 and max_encoder_length >= 3")
        if self.format_version > FORMAT_VERSION:
            raise Causal2VecError(f"model format version {self.format_version} is newer than this library supports "
                                  f"({FORMAT_VERSION}); upgrade causal2vec-platform")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Causal2VecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise Causal2VecError(f"unknown Causal2Vec config field(s): {', '.join(unknown)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """A short hash of everything that changes the embedding function (not lineage fields)."""
        data = self.to_dict()
        for lineage in ("encoder", "decoder", "encoder_source", "decoder_source", "extra"):
            data.pop(lineage)
        for name, neutral in NEUTRAL_SINCE_ADDED.items():
            if data[name] == neutral:
                data.pop(name)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _check_choice(name: str, value: Any, choices: Any) -> None:
    allowed = choices.__args__
    if value not in allowed:
        raise Causal2VecError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
