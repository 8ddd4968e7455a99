"""The one stage runner and model parts: `encode`, the bulk stages, the Serve stages and training's collate all cut
their rows through model/inference.py and give identical vectors; a model part holds only its own weights."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pyarrow as pa
import pytest

from causal2vec import Causal2VecError
from causal2vec.model import inference
from causal2vec.model.causal2vec import load_model
from causal2vec.model.sources import ModelSource

LONG = ("Vim is an almost compatible version of the UNIX editor Vi. Many new features have been added: multi level "
        "undo, syntax highlighting, command line history, on-line help, filename completion, block operations. ")
TEXTS = ["vim editor", LONG * 3, "a package manager for Debian", LONG, "x", LONG[:150], "web server", LONG * 6, "gz"]
ROWS_PER_PASS = 3


@pytest.fixture
def runner_calls(monkeypatch) -> list[int]:
    """The number of rows each call of the runner's length sort received."""
    calls: list[int] = []
    sort = inference.length_buckets

    def counting(lengths, *args):
        calls.append(len(lengths))
        return sort(lengths, *args)

    monkeypatch.setattr(inference, "length_buckets", counting)
    return calls


def test_encode_the_bulk_stages_and_the_serve_stages_share_the_runner(tiny, runner_calls):
    from causal2vec.embed.stages import DecoderStage, EncoderStage, FusedStage, TokenizeStage, vector_rows
    from causal2vec.serve.deployments import context_vectors, embeddings
    from causal2vec.serve.wire import DecoderCall, TokenRows

    n = len(TEXTS)
    encoded = tiny.encode(TEXTS, batch_size=ROWS_PER_PASS)
    assert runner_calls == [n, n], "encode: the encoder pass and the decoder pass"

    runner_calls.clear()
    stage = dict(model="tiny", device="cpu", dtype="fp32", sub_batch_size=ROWS_PER_PASS, bucket=True)
    tokens = TokenizeStage("tiny", use_encoder=True)(pa.table({"text": TEXTS}))
    encoder_stage, decoder_stage = EncoderStage(**stage), DecoderStage(**stage)
    split = decoder_stage(encoder_stage(tokens))
    fused = FusedStage(**stage)(pa.table({"text": TEXTS}))
    assert runner_calls == [n, n, n, n], "bulk: encoder stage, decoder stage, fused stage (both passes)"
    np.testing.assert_array_equal(vector_rows(split["vector"]), encoded)
    np.testing.assert_array_equal(vector_rows(fused["vector"]), encoded)
    # the bulk actors hold only their part: no decoder weights in the encoder actor, no encoder in the decoder actor
    assert encoder_stage.model.decoder is None and _parameters(encoder_stage.model) == _parameters(tiny.context_encoder)
    assert decoder_stage.model.context_encoder is None and _parameters(decoder_stage.model) == _parameters(tiny.decoder)

    runner_calls.clear()
    builder = tiny.builder
    dec_ids, enc_ids = builder.tokenize_for_decoder(TEXTS), builder.tokenize_for_encoder(TEXTS)
    lengths, _ = builder.decoder_lengths(dec_ids)
    requests = [slice(0, 3), slice(3, n)]  # two requests' calls merged into one batch per stage
    passes = {"rows_per_pass": ROWS_PER_PASS, "pass_cost": None}
    ctx = context_vectors(load_model("tiny", "encoder"), [TokenRows.pack(enc_ids[r]) for r in requests], passes)
    calls = [DecoderCall(TokenRows.pack(dec_ids[r]), [None] * len(dec_ids[r]), [None] * len(dec_ids[r]),
                         sum(lengths[r])) for r in requests]
    served, _ = embeddings(load_model("tiny", "decoder"), list(zip(calls, ctx)), passes)
    assert runner_calls == [n, n], "serve: the encoder replica's batch and the decoder replica's batch"
    assert [len(v) for v in served] == [3, n - 3]
    np.testing.assert_array_equal(np.concatenate(served), encoded)


def test_training_batches_are_cut_by_the_runner(tiny, runner_calls):
    from causal2vec.train.data import TokenizePairs, collate
    from causal2vec.train.loop import embed_passes

    pairs = pa.table({"query": TEXTS[:4], "positive": TEXTS[4:8]})
    batch = collate(tiny.builder, TokenizePairs(ModelSource.of("tiny"), 0, None)(pairs), rows_per_pass=3)
    assert runner_calls == [8]
    assert sorted(i for rows, _ in batch.passes for i in rows) == list(range(8)) and len(batch.passes) == 3
    embeddings = embed_passes(tiny, batch, "cpu").detach().numpy()
    np.testing.assert_allclose(embeddings, tiny.encode(TEXTS[:8]), atol=1e-5)


def test_passes_are_sorted_by_length_and_results_come_back_in_order():
    assert inference.length_buckets([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]
    assert inference.length_buckets([3, 9, 1, 7, 5], 2, sort=False) == [[0, 1], [2, 3], [4]]
    import torch

    passes = [[1, 3], [4, 0], [2]]
    outputs = [torch.tensor([[1.0], [3.0]]), torch.tensor([[4.0], [0.0]]), torch.tensor([[2.0]])]
    assert inference.in_input_order(passes, outputs).flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_passes_are_cut_where_the_padding_saved_is_worth_a_pass(tiny):
    """With a pass cost, sorted rows are cut to minimise padded tokens + cost per pass (at most rows_per_pass rows
    each); the vectors do not depend on the cut, and a replica measures the cost for its own model and device."""
    lengths = [100, 10, 100, 10, 98]
    assert inference.length_buckets(lengths, 4, pass_cost=20) == [[0, 2, 4], [1, 3]]  # 320 + 40 < 420 + 20
    assert inference.length_buckets(lengths, 8, pass_cost=1000) == [[0, 2, 4, 1, 3]]  # padding is cheaper
    assert inference.length_buckets(lengths, 4, pass_cost=0) == [[0, 2], [4], [1, 3]]  # no padding at all
    assert inference.length_buckets(lengths, 2, pass_cost=0, sort=False) == [[0, 1], [2, 3], [4]]
    texts, builder = TEXTS[:8], tiny.builder
    ctx = inference.encoder_pass(tiny, builder.tokenize_for_encoder(texts), rows_per_pass=8, pass_cost=0)
    cut = inference.decoder_pass(tiny, builder.tokenize_for_decoder(texts), ctx.vectors, rows_per_pass=8, pass_cost=0)
    np.testing.assert_allclose(cut.vectors, tiny.encode(texts), atol=1e-5)
    for model in (tiny, load_model(ModelSource.of("tiny", use_ctx_token=False, pooling="last"))):
        cost = inference.measure_pass_cost(model)
        assert cost is None or 0 <= cost < 100_000


def test_per_row_normalisation_and_stage_outputs(tiny):
    texts, builder = [TEXTS[0], TEXTS[7], TEXTS[2]], tiny.builder
    enc_ids, dec_ids = builder.tokenize_for_encoder(texts), builder.tokenize_for_decoder(texts)
    ctx = inference.encoder_pass(tiny, enc_ids, rows_per_pass=2)
    out = inference.decoder_pass(tiny, dec_ids, ctx.vectors, normalize=[False, None, True], rows_per_pass=2)
    np.testing.assert_allclose(out.vectors[0], tiny.encode(texts[:1], normalize=False)[0], atol=1e-6)
    np.testing.assert_allclose(out.vectors[1:], tiny.encode(texts[1:]), atol=1e-6)
    lengths, cut = builder.decoder_lengths(dec_ids)
    assert cut == out.truncated == [False, True, False] and ctx.truncated == builder.encoder_truncated(enc_ids)
    assert out.tokens == lengths and out.padded_tokens == 2 * lengths[1] + lengths[0]  # passes [1, 2], [0]
    with pytest.raises(Causal2VecError, match="2 normalize flags for 3 texts"):
        inference.decoder_pass(tiny, dec_ids, ctx.vectors, normalize=[True, False], rows_per_pass=2)
    assert inference.decoder_pass(tiny, [], None, rows_per_pass=2).vectors.shape == (0, tiny.embedding_dim)


def test_pooling_modes_are_the_shared_choice_list():
    from causal2vec.config import Pooling
    from causal2vec.model.pooling import POOLERS

    assert set(POOLERS) == set(get_args(Pooling))


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("where", ["preset", "directory"])
def test_a_part_loads_only_its_own_weights(tiny, tmp_path, where):
    source = "tiny" if where == "preset" else str(tiny.save_pretrained(tmp_path / "m"))
    encoder, decoder = load_model(source, "encoder"), load_model(source, "decoder")
    assert (encoder.part, decoder.part, tiny.part) == ("encoder", "decoder", "all")
    assert encoder.decoder is None and decoder.context_encoder is None
    assert _parameters(encoder) == _parameters(tiny.context_encoder)
    assert _parameters(decoder) == _parameters(tiny.decoder)
    assert _parameters(encoder) + _parameters(decoder) == _parameters(tiny)
    assert encoder.embedding_dim == decoder.embedding_dim == tiny.embedding_dim
    batch = tiny.builder.encode_for_encoder(TEXTS)
    import torch

    with torch.no_grad():
        torch.testing.assert_close(encoder.context_vectors(batch), tiny.context_vectors(batch))
    with pytest.raises(Causal2VecError, match="only its encoder part"):
        encoder.encode(["x"])
    with pytest.raises(Causal2VecError, match="only its decoder part"):
        decoder.encode(["x"])
    with pytest.raises(Causal2VecError, match="save a model loaded whole"):
        encoder.save_pretrained(tmp_path / "half")


def test_part_errors_say_what_to_change():
    with pytest.raises(Causal2VecError, match="part must be one of all, encoder, decoder"):
        load_model("tiny", "projector")
    with pytest.raises(Causal2VecError, match="no Contextual token"):
        load_model(ModelSource.of("tiny", use_ctx_token=False, pooling="last"), "encoder")


def test_model_sources_name_every_kind(tiny, tmp_path, monkeypatch):
    from causal2vec.model.config import Causal2VecConfig

    saved = tiny.save_pretrained(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    assert ModelSource.of("tiny").kind == "preset"
    relative = ModelSource.of("m")  # made absolute: workers and replicas run elsewhere
    assert relative.kind == "directory" and relative.label == str(saved)
    parts = ModelSource.from_config(Causal2VecConfig(encoder=str(saved / "encoder"), decoder="m.gguf", pooling="last"))
    assert parts.kind == "parts" and parts.overrides["pooling"] == "last" and parts.decoder == "m.gguf"
    assert ModelSource.of(ModelSource.of("tiny"), pooling="last").overrides == {"pooling": "last"}
    with pytest.raises(Causal2VecError, match="by an encoder and a decoder"):
        ModelSource(encoder="only-one")
