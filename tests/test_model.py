"""The model contract of DESIGN.md: layout, padding invariance, causality, pooling, save/load, encode."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from causal2vec import Causal2Vec, Causal2VecError
from causal2vec.model.config import NEUTRAL_SINCE_ADDED
from conftest import tiny_with_decoder

SHORT = "vim editor"
LONG = ("Vim is an almost compatible version of the UNIX editor Vi. Many new features have been added: multi level "
        "undo, syntax highlighting, command line history, on-line help, filename completion, block operations, "
        "folding, Unicode support and more. This package contains a version of vim compiled with a rather standard "
        "set of features. " * 3)
MIXED = [SHORT, LONG, "a package manager for Debian", LONG[:300], "x"]
ARCHES = ["llama", "qwen2", "mistral", "gpt2", "bert-causal"]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHES)
def test_padding_does_not_change_an_embedding(arch, side):
    model = tiny_with_decoder(arch, padding_side=side, normalize=False)
    alone = model.encode([SHORT])[0]
    in_batch = model.encode([LONG, SHORT, LONG[:200]], batch_size=8)[1]
    batch = model.builder([LONG, SHORT], None)
    assert batch.decoder.attention_mask[1].sum() < batch.decoder.attention_mask.shape[1], "SHORT must be padded"
    first_pad_col = 0 if side == "left" else -1
    assert batch.decoder.attention_mask[1, first_pad_col] == 0, f"{side} padding puts pads on the {side}"
    np.testing.assert_allclose(in_batch, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "bert-causal"])
def test_decoder_is_causal(arch):
    """A text position's hidden state ignores later text tokens (CTX held fixed)."""
    model = tiny_with_decoder(arch)
    a, b = "alpha beta gamma delta packages", "alpha beta gamma zebra unrelated words here"
    batch = model.builder([a, b]).decoder
    ids = batch.input_ids
    shared = int((ids[0] == ids[1]).long().cumprod(0).sum())  # length of the common token prefix
    assert shared > int(batch.ctx_index[0]) + 2, "the two texts must share a few text tokens"
    ctx = torch.randn(1, model.hidden_size).expand(2, -1)
    with torch.no_grad():
        hidden = model.decoder_hidden_states(batch, ctx)
    torch.testing.assert_close(hidden[0, :shared], hidden[1, :shared], atol=1e-5, rtol=0)
    assert not torch.allclose(hidden[0, shared], hidden[1, shared], atol=1e-3)


def test_ctx_vector_sees_the_whole_text(tiny):
    base = "the quick brown fox jumps over the lazy dog near the river bank"
    variants = ["a quick brown fox jumps over the lazy dog near the river bank",  # first word
                "the quick brown fox leaps over the lazy dog near the river bank",  # middle
                "the quick brown fox jumps over the lazy dog near the river bend"]  # last word
    with torch.no_grad():
        ctx = tiny.context_vectors(tiny.builder.encode_for_encoder([base] + variants))
    for i in range(1, 4):
        assert (ctx[0] - ctx[i]).abs().max() > 1e-4, f"CTX did not change with variant {i}"


def test_concat_halves_are_ctx_and_eos_hidden_states(tiny):
    texts = [SHORT, LONG]
    batch = tiny.builder(texts)
    with torch.no_grad():
        emb = tiny(batch, normalize=False)
        ctx = tiny.context_vectors(batch.encoder)
        hidden = tiny.decoder_hidden_states(batch.decoder, ctx)
    assert emb.shape == (2, 2 * tiny.hidden_size) and tiny.embedding_dim == 2 * tiny.hidden_size
    rows = torch.arange(2)
    torch.testing.assert_close(emb[:, :tiny.hidden_size], hidden[rows, batch.decoder.ctx_index])
    torch.testing.assert_close(emb[:, tiny.hidden_size:], hidden[rows, batch.decoder.eos_index])
    # and those positions are where the layout says: CTX right after [BOS], EOS last
    assert (batch.decoder.ctx_index == 1).all()
    eos = batch.decoder.input_ids[rows, batch.decoder.eos_index]
    assert (eos == tiny.decoder_tokenizer.eos_token_id).all()


def test_encoder_vectors_follow_the_embedding_only_when_asked(tiny):
    """Training's encoder loss reads the pooled encoder vector appended to each embedding; the embedding is unchanged."""
    batch = tiny.builder([SHORT, LONG])
    with torch.no_grad():
        both = tiny(batch, with_encoder_vectors=True)
        pooled = tiny.context_encoder.pool(batch.encoder.input_ids, batch.encoder.attention_mask)
        torch.testing.assert_close(both[:, :tiny.embedding_dim], tiny(batch))
    torch.testing.assert_close(both[:, tiny.embedding_dim:], pooled)
    assert both.shape[1] == tiny.embedding_dim + tiny.context_encoder.encoder.config.hidden_size


def test_layout_bos_instruction_ctx_text_eos(tiny):
    instr = "Instruct: find the package\nQuery: "
    batch = tiny.builder([SHORT], instr).decoder
    tok = tiny.decoder_tokenizer
    instr_ids = tok(instr, add_special_tokens=False)["input_ids"]
    text_ids = tok(SHORT, add_special_tokens=False)["input_ids"]
    row = batch.input_ids[0].tolist()
    n = len(instr_ids)
    assert row[0] == tok.bos_token_id
    assert row[1:1 + n] == instr_ids
    assert int(batch.ctx_index[0]) == 1 + n
    assert row[2 + n:-1] == text_ids and row[-1] == tok.eos_token_id
    assert batch.position_ids[0].tolist() == list(range(len(row)))


@pytest.mark.parametrize("placement", ["after_instruction", "after_bos"])
def test_ctx_prefix_sits_right_before_ctx_and_survives_save(tiny, tmp_path, placement):
    """The CTX prefix moves CTX off the position right after BOS, for documents and queries, in both placements."""
    instr = "Instruct: find the package\nQuery: "
    tiny.save_pretrained(tmp_path / "m")
    model = Causal2Vec.from_pretrained(tmp_path / "m", ctx_prefix="\n", ctx_placement=placement)
    lead = model.decoder_tokenizer("\n", add_special_tokens=False)["input_ids"]
    plain = Causal2Vec.from_pretrained(tmp_path / "m", ctx_placement=placement).builder([SHORT, SHORT],
                                                                                        [None, instr]).decoder
    moved = model.builder([SHORT, SHORT], [None, instr]).decoder
    assert (moved.ctx_index == plain.ctx_index + len(lead)).all() and (moved.ctx_index > 1).all()
    for row, ctx in zip(moved.input_ids.tolist(), moved.ctx_index.tolist()):
        assert row[ctx - len(lead):ctx] == lead
    assert model.encode([SHORT]).shape == (1, tiny.embedding_dim)
    model.save_pretrained(tmp_path / "again")
    assert Causal2Vec.from_pretrained(tmp_path / "again").config.ctx_prefix == "\n"


def test_ctx_scale_multiplies_the_spliced_ctx_vector_and_survives_save(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    scaled = Causal2Vec.from_pretrained(tmp_path / "m", ctx_scale=250.0)
    batch = scaled.builder([SHORT, LONG])
    with torch.no_grad():
        ctx = scaled.context_vectors(batch.encoder)
        spliced = scaled.decoder_inputs(batch.decoder, ctx)[torch.arange(2), batch.decoder.ctx_index]
    torch.testing.assert_close(spliced, 250.0 * ctx)
    assert not np.allclose(scaled.encode([SHORT]), tiny.encode([SHORT]), atol=1e-3)
    scaled.save_pretrained(tmp_path / "again")
    assert Causal2Vec.from_pretrained(tmp_path / "again").config.ctx_scale == 250.0
    with pytest.raises(Causal2VecError, match="ctx_scale must be > 0"):
        Causal2Vec.from_pretrained(tmp_path / "m", ctx_scale=0)
    # tables written before ctx_scale (or projector_init) existed keep their identity; a scaled model's differs
    assert scaled.config.fingerprint() != tiny.config.fingerprint()
    unscaled = {k: v for k, v in tiny.config.to_dict().items() if k not in NEUTRAL_SINCE_ADDED}
    for lineage in ("encoder", "decoder", "encoder_source", "decoder_source", "extra"):
        unscaled.pop(lineage)
    assert tiny.config.fingerprint() == hashlib.sha256(json.dumps(unscaled, sort_keys=True).encode()).hexdigest()[:16]


def test_isometric_projector_keeps_the_encoders_geometry_and_survives_save(tmp_path):
    model = Causal2Vec.from_pretrained("tiny", projector_init="isometry")
    projector = model.context_encoder.projector
    width = projector.net[0].in_features
    assert projector.net[0].out_features == 2 * width
    batch = model.builder([SHORT, LONG, "a package manager for Debian"])
    with torch.no_grad():
        pooled = model.context_encoder.pool(batch.encoder.input_ids, batch.encoder.attention_mask)
        projected = model.context_encoder.project(pooled)
    torch.testing.assert_close(projected @ projected.T, pooled @ pooled.T, atol=1e-4, rtol=1e-4)
    random = Causal2Vec.from_pretrained("tiny").context_encoder
    with torch.no_grad():
        bent = random.project(pooled)
    assert not torch.allclose(bent @ bent.T, pooled @ pooled.T, atol=1e-2)  # what the isometry is for
    model.save_pretrained(tmp_path / "m")
    again = Causal2Vec.from_pretrained(tmp_path / "m")
    assert again.config.projector_init == "isometry"
    np.testing.assert_allclose(again.encode([SHORT, LONG]), model.encode([SHORT, LONG]), atol=1e-5)
    with pytest.raises(Causal2VecError, match="hidden width 2 x"):
        Causal2Vec.from_pretrained("tiny", projector_init="isometry", projector_hidden=width)
    with pytest.raises(Causal2VecError, match="projector_init must be one of"):
        Causal2Vec.from_pretrained("tiny", projector_init="orthogonal")
    assert model.config.fingerprint() != Causal2Vec.from_pretrained("tiny").config.fingerprint()


def test_instruction_reaches_the_decoder_only(tiny):
    plain, instructed = tiny.builder([SHORT]), tiny.builder([SHORT], "Represent the query: ")
    assert torch.equal(plain.encoder.input_ids, instructed.encoder.input_ids)
    assert instructed.decoder.input_ids.shape[1] > plain.decoder.input_ids.shape[1]
    assert not np.allclose(tiny.encode([SHORT]), tiny.encode([SHORT], instruction="Represent the query: "))


@pytest.mark.parametrize("pooling,use_ctx", [("concat", True), ("last", True), ("ctx", True), ("mean", True),
                                             ("last", False), ("mean", False)])
def test_pooling_modes(pooling, use_ctx):
    model = tiny_with_decoder("llama", pooling=pooling, use_ctx_token=use_ctx)
    emb = model.encode(MIXED)
    assert emb.shape == (len(MIXED), model.embedding_dim)
    assert model.embedding_dim == (128 if pooling == "concat" else 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    if not use_ctx:
        assert model.builder([SHORT]).encoder is None and (model.builder([SHORT]).decoder.ctx_index == -1).all()


def test_config_rejects_bad_choices():
    with pytest.raises(Causal2VecError, match="pooling must be one of"):
        tiny_with_decoder("llama", pooling="max")
    with pytest.raises(Causal2VecError, match="needs the Contextual token"):
        tiny_with_decoder("llama", pooling="concat", use_ctx_token=False)


def test_truncation_is_reported_and_respected(tiny):
    batch = tiny.builder([LONG * 10, SHORT])
    assert batch.truncated == [True, False]
    assert batch.decoder.input_ids.shape[1] == tiny.config.max_decoder_length
    assert batch.encoder.input_ids.shape[1] == tiny.config.max_encoder_length


@pytest.mark.parametrize("instruction", [None, "Given a package synopsis, find its description"])
def test_lengths_without_tensors_match_the_batches(tiny, instruction):
    """The server checks lengths and truncation with decoder_lengths / encoder_truncated; they must agree with the
    tensors the model stages build."""
    texts = [LONG * 10, SHORT, LONG, "x"]
    builder = tiny.builder
    dec_ids, enc_ids = builder.tokenize_for_decoder(texts), builder.tokenize_for_encoder(texts)
    dec = builder.decoder_batch(dec_ids, instruction)
    assert builder.decoder_lengths(dec_ids, instruction) == (dec.attention_mask.sum(1).tolist(), dec.truncated)
    enc = builder.encoder_batch(enc_ids)
    assert builder.encoder_truncated(enc_ids) == enc.truncated == [True, False, False, False]


def test_encode_restores_input_order(tiny):
    rng = np.random.default_rng(0)
    texts = [LONG[: int(n)] + f" #{i}" for i, n in enumerate(rng.integers(5, len(LONG), size=23))]
    batched = tiny.encode(texts, batch_size=4)
    one_by_one = np.stack([tiny.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


def test_encode_edge_cases(tiny):
    assert tiny.encode([]).shape == (0, tiny.embedding_dim)
    with pytest.raises(Causal2VecError, match="text #1 is empty"):
        tiny.encode([SHORT, ""])
    with pytest.raises(Causal2VecError, match="text #2 is None"):
        tiny.encode([SHORT, SHORT, None])
    with pytest.raises(Causal2VecError, match="whitespace"):
        tiny.encode(["  \n"])
    with pytest.raises(Causal2VecError, match="not a single string"):
        tiny.encode(SHORT)


def _perturb_lora(model: Causal2Vec) -> None:
    """LoRA's B starts at zero (an identity adapter); give it weights so the round trip proves something."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_save_load_round_trip_plain(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    loaded = Causal2Vec.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(loaded.encode(MIXED), tiny.encode(MIXED))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "causal2vec.json", "decoder", "encoder", "projector.safetensors"]
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pkl"))


@pytest.mark.parametrize("arch", ["llama", "bert-causal"])
def test_save_load_round_trip_lora(arch, tmp_path):
    model = tiny_with_decoder(arch).enable_lora()
    _perturb_lora(model)
    before = model.encode(MIXED)
    base_only = tiny_with_decoder(arch).encode(MIXED)
    assert np.abs(before - base_only).max() > 1e-3, "the adapter must change the embedding"

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "decoder_lora" / "adapter_config.json").is_file()
    loaded = Causal2Vec.from_pretrained(tmp_path / "adapter")
    assert loaded.has_lora
    np.testing.assert_allclose(loaded.encode(MIXED), before, atol=1e-6, rtol=0)

    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (tmp_path / "merged" / "decoder_lora").exists()
    merged = Causal2Vec.from_pretrained(tmp_path / "merged")
    assert not merged.has_lora
    np.testing.assert_allclose(merged.encode(MIXED), before, atol=1e-5, rtol=0)


def test_save_is_atomic_and_refuses_foreign_dirs(tiny, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff")
    with pytest.raises(Causal2VecError, match="refusing to overwrite"):
        tiny.save_pretrained(foreign)
    assert (foreign / "cat.jpg").exists()
    tiny.save_pretrained(tmp_path / "m")
    tiny.save_pretrained(tmp_path / "m")  # overwriting a model directory is fine
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(Causal2VecError, match="unknown preset|no such directory"):
        Causal2Vec.from_pretrained("no-such-preset")
    with pytest.raises(Causal2VecError, match="no causal2vec.json"):
        Causal2Vec.from_pretrained(tmp_path)


def test_from_pretrained_applies_config_overrides(tiny, tmp_path):
    """Presets and saved directories both take non-structural overrides (training sets max lengths this way)."""
    tiny.save_pretrained(tmp_path / "m")
    for source in ("tiny", tmp_path / "m"):
        model = Causal2Vec.from_pretrained(source, pooling="last", max_decoder_length=32)
        assert (model.config.pooling, model.config.max_decoder_length) == ("last", 32)
        assert model.encode([SHORT]).shape == (1, tiny.hidden_size)


def test_from_config_loads_hf_dirs(tiny, tmp_path):
    """Real HF ids and local paths load through the same code: here, local HF directories."""
    from causal2vec.model.config import Causal2VecConfig

    tiny.save_pretrained(tmp_path / "m")
    config = Causal2VecConfig(encoder=str(tmp_path / "m" / "encoder"), decoder=str(tmp_path / "m" / "decoder"),
                              pooling="last")
    model = Causal2Vec.from_config(config)
    assert model.encode([SHORT]).shape == (1, tiny.hidden_size)
    with pytest.raises(Causal2VecError, match="cannot load the decoder"):
        Causal2Vec.from_config(Causal2VecConfig(encoder=config.encoder, decoder=str(tmp_path / "missing")))


def test_tiny_preset_is_identical_in_every_process(tiny):
    """Ray workers and replicas each build the preset; they must all get the same model."""
    code = ("import numpy as np, sys; from causal2vec import Causal2Vec; "
            "np.save(sys.stdout.buffer, Causal2Vec.from_pretrained('tiny').encode(['vim editor', 'apt']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(out)), tiny.encode(["vim editor", "apt"]))


def test_bf16_on_cpu_agrees_with_fp32(tiny):
    bf16 = Causal2Vec.from_pretrained("tiny", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    a, b = tiny.encode(MIXED), bf16.encode(MIXED)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_minilm_encoder_matches_sentence_transformers(minilm_small):
    from sentence_transformers import SentenceTransformer

    from causal2vec.model.presets import minilm_path

    texts = ["Vim is a text editor", "APT is the package manager of Debian.", LONG[:400], "naïve café — ünïcode"]
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, normalize_embeddings=True)
    batch = minilm_small.builder.encode_for_encoder(texts)
    with torch.no_grad():
        pooled = minilm_small.context_encoder.pool(batch.input_ids, batch.attention_mask)
    ours = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_minilm_small_decoder_is_causal(minilm_small):
    assert minilm_small.decoder.config.is_decoder
    batch = minilm_small.builder(["open source office suite", "open source office software for documents"]).decoder
    ctx = torch.randn(1, minilm_small.hidden_size).expand(2, -1)
    with torch.no_grad():
        hidden = minilm_small.decoder_hidden_states(batch, ctx)
    torch.testing.assert_close(hidden[0, :5], hidden[1, :5], atol=1e-5, rtol=0)


def test_rows_cut_after_ctx_give_the_exact_ctx_state(tiny):
    """Projector alignment runs the decoder only up to CTX; causal attention makes that exact."""
    instruction = "Instruct: find the package\nQuery: "
    builder = tiny.builder
    enc = builder.encode_for_encoder([SHORT, LONG])
    ids = builder.tokenize_for_decoder([SHORT, LONG])
    full, cut = builder.decoder_batch(ids, instruction), builder.decoder_batch(ids, instruction, through_ctx=True)
    assert cut.input_ids.shape[1] < full.input_ids.shape[1] and (cut.eos_index == cut.ctx_index).all()
    with torch.no_grad():
        ctx = tiny.context_vectors(enc)
        rows = torch.arange(2)
        want = tiny.decoder_hidden_states(full, ctx)[rows, full.ctx_index]
        got = tiny.decoder_hidden_states(cut, ctx)[rows, cut.ctx_index]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_eos_token_picks_the_closing_token_and_must_be_one_token():
    model = tiny_with_decoder("llama", eos_token="\n")
    batch = model.builder([SHORT, LONG]).decoder
    newline = model.decoder_tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    assert (batch.input_ids[torch.arange(2), batch.eos_index] == newline[0]).all()
    with pytest.raises(Causal2VecError, match="must be one"):
        tiny_with_decoder("llama", eos_token="two words")


SUMMARY = "\nSummarize the above in one word:"


def test_text_suffix_closes_every_row_within_the_limit_and_survives_save(tmp_path):
    """The suffix takes EOS's place: every row ends with it (cut texts too), the pooled state is its last token's,
    rows stay within max_decoder_length, and the setting is saved with the model."""
    model = tiny_with_decoder("llama", text_suffix=SUMMARY)
    suffix = model.decoder_tokenizer(SUMMARY, add_special_tokens=False)["input_ids"]
    assert len(suffix) > 1
    texts = [SHORT, LONG * 10]
    batch = model.builder(texts, "Instruct: find the package\nQuery: ").decoder
    assert batch.truncated == [False, True]
    for row, eos, mask in zip(batch.input_ids.tolist(), batch.eos_index.tolist(), batch.attention_mask.tolist()):
        assert sum(mask) <= model.config.max_decoder_length and eos == sum(mask) - 1
        assert row[eos + 1 - len(suffix):eos + 1] == suffix
    plain = tiny_with_decoder("llama")
    text_ids = plain.decoder_tokenizer(SHORT, add_special_tokens=False)["input_ids"]
    assert model.builder.count_decoder_tokens([SHORT]) == [1 + len(text_ids) + len(suffix) + 1]  # BOS, CTX
    assert plain.builder.count_decoder_tokens([SHORT]) == [1 + len(text_ids) + 1 + 1]
    assert model.encode(texts).shape == (2, model.embedding_dim)
    model.save_pretrained(tmp_path / "m")
    assert Causal2Vec.from_pretrained(tmp_path / "m").config.text_suffix == SUMMARY
    with pytest.raises(Causal2VecError, match="not both"):
        tiny_with_decoder("llama", text_suffix=SUMMARY, eos_token="\n")


@pytest.mark.parametrize("arch, expected", [
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("bert-causal", {"query", "key", "value", "dense"})])
def test_lora_on_all_linear_layers(arch, expected):
    from causal2vec.model.config import LoraSettings

    model = tiny_with_decoder(arch).enable_lora(LoraSettings(target_modules="all-linear"))
    adapted = {name.split(".lora_A")[0] for name, _ in model.decoder.named_parameters() if ".lora_A" in name}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == expected
    assert not any("pooler" in name for name in adapted), "BERT's unused pooler gets no adapter"


def test_pretrained_parts_ask_for_no_hub_kernels(minilm_small):
    """transformers would fetch layers from the hub when a GPU model goes to train(): the platform runs offline
    (causal2vec.model sets USE_HUB_KERNELS=NO unless the user chose)."""
    assert minilm_small.context_encoder.encoder.use_kernels is False
    assert getattr(minilm_small.decoder, "use_kernels", False) is False
