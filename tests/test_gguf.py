"""GGUF files as model sources: same weights as the HF directory, dequantized once, saved as plain safetensors;
and the real `smollm2` preset (SmolLM2-135M-Instruct from its GGUF file) keeps the CTX/EOS concat contract."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from causal2vec import Causal2Vec, Causal2VecConfig, Causal2VecError
from gguf_writer import write_llama_gguf

TEXTS = ["vim editor", "Vim is a highly configurable text editor built to make creating and changing any kind of "
         "text very efficient.", "a package manager for Debian"]


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    """The tiny preset's encoder and decoder as HF directories, and the same decoder as a GGUF file."""
    from causal2vec.model.presets import PRESETS, tiny_tokenizers

    root = tmp_path_factory.mktemp("gguf-sources")
    tiny = PRESETS["tiny"]
    encoder, decoder = tiny.encoder(), tiny.decoder(tiny.decoder_config())
    enc_tok, dec_tok = tiny_tokenizers()
    encoder.save_pretrained(root / "encoder")
    enc_tok.save_pretrained(root / "encoder")
    decoder.save_pretrained(root / "decoder")
    dec_tok.save_pretrained(root / "decoder")
    return {"encoder": str(root / "encoder"), "hf": str(root / "decoder"),
            "gguf": str(write_llama_gguf(decoder, dec_tok, root / "tiny-llama.gguf"))}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSAL2VEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def _model(sources, decoder, **overrides):
    config = Causal2VecConfig(encoder=sources["encoder"], decoder=decoder, **overrides)
    return Causal2Vec.from_config(config, dtype="fp32", seed=7)


@pytest.mark.parametrize("form", ["path", "prefixed"])
def test_gguf_decoder_equals_the_same_weights_from_a_directory(tiny_sources, cache, form):
    source = tiny_sources["gguf"] if form == "path" else f"gguf:{tiny_sources['gguf']}"
    from_gguf, from_dir = _model(tiny_sources, source), _model(tiny_sources, tiny_sources["hf"])
    gguf_state, dir_state = from_gguf.decoder.state_dict(), from_dir.decoder.state_dict()
    assert gguf_state.keys() == dir_state.keys()
    for name, value in dir_state.items():
        torch.testing.assert_close(gguf_state[name], value, atol=1e-5, rtol=0, msg=name)
    assert (from_gguf.builder(TEXTS).decoder.input_ids == from_dir.builder(TEXTS).decoder.input_ids).all(), \
        "the tokenizer read from the GGUF file must tokenize like the original"
    np.testing.assert_allclose(from_gguf.encode(TEXTS), from_dir.encode(TEXTS), atol=1e-5, rtol=0)


def test_a_gguf_file_is_dequantized_once(tiny_sources, cache, caplog):
    with caplog.at_level(logging.INFO, logger="causal2vec.model.gguf"):
        first = _model(tiny_sources, tiny_sources["gguf"]).encode(TEXTS)
        second = _model(tiny_sources, tiny_sources["gguf"]).encode(TEXTS)
    assert sum("dequantizing" in r.message for r in caplog.records) == 1
    cached = [p for p in cache.iterdir() if p.is_dir() and p.name != "by-stat"]
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    np.testing.assert_array_equal(first, second)


def test_padding_and_save_load_round_trip_with_a_gguf_decoder(tiny_sources, cache, tmp_path):
    model = _model(tiny_sources, tiny_sources["gguf"], normalize=False)
    alone = model.encode([TEXTS[0]])[0]
    np.testing.assert_allclose(model.encode([TEXTS[1], TEXTS[0]], batch_size=8)[1], alone, atol=1e-5, rtol=0)
    saved = model.save_pretrained(tmp_path / "saved")
    assert (saved / "decoder" / "model.safetensors").is_file(), "a GGUF-born decoder saves as plain safetensors"
    reloaded = Causal2Vec.from_pretrained(saved, dtype="fp32")
    assert reloaded.config.decoder_source == tiny_sources["gguf"]
    np.testing.assert_allclose(reloaded.encode(TEXTS), model.encode(TEXTS), atol=1e-6, rtol=0)


def test_gguf_errors_say_what_to_change(tiny_sources, cache, tmp_path, monkeypatch):
    with pytest.raises(Causal2VecError, match="GGUF file not found"):
        _model(tiny_sources, str(tmp_path / "missing.gguf"))
    with pytest.raises(Causal2VecError, match="no installed package"):
        _model(tiny_sources, "gguf:no_such_package_here")

    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "bert")  # an architecture transformers cannot read
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(Causal2VecError, match="cannot read this GGUF architecture"):
        _model(tiny_sources, str(tmp_path / "odd.gguf"))

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    with pytest.raises(Causal2VecError, match="pip install gguf"):
        _model(tiny_sources, tiny_sources["gguf"])


def test_smollm2_preset_is_a_real_llm_with_the_concat_contract():
    model = Causal2Vec.from_pretrained("smollm2", dtype="fp32")
    decoder = model.decoder.config
    assert (decoder.model_type, decoder.num_hidden_layers, decoder.hidden_size) == ("llama", 30, 576)
    assert model.embedding_dim == 2 * 576
    batch = model.builder(TEXTS, "Instruct: retrieve a package\nQuery: ")
    with torch.no_grad():
        emb = model(batch, normalize=False)
        hidden = model.decoder_hidden_states(batch.decoder, model.context_vectors(batch.encoder))
    rows = torch.arange(len(TEXTS))
    torch.testing.assert_close(emb[:, :576], hidden[rows, batch.decoder.ctx_index])
    torch.testing.assert_close(emb[:, 576:], hidden[rows, batch.decoder.eos_index])
    tokens = model.decoder_tokenizer.convert_ids_to_tokens(batch.decoder.input_ids[0, :2].tolist())
    assert tokens[0] == "<|im_start|>", "the layout starts with SmolLM2's BOS"
    eos = batch.decoder.input_ids[rows, batch.decoder.eos_index]
    assert (eos == model.decoder_tokenizer.eos_token_id).all()
