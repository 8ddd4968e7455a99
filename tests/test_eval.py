"""Evaluation: the local evaluator agrees with mteb; instructions go to the query side's decoder only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from causal2vec import Causal2VecError
from causal2vec.eval.retrieval import RetrievalTask, evaluate, exact_top_k, query_instruction, ranking_metrics
from causal2vec.samples import CORPUS, QUERIES

DESCRIPTION = "Given a Debian package synopsis, retrieve its description"


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> RetrievalTask:
    """60 queries against 200 documents from the bundled Debian sample, written to parquet as a user would."""
    root = tmp_path_factory.mktemp("task")
    queries = pq.read_table(QUERIES).slice(0, 60)
    corpus = pq.read_table(CORPUS)
    wanted = set(queries["doc_id"].to_pylist())
    ids = corpus["id"].to_pylist()
    keep = [i for i, d in enumerate(ids) if d in wanted] + [i for i, d in enumerate(ids) if d not in wanted][:140]
    pq.write_table(corpus.take(keep), root / "corpus.parquet")
    pq.write_table(queries, root / "queries.parquet")
    return RetrievalTask.from_files(root / "corpus.parquet", root / "queries.parquet", name="DebianSmall",
                                    description=DESCRIPTION)


def test_local_evaluator_matches_mteb(minilm_small, small_task):
    from causal2vec.eval.mteb_model import Causal2VecMTEB, local_retrieval_task, run_mteb

    ours = evaluate(minilm_small, small_task)
    theirs = run_mteb(Causal2VecMTEB(minilm_small), [local_retrieval_task(small_task)])["DebianSmall"]
    assert 0.2 < ours["ndcg_at_10"] < 1.0, "a meaningful comparison needs a non-trivial score"
    for metric in ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10", "ndcg_at_1"):
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-4), metric  # mteb rounds to 1e-5


def test_mteb_wrapper_puts_the_instruction_on_the_query_decoder_only(tiny):
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    from causal2vec.eval.mteb_model import Causal2VecMTEB, local_retrieval_task
    from causal2vec.model.tokenization import Batch

    task = local_retrieval_task(RetrievalTask("T", ["q"], ["vim"], ["d"], ["vim editor"], {"q": {"d": 1}},
                                              description=DESCRIPTION))
    wrapper = Causal2VecMTEB(tiny)
    expected = f"Instruct: {DESCRIPTION}\nQuery: "
    assert wrapper.instruction_for(task.metadata, PromptType.query) == expected
    assert wrapper.instruction_for(task.metadata, PromptType.document) is None

    seen = []
    real_builder = tiny.builder

    class Recording:
        """The model's builder, keeping each encode call's encoder and decoder batches (one pass each here)."""

        def __getattr__(self, name):
            return getattr(real_builder, name)

        def encoder_batch(self, token_ids):
            seen.append(Batch(real_builder.encoder_batch(token_ids), None))
            return seen[-1].encoder

        def decoder_batch(self, token_ids, instruction=None, **kwargs):
            seen[-1].decoder = real_builder.decoder_batch(token_ids, instruction, **kwargs)
            return seen[-1].decoder

    texts = ["text editor for programmers", "package manager"]
    loader = DataLoader([{"text": t} for t in texts], batch_size=2)
    tiny.builder = Recording()
    try:
        queries = wrapper.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                                 prompt_type=PromptType.query)
        docs = wrapper.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                              prompt_type=PromptType.document)
    finally:
        tiny.builder = real_builder
    instr_ids = tiny.decoder_tokenizer(expected, add_special_tokens=False)["input_ids"]
    query_batch, doc_batch = seen
    for row in query_batch.decoder.input_ids.tolist():  # [BOS] [instruction] [CTX] ...
        assert row[1:1 + len(instr_ids)] == instr_ids
    assert torch.equal(query_batch.encoder.input_ids, doc_batch.encoder.input_ids), "the encoder never sees it"
    assert doc_batch.decoder.input_ids.shape[1] == query_batch.decoder.input_ids.shape[1] - len(instr_ids)
    np.testing.assert_allclose(queries, tiny.encode(texts, instruction=expected), atol=1e-6)
    np.testing.assert_allclose(docs, tiny.encode(texts), atol=1e-6)


def test_ranking_metrics_by_hand():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1, "d3": 2}, "c": {}}
    ranked = [["d9", "d1", "d5"], ["d3", "d8", "d2"], ["d1"]]
    m = ranking_metrics(ranked, ["a", "b", "c"], qrels, ks=(1, 10))
    ndcg_a = 1 / np.log2(3)
    ndcg_b = (2 + 1 / np.log2(4)) / (2 + 1 / np.log2(3))
    assert m["judged_queries"] == 2  # "c" has no relevant document and is not averaged
    assert m["ndcg_at_10"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    assert m["recall_at_1"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall_at_10"] == pytest.approx(1.0)
    assert m["mrr_at_10"] == pytest.approx((0.5 + 1.0) / 2)


def test_blocked_top_k_equals_brute_force():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(37, 16)).astype(np.float32), rng.normal(size=(1000, 16)).astype(np.float32)
    scores, index = exact_top_k(q, d, 25, query_block=8, doc_block=97)
    full = q @ d.T
    np.testing.assert_array_equal(index, np.argsort(-full, axis=1)[:, :25])
    np.testing.assert_allclose(scores, np.take_along_axis(full, index, 1), rtol=1e-5)
    assert exact_top_k(q, d[:5], 25)[1].shape == (37, 5)


def test_pairs_and_qrels_formats(tmp_path):
    pq.write_table(pa.table({"query": ["q1", "q2", "q3"], "positive": ["doc A", "doc B", "doc A"]}),
                   tmp_path / "pairs.parquet")
    task = RetrievalTask.from_pairs(tmp_path / "pairs.parquet")
    assert task.corpus == ["doc A", "doc B"] and task.qrels["q1"] == {"d1": 1} and task.qrels["q2"] == {"d0": 1}
    (tmp_path / "c.jsonl").write_text('{"_id": "x", "text": "one"}\n{"_id": "y", "text": "two"}\n')
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "first"}\n')
    (tmp_path / "r.tsv").write_text("query-id\tcorpus-id\tscore\n1\ty\t2\n")
    task = RetrievalTask.from_files(tmp_path / "c.jsonl", tmp_path / "q.jsonl", tmp_path / "r.tsv")
    assert task.qrels == {"1": {"y": 2}} and task.corpus_ids == ["x", "y"]


def test_bad_task_files_get_clear_errors(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp_path / "c.parquet")
    pq.write_table(pa.table({"query_id": ["1"], "query": ["q"], "doc_id": ["zzz"]}), tmp_path / "q.parquet")
    with pytest.raises(Causal2VecError, match="missing column 'text'"):
        RetrievalTask.from_files(tmp_path / "c.parquet", tmp_path / "q.parquet")
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(Causal2VecError, match="not in the corpus"):
        RetrievalTask.from_files(tmp_path / "c.parquet", tmp_path / "q.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", ""]}), tmp_path / "c.parquet")
    with pytest.raises(Causal2VecError, match="row 1 has an empty or missing 'text'"):
        RetrievalTask.from_files(tmp_path / "c.parquet", tmp_path / "q.parquet")


def test_eval_job_writes_json(small_task, tmp_path):
    queries = tmp_path / "q.parquet"
    pq.write_table(pq.read_table(QUERIES).slice(0, 20), queries)
    out = subprocess.run([sys.executable, "jobs/eval.py", "--model", "tiny", "--corpus", str(CORPUS),
                          "--queries", str(queries), "--description", DESCRIPTION,
                          "--output", str(tmp_path / "scores.json"), "--cache", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())["results"]["q"]
    assert scores["judged_queries"] == 20 and 0.0 <= scores["ndcg_at_10"] <= 1.0
    assert "ndcg_at_10" in out.stdout
    assert list((tmp_path / "cache").glob("*/chunk-00000.npy"))  # a rerun would resume from here


def test_query_instruction_template():
    assert query_instruction("find it") == "Instruct: find it\nQuery: "
    assert query_instruction(None) is None


def test_corpus_limit_keeps_every_judged_document():
    ids = [f"d{i}" for i in range(10)]
    task = RetrievalTask("T", ["q1", "q2"], ["a", "b"], ids, [f"text {i}" for i in range(10)],
                         {"q1": {"d7": 1}, "q2": {"d9": 1}})
    small = task.with_corpus_limit(4)
    assert small.corpus_ids == ["d0", "d1", "d7", "d9"]  # judged first, then distractors, in corpus order
    assert small.corpus == ["text 0", "text 1", "text 7", "text 9"]
    assert task.with_corpus_limit(100) is task


class Interrupted(RuntimeError):
    pass


class DiesAfter:
    """A real model whose process 'dies' after `calls` encode calls: an evaluation interrupted part way."""

    def __init__(self, model, calls: int):
        self.model, self.calls, self.dtype = model, calls, model.dtype

    def encode(self, *args, **kwargs):
        if self.calls == 0:
            raise Interrupted("interrupted")
        self.calls -= 1
        return self.model.encode(*args, **kwargs)


def test_an_interrupted_embedding_resumes_from_its_finished_chunks(tiny, small_task, tmp_path):
    from causal2vec.eval.cache import chunk_folder, encode_resumable

    texts = small_task.corpus  # 200 texts: 4 chunks of 64 (the last one short)
    with pytest.raises(Interrupted):  # the probe, 2 chunks, then dies in the third
        encode_resumable(DiesAfter(tiny, 3), texts, tmp_path, chunk_rows=64)
    folder = chunk_folder(tiny, texts, tmp_path, chunk_rows=64)
    assert sorted(p.name for p in folder.iterdir()) == ["chunk-00000.npy", "chunk-00001.npy"]
    resumed = encode_resumable(DiesAfter(tiny, 3), texts, tmp_path, chunk_rows=64)  # probe + the 2 missing chunks
    np.testing.assert_allclose(resumed, tiny.encode(texts), atol=1e-5)
    again = encode_resumable(DiesAfter(tiny, 1), texts, tmp_path, chunk_rows=64)  # all cached: only the probe
    np.testing.assert_array_equal(again, resumed)


def test_another_model_or_other_texts_never_read_cached_vectors(tiny, small_task, tmp_path):
    from conftest import tiny_with_decoder

    from causal2vec.eval.cache import encode_resumable

    texts = small_task.corpus[:50]
    encode_resumable(tiny, texts, tmp_path, chunk_rows=20)
    changed = texts[:49] + ["a changed document"]
    np.testing.assert_allclose(encode_resumable(tiny, changed, tmp_path, chunk_rows=20), tiny.encode(changed),
                               atol=1e-5)
    other = tiny_with_decoder("llama")
    np.testing.assert_allclose(encode_resumable(other, texts, tmp_path, chunk_rows=20), other.encode(texts),
                               atol=1e-5)
    assert len(list(tmp_path.iterdir())) == 3  # one subfolder each


def test_a_cached_evaluation_scores_as_an_uncached_one(tiny, small_task, tmp_path):
    plain = evaluate(tiny, small_task)
    cached = evaluate(tiny, small_task, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # the corpus and the queries
    for metric in ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"):
        assert cached[metric] == pytest.approx(plain[metric], abs=1e-6), metric
    assert evaluate(DiesAfter(tiny, 2), small_task, cache=tmp_path)["ndcg_at_10"] == cached["ndcg_at_10"]


def test_each_half_of_a_concat_embedding_scores_as_that_state_alone(tiny, small_task):
    from causal2vec.eval.retrieval import score_embeddings

    assert "halves_ndcg_at_10" not in evaluate(tiny, small_task)
    halves = evaluate(tiny, small_task, halves=True)["halves_ndcg_at_10"]
    docs = tiny.encode(small_task.corpus, normalize=False)  # raw [h_ctx ; h_eos], never normalised as a whole
    queries = tiny.encode(small_task.queries, query_instruction(DESCRIPTION), normalize=False)
    h = tiny.hidden_size
    for name, part in (("ctx", slice(None, h)), ("eos", slice(h, None))):
        alone = score_embeddings(small_task, queries[:, part], docs[:, part])["ndcg_at_10"]
        assert halves[name] == pytest.approx(alone, abs=1e-6), name
    assert halves["ctx"] != halves["eos"]
