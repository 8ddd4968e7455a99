"""Shared fixtures. Models are `tiny` (random-init, offline) unless a test is about the pretrained encoder."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MTEB_CACHE", tempfile.mkdtemp(prefix="mteb-cache-"))  # mteb writes on import


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session. More logical CPUs than cores: with num_cpus=2, Train
    workers plus Ray Data tasks deadlock (PLATFORM notes)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny():
    """A shared, read-only tiny model. Tests that change a model build their own."""
    from causal2vec import Causal2Vec

    return Causal2Vec.from_pretrained("tiny")


@pytest.fixture(scope="session")
def minilm_small():
    from causal2vec import Causal2Vec

    return Causal2Vec.from_pretrained("minilm-small")


def tiny_with_decoder(arch: str, **config_overrides):
    """The tiny encoder + a random-init decoder of another real architecture (same tiny sizes)."""
    from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    from causal2vec.model.build import seeded
    from causal2vec.model.causal2vec import assemble
    from causal2vec.model.config import Causal2VecConfig
    from causal2vec.model.presets import tiny_tokenizers

    enc_tok, dec_tok = tiny_tokenizers()
    common = dict(vocab_size=len(dec_tok), bos_token_id=dec_tok.bos_token_id, eos_token_id=dec_tok.eos_token_id,
                  pad_token_id=dec_tok.pad_token_id)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, **common)
    decoder_config = {
        "llama": lambda: LlamaConfig(**llama_like),
        "qwen2": lambda: Qwen2Config(**llama_like),
        "mistral": lambda: MistralConfig(**llama_like),
        "gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common),
        "bert-causal": lambda: BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128, is_decoder=True, **common),
    }[arch]()
    encoder = seeded(1, lambda: AutoModel.from_config(BertConfig(
        vocab_size=len(enc_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        pad_token_id=enc_tok.pad_token_id)))
    decoder = seeded(2, lambda: AutoModel.from_config(decoder_config, attn_implementation="sdpa"))
    config = Causal2VecConfig(encoder="test/encoder", decoder=f"test/{arch}", **config_overrides)
    return assemble(config, encoder, decoder, enc_tok, dec_tok)
