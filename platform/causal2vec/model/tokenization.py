"""One batch builder for both tokenizers.

The decoder layout lives here and nowhere else:
    after_instruction (default): [BOS] [instruction] [ctx_prefix] [CTX] [text] [EOS]
    after_bos:                   [BOS] [ctx_prefix] [CTX] [instruction] [text] [EOS]
    use_ctx_token=False:         [BOS] [instruction] [text] [EOS]
`ctx_prefix` (config, default none) is fixed text tokenized into the decoder's vocabulary; `text_suffix` (config)
is fixed text that takes EOS's place, and "EOS" below means its last token.
The encoder sees the text only, never the instruction. CTX is not a vocabulary token: its slot holds the pad id and
the model splices the projected encoder vector into `inputs_embeds` at `ctx_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from causal2vec.errors import Causal2VecError
from causal2vec.model.config import Causal2VecConfig
from causal2vec.readers import text_problem

# Tokenizers read at most this many characters per token of a length limit. Real text averages under ~6 characters
# per token, so a text within the limit embeds exactly as before; a huge one (an 8 MB string took seconds and froze
# a server's event loop) costs only what the model can use. Characters past the cap are never read.
CHARS_PER_TOKEN_READ = 32


class _Padded:
    """What both padded batches offer: their real token count, and a copy on another device."""

    attention_mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str):
        return type(self)(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                             for f in fields(self)})


@dataclass
class EncoderBatch(_Padded):
    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    truncated: list[bool]


@dataclass
class DecoderBatch(_Padded):
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T], explicit: HF decoders do not derive them from the mask
    ctx_index: torch.Tensor  # [B], -1 when the layout has no CTX slot
    eos_index: torch.Tensor  # [B]
    pool_mask: torch.Tensor  # [B, T] bool: the positions `mean` pooling averages (CTX .. EOS)
    truncated: list[bool]


@dataclass
class Batch:
    encoder: EncoderBatch | None  # None when the model runs without a CTX token
    decoder: DecoderBatch

    @property
    def truncated(self) -> list[bool]:
        enc = self.encoder.truncated if self.encoder is not None else [False] * len(self.decoder.truncated)
        return [a or b for a, b in zip(enc, self.decoder.truncated)]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.encoder.to(device) if self.encoder is not None else None, self.decoder.to(device))


class BatchBuilder:
    """Turns texts (+ an optional instruction per text) into encoder and decoder tensors."""

    def __init__(self, encoder_tokenizer, decoder_tokenizer, config: Causal2VecConfig):
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.config = config
        dec = decoder_tokenizer
        self.bos_id = dec.bos_token_id if dec.bos_token_id is not None else dec.cls_token_id
        self.eos_id = dec.eos_token_id if dec.eos_token_id is not None else dec.sep_token_id
        if config.eos_token is not None:
            self.eos_id = _single_token(dec, config.eos_token)
        if self.eos_id is None:
            raise Causal2VecError("the decoder tokenizer has neither an eos_token nor a sep_token; the embedding is "
                                  "read at the EOS position, so set tokenizer.eos_token")
        self.pad_id = dec.pad_token_id if dec.pad_token_id is not None else self.eos_id
        enc = encoder_tokenizer
        self.encoder_pad_id = enc.pad_token_id if enc.pad_token_id is not None else 0
        self._encoder_prefix, self._encoder_suffix = _special_token_template(enc)
        self._prefix_cache: dict[str, list[int]] = {}
        self.closing = self._text_ids(config.text_suffix) or [self.eos_id]  # what ends every row

    # -- public -------------------------------------------------------------------------------------------------
    def __call__(self, texts: Sequence[str], instruction: str | Sequence[str | None] | None = None) -> Batch:
        texts = validate_texts(texts)
        encoder = self.encode_for_encoder(texts) if self.config.use_ctx_token else None
        return Batch(encoder, self.encode_for_decoder(texts, instruction))

    def encode_for_encoder(self, texts: Sequence[str]) -> EncoderBatch:
        return self.encoder_batch(self.tokenize_for_encoder(texts))

    def encode_for_decoder(self, texts: Sequence[str],
                           instruction: str | Sequence[str | None] | None = None) -> DecoderBatch:
        return self.decoder_batch(self.tokenize_for_decoder(texts), instruction)

    # Tokenizing is split from layout + padding so training can tokenize in parallel Ray Data tasks and collate
    # on the workers. Raw ids are capped one past the longest possible budget, so truncation is still detected.
    def tokenize_for_encoder(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:  # HF tokenizers fail on an empty list
            return []
        cap = self.config.max_encoder_length - len(self._encoder_prefix) - len(self._encoder_suffix) + 1
        return self.encoder_tokenizer(_clip(texts, cap), add_special_tokens=False, truncation=True,
                                      max_length=cap)["input_ids"]

    def tokenize_for_decoder(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        cap = self.config.max_decoder_length
        return self.decoder_tokenizer(_clip(texts, cap), add_special_tokens=False, truncation=True,
                                      max_length=cap)["input_ids"]

    def encoder_batch(self, token_ids: Sequence[Sequence[int]]) -> EncoderBatch:
        prefix, suffix = self._encoder_prefix, self._encoder_suffix
        budget = self._encoder_budget()
        rows = [prefix + list(row[:budget]) + suffix for row in token_ids]
        input_ids, mask = _pad(rows, self.encoder_pad_id, "right")
        return EncoderBatch(input_ids, mask, self.encoder_truncated(token_ids))

    def encoder_truncated(self, token_ids: Sequence[Sequence[int]]) -> list[bool]:
        """Which rows `encoder_batch` would cut, without building its tensors."""
        budget = self._encoder_budget()
        return [len(row) > budget for row in token_ids]

    def decoder_lengths(self, token_ids: Sequence[Sequence[int]],
                        instruction: str | Sequence[str | None] | None = None) -> tuple[list[int], list[bool]]:
        """Each row's length in `decoder_batch` (layout included, after truncation) and whether it was cut,
        without building its tensors: what a server checks per request before anything is batched."""
        layout = [self._decoder_row(ids, ins) for ids, ins in zip(token_ids, per_text(instruction, len(token_ids)))]
        return [len(row) for row, _, _, _ in layout], [cut for _, _, _, cut in layout]

    def decoder_batch(self, token_ids: Sequence[Sequence[int]],
                      instruction: str | Sequence[str | None] | None = None, *,
                      through_ctx: bool = False) -> DecoderBatch:
        """Padded decoder tensors. `through_ctx` cuts each row right after its CTX slot: causal attention makes the
        CTX state independent of the text after it, so the cut is exact and cheap; the EOS index then points at CTX,
        so every pooling mode reads the CTX state (what projector alignment trains)."""
        cfg = self.config
        if through_ctx and not cfg.use_ctx_token:
            raise Causal2VecError("through_ctx needs a model with the Contextual token")
        rows, ctx_at, eos_at, pool_from, truncated = [], [], [], [], []
        for ids, ins in zip(token_ids, per_text(instruction, len(token_ids))):
            row, ctx, pool_start, cut = self._decoder_row(ids, ins)
            if through_ctx:
                row, pool_start, cut = row[:ctx + 1], ctx, False
            rows.append(row)
            ctx_at.append(ctx)
            eos_at.append(len(row) - 1)
            pool_from.append(pool_start)
            truncated.append(cut)
        input_ids, mask = _pad(rows, self.pad_id, cfg.padding_side)
        width = input_ids.shape[1]
        shift = [width - len(r) if cfg.padding_side == "left" else 0 for r in rows]
        ctx_index = torch.tensor([c + s if c >= 0 else -1 for c, s in zip(ctx_at, shift)], dtype=torch.long)
        eos_index = torch.tensor([e + s for e, s in zip(eos_at, shift)], dtype=torch.long)
        start = torch.tensor([p + s for p, s in zip(pool_from, shift)], dtype=torch.long)
        positions = torch.arange(width).unsqueeze(0)
        pool_mask = (positions >= start[:, None]) & (positions <= eos_index[:, None])
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return DecoderBatch(input_ids, mask, position_ids, ctx_index, eos_index, pool_mask, truncated)

    def count_decoder_tokens(self, texts: Sequence[str], instruction: str | None = None) -> list[int]:
        """Tokens each text occupies in the decoder input (layout included, before truncation)."""
        prefix, _ = self._prefix(instruction)
        ids = self.decoder_tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(prefix) + len(row) + len(self.closing) for row in ids]

    # -- internals ----------------------------------------------------------------------------------------------
    def _encoder_budget(self) -> int:
        return self.config.max_encoder_length - len(self._encoder_prefix) - len(self._encoder_suffix)

    def _decoder_row(self, ids: Sequence[int], instruction: str | None) -> tuple[list[int], int, int, bool]:
        """One decoder row before padding (prefix + text cut to fit + EOS or suffix), its CTX slot (-1 if none),
        where mean pooling starts, and whether the text was cut."""
        prefix, ctx = self._prefix(instruction)
        budget = self.config.max_decoder_length - len(prefix) - len(self.closing)
        if budget < 1:
            raise Causal2VecError(f"the instruction and text suffix leave no room for text within "
                                  f"max_decoder_length={self.config.max_decoder_length}; shorten them or raise it")
        # mean pooling covers CTX (when present) .. EOS, never BOS or the instruction
        pool_from = ctx if ctx >= 0 else len(prefix)
        return prefix + list(ids[:budget]) + self.closing, ctx, pool_from, len(ids) > budget

    def _prefix(self, instruction: str | None) -> tuple[list[int], int]:
        """Token ids before the text, and the CTX slot's index in them (-1 if none)."""
        instr = self._text_ids(instruction)
        bos = [self.bos_id] if self.bos_id is not None else []
        if not self.config.use_ctx_token:
            return bos + instr, -1
        lead = self._text_ids(self.config.ctx_prefix)
        if self.config.ctx_placement == "after_bos":
            return bos + lead + [self.pad_id] + instr, len(bos) + len(lead)
        return bos + instr + lead + [self.pad_id], len(bos) + len(instr) + len(lead)

    def _text_ids(self, text: str | None) -> list[int]:
        """Token ids of an instruction, the CTX prefix or the text suffix, without special tokens (cached: few
        distinct ones)."""
        if not text:
            return []
        if text not in self._prefix_cache:
            self._prefix_cache[text] = self.decoder_tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._prefix_cache[text]


def per_text(instruction: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    """One instruction for all texts, or one per text, as a list of n."""
    if instruction is None or isinstance(instruction, str):
        return [instruction] * n
    instructions = list(instruction)
    if len(instructions) != n:
        raise Causal2VecError(f"got {len(instructions)} instructions for {n} texts; pass one instruction "
                              "or one per text")
    return instructions


def validate_texts(texts) -> list[str]:
    """Reject what cannot be embedded, naming the first bad item (readers.text_problem is the rule)."""
    if isinstance(texts, str):
        raise Causal2VecError("texts must be a list of strings, not a single string; wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        problem = text_problem(text)
        if problem:  # said the way a Python caller sees it
            said = "None" if text is None else "empty or whitespace only" if isinstance(text, str) else problem
            raise Causal2VecError(f"text #{i} is {said}; every input must be a non-empty string")
    return texts


def _clip(texts: Sequence[str], max_tokens: int) -> list[str]:
    chars = max_tokens * CHARS_PER_TOKEN_READ
    return [text[:chars] for text in texts]


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise Causal2VecError(f"eos_token {text!r} is {len(ids)} tokens for the decoder's tokenizer; it must be one")
    return ids[0]


def _special_token_template(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts around a text ([CLS] .. [SEP], <s> .. </s>), found with a probe.

    Tokenizing without specials and adding them ourselves lets one pass both truncate and detect truncation.
    """
    plain = tokenizer("probe", add_special_tokens=False)["input_ids"]
    full = tokenizer("probe")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise Causal2VecError("cannot locate the text inside the encoder tokenizer's special-token template")


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
