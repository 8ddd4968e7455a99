"""Bulk embedding into LanceDB: real local Ray (the session fixture), real LanceDB directories, the tiny model.

One corpus is embedded once per module (the expensive part) and checked from several angles; the resume test runs
the job as a subprocess against the session's Ray and kills it part-way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from causal2vec import Causal2VecError, store
from causal2vec.embed.config import load_config
from causal2vec.embed.job import embed_corpus

ROOT = Path(__file__).parents[1]
SMALL_ACTORS = {"tokenize.num_cpus": 0.5, "encoder.num_cpus": 0.5, "decoder.num_cpus": 1}  # fit the 4 test CPUs
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "ga", "hi", "bo", "de", "fy", "wa"]
WORDS = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES[:6]]


def _texts(n: int, seed: int, words: int = 12) -> list[str]:
    """Distinct random word sequences: a random-init model still tells them apart."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, words)) for _ in range(n)]


def _run(**settings):
    return embed_corpus(load_config(None, {**SMALL_ACTORS, **settings}))


@pytest.fixture(scope="module")
def corpus(ray_session, tmp_path_factory):
    """2000 good documents + 4 over-long ones, with null / empty / whitespace-only texts and duplicate ids mixed in,
    in a parquet file of several row groups; embedded once into DIR::docs (with an FTS index)."""
    root = tmp_path_factory.mktemp("embed")
    texts = _texts(2000, seed=0)
    texts[100:104] = [" ".join(_texts(1, seed=i, words=400)) for i in range(4)]  # > 256 tokens: truncated
    ids = [f"doc-{i:05d}" for i in range(2000)]
    section = [["admin", "devel", "libs", "net"][i % 4] for i in range(2000)]
    bad = {"doc-b0": None, "doc-b1": "", "doc-b2": "   \t\n", "doc-b3": None, "doc-b4": "\n"}
    reasons = {"doc-b0": "null text", "doc-b1": "empty text", "doc-b2": "whitespace-only text",
               "doc-b3": "null text", "doc-b4": "whitespace-only text"}
    rows = list(zip(ids, texts, section))
    for j, (i, t) in enumerate(bad.items()):
        rows.insert(300 * j + 7, (i, t, "admin"))
    for j in range(5):  # a later row reusing an earlier id: rejected, the first one is kept
        rows.insert(1500 + j, (ids[j * 10], f"another text for {ids[j * 10]}", "net"))
    table = pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows], "section": [r[2] for r in rows],
                      "rank": list(range(len(rows)))})
    pq.write_table(table, root / "corpus.parquet", row_group_size=700)
    spec = f"{root / 'lancedb'}::docs"
    summary = _run(input=[str(root / "corpus.parquet")], table=spec, commit_rows=400, fts=True)
    duplicate_sources = {f"corpus.parquet:{r + 1}" for r in range(len(rows))
                         if rows[r][1] and rows[r][1].startswith("another text")}
    return {"spec": spec, "summary": summary, "ids": ids, "texts": dict(zip(ids, texts)), "bad": reasons,
            "duplicate_sources": duplicate_sources, "section": dict(zip(ids, section))}


def test_the_table_holds_every_valid_row_once_with_the_models_vectors(corpus, tiny):
    summary, table = corpus["summary"], store.open_table(corpus["spec"])
    assert summary["rows_written"] == summary["table_rows"] == table.count_rows() == 2000
    assert summary["rejected"] == 10 and summary["skipped_existing"] == 0
    assert summary["rejected_by_reason"] == {"null text": 2, "empty text": 1, "whitespace-only text": 2,
                                             "duplicate id": 5}
    assert summary["truncated"] == 4 and summary["docs_per_s"] > 0 and summary["tokens_per_s"] > 0
    rows = table.search().select(["id", "text", "vector", "section", "rank"]).limit(None).to_arrow()
    assert sorted(rows["id"].to_pylist()) == corpus["ids"], "each valid id exactly once"
    assert rows.schema.field("vector").type == pa.list_(pa.float32(), tiny.embedding_dim)
    by_id = {r["id"]: r for r in rows.to_pylist()}
    assert all(by_id[i]["text"] == corpus["texts"][i] for i in corpus["ids"]), "the first of duplicate ids is kept"
    assert all(by_id[i]["section"] == corpus["section"][i] for i in corpus["ids"]), "passthrough column"
    sample = corpus["ids"][::37] + corpus["ids"][100:104]  # includes the truncated ones
    stored = np.array([by_id[i]["vector"] for i in sample], dtype=np.float32)
    np.testing.assert_allclose(stored, tiny.encode([corpus["texts"][i] for i in sample]), atol=1e-5)

    identity = store.table_identity(table)
    assert identity["model"] == "tiny" and identity["fingerprint"] == tiny.config.fingerprint()
    assert identity["dim"] == tiny.embedding_dim and identity["pooling"] == "concat" and identity["normalize"]


def test_rejects_table_lists_exactly_the_bad_rows(corpus):
    rejects = store.open_table(corpus["spec"] + store.REJECTS_SUFFIX).to_arrow().to_pylist()
    by_reason = {(r["id"], r["reason"]) for r in rejects if not r["reason"].startswith("duplicate")}
    assert by_reason == set(corpus["bad"].items())
    duplicates = [r for r in rejects if r["reason"].startswith("duplicate id")]
    assert {r["source"] for r in duplicates} == corpus["duplicate_sources"]
    assert all("kept the row at corpus.parquet:" in r["reason"] for r in duplicates)


def test_each_document_finds_itself_through_the_ann_index(corpus, tiny):
    table = store.open_table(corpus["spec"])
    indices = {ix.index_type: ix for ix in table.list_indices()}
    assert "IvfHnswSq" in indices and indices["IvfHnswSq"].num_indexed_rows == 2000, indices
    assert "FTS" in indices
    sample = corpus["ids"][::20]
    queries = tiny.encode([corpus["texts"][i] for i in sample])  # one batch; search() would embed one at a time
    hits = [store.search(table, tiny, corpus["texts"][i], k=1, query_vector=q)[0]["id"] == i
            for i, q in zip(sample, queries)]
    assert sum(hits) >= 0.95 * len(sample), f"self-retrieval top-1 {sum(hits)}/{len(sample)}"

    doc = corpus["ids"][42]
    for mode in ("fts", "hybrid"):
        rows = store.search(corpus["spec"], tiny, corpus["texts"][doc], k=3, mode=mode)
        assert rows[0]["id"] == doc and "vector" not in rows[0], mode
    rows = store.search(table, tiny, corpus["texts"][doc], k=5, filter="section = 'net'")
    assert rows and all(r["section"] == "net" for r in rows) and doc not in [r["id"] for r in rows]
    with pytest.raises(Causal2VecError, match="filter"):
        store.search(table, tiny, "x", filter="no_such_column = 1")


def test_a_different_model_is_refused(corpus, tiny):
    from causal2vec import Causal2Vec
    from conftest import tiny_with_decoder

    table = store.open_table(corpus["spec"])
    other_config = Causal2Vec.from_pretrained("tiny", pooling="last")
    with pytest.raises(Causal2VecError, match=r"model 'preset:tiny' does not match .* with model 'tiny'.*dim"):
        store.search(table, other_config, "query")
    other_weights = tiny_with_decoder("llama", max_encoder_length=256, max_decoder_length=256)  # same config
    assert other_weights.config.fingerprint() == tiny.config.fingerprint()
    with pytest.raises(Causal2VecError, match="different weights"):
        store.check_model(table, other_weights, "llama-tiny")
    with pytest.raises(Causal2VecError, match="already holds vectors of model 'tiny'"):
        _run(input=[str(Path(corpus["spec"].split("::")[0]).parent / "corpus.parquet")], table=corpus["spec"],
             model=_saved(other_weights, Path(corpus["spec"].split("::")[0]).parent / "llama-model"))
    assert store.check_model(table, tiny)["model"] == "tiny"


def _saved(model, path: Path) -> str:
    if not path.exists():
        model.save_pretrained(path)
    return str(path)


def test_search_cli_prints_json_lines(corpus, capsys):
    from causal2vec.cli import main

    doc = corpus["ids"][7]
    assert main(["search", "--table", corpus["spec"], "--model", "tiny", corpus["texts"][doc], "-k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and lines[0]["id"] == doc and "_distance" in lines[0]
    assert main(["search", "--table", corpus["spec"], corpus["texts"][doc], "-k", "1", "--mode", "fts"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == doc  # --model defaults to the table's model
    assert main(["search", "--table", corpus["spec"] + "_nope", "q"]) == 2
    assert "no table 'docs_nope'" in capsys.readouterr().err


def test_jsonl_and_text_inputs_with_generated_ids_fused_stage(ray_session, tmp_path, tiny):
    texts = _texts(60, seed=5)
    with open(tmp_path / "part.jsonl", "w") as f:
        for i, t in enumerate(texts[:30]):
            f.write(json.dumps({"body": t if i != 3 else "  ", "lang": "en", "score": i * 0.5}) + "\n")
    (tmp_path / "notes.txt").write_text("\n".join(texts[30:40] + [""] + texts[40:]) + "\n")
    spec = f"{tmp_path / 'db'}::mixed"
    summary = _run(input=[str(tmp_path / "part.jsonl")], table=spec, text_column="body", stages="fused")
    assert (summary["rows_written"], summary["rejected"]) == (29, 1)
    rows = {r["id"]: r for r in store.open_table(spec).to_arrow().to_pylist()}
    assert rows["part.jsonl:1"]["text"] == texts[0] and rows["part.jsonl:2"]["score"] == 0.5
    assert rows["part.jsonl:30"]["lang"] == "en" and "part.jsonl:4" not in rows
    np.testing.assert_allclose(np.array(rows["part.jsonl:5"]["vector"], np.float32), tiny.encode([texts[4]])[0],
                               atol=1e-5)

    spec = f"{tmp_path / 'db'}::lines"
    summary = _run(input=[str(tmp_path / "*.txt")], table=spec, stages="fused", index="none")
    assert (summary["rows_written"], summary["rejected"]) == (30, 1)
    rows = {r["id"]: r["text"] for r in store.open_table(spec).to_arrow().to_pylist()}
    assert rows["notes.txt:1"] == texts[30] and rows["notes.txt:12"] == texts[40] and "notes.txt:11" not in rows
    reject = store.open_table(spec + "_rejects").to_arrow().to_pylist()
    assert reject == [{"id": "notes.txt:11", "source": "notes.txt:11", "reason": "empty text", "text": ""}]


def test_bad_flags_are_named_and_exit_2(ray_session, tmp_path, capsys):
    from causal2vec.cli import main

    pq.write_table(pa.table({"doc_id": ["a"], "body": ["text"]}), tmp_path / "c.parquet")
    spec = f"{tmp_path / 'db'}::t"
    cases = [
        (["--input", str(tmp_path / "c.parquet"), "--table", spec], "--text-column 'text'"),
        (["--input", str(tmp_path / "c.parquet"), "--table", spec, "--text-column", "body", "--id-column", "key"],
         "--id-column 'key'"),
        (["--input", str(tmp_path / "missing.parquet"), "--table", spec], "no such file"),
        (["--input", str(tmp_path / "c.parquet"), "--table", "nodir"], "DIR::TABLE"),
        (["--table", spec], "--input: Field required"),
        (["--input", str(tmp_path / "c.parquet"), "--table", spec, "--decoder-concurrency", "3-1"],
         "decoder.concurrency"),
    ]
    for argv, message in cases:
        assert main(["embed-corpus", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "causal2vec embed-corpus: error:" in err and message in err, (argv, err)
        assert "column" not in message or "doc_id, body" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["embed-corpus", "--index", "flat"])
    assert exit_info.value.code == 2

    # a file read inside a Ray task: the task's error comes back as the same clear message
    (tmp_path / "a.jsonl").write_text('{"body": "some text"}\n')
    (tmp_path / "b.jsonl").write_text('{"other": "more text"}\n')
    assert main(["embed-corpus", "--input", str(tmp_path / "*.jsonl"), "--table", spec, "--text-column", "body"]) == 2
    assert "--text-column 'body': " + str(tmp_path / "b.jsonl") + " has no such column" in capsys.readouterr().err

    assert load_config(str(ROOT / "jobs" / "configs" / "embed-tiny.yaml")).fts
    (tmp_path / "bad.yaml").write_text("input: [x.parquet]\ntable: d::t\nbatchsize: 3\n")
    with pytest.raises(Causal2VecError, match="--batchsize: Extra inputs are not permitted"):
        load_config(str(tmp_path / "bad.yaml"))


def _table_rows(spec: str) -> int:
    try:
        return store.open_table(spec).count_rows()
    except (Causal2VecError, ValueError, RuntimeError, OSError):  # not created yet, or caught mid-creation
        return 0


def test_a_killed_job_resumes_without_duplicates_or_re_embedding(ray_session, tmp_path, capsys):
    texts = _texts(1000, seed=9)
    texts[10] = ""
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    spec = f"{tmp_path / 'db'}::docs"
    cmd = [sys.executable, str(ROOT / "jobs" / "embed_corpus.py"), "--model", "tiny",
           "--input", str(tmp_path / "docs.jsonl"), "--table", spec, "--batch-size", "50", "--commit-rows", "50",
           "--stages", "fused"]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    log = open(tmp_path / "job.log", "w")  # a file, not a pipe nobody drains while polling
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _table_rows(spec) == 0 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.poll() is None, "the job ended uninterrupted: " + (tmp_path / "job.log").read_text()[-3000:]
        os.killpg(job.pid, signal.SIGKILL)  # the driver dies mid-run; Ray then stops its workers
        job.wait(30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
    rows = _table_rows(spec)
    for _ in range(50):  # let a commit already in flight land before resuming
        time.sleep(0.2)
        rows, before = _table_rows(spec), rows
        if rows == before:
            break
    assert 0 < rows < 999, f"interrupted with {rows} rows committed"

    from causal2vec.cli import main  # the same command through `causal2vec embed-corpus`, on the session's Ray

    assert main(["embed-corpus", *cmd[2:]]) == 0
    summary = json.loads(next(x for x in capsys.readouterr().out.splitlines() if x.startswith("RESULT_JSON "))
                         .removeprefix("RESULT_JSON "))
    assert summary["skipped_existing"] >= rows > 0, "rows committed before the kill are not embedded again"
    assert summary["rows_written"] + summary["skipped_existing"] == 999 and summary["rejected"] == 1
    ids = store.open_table(spec).search().select(["id"]).limit(None).to_arrow()["id"].to_pylist()
    assert sorted(ids) == sorted(f"docs.jsonl:{i + 1}" for i in range(1000) if i != 10), "every valid id once"


def test_inputs_that_would_embed_garbage_are_refused_or_rejected(ray_session, tmp_path, capsys):
    """A number column as text, a text file with bytes that are not UTF-8, a damaged row group, a table directory
    that cannot be written: each is a clear error (exit 2) naming the problem, or a named reject; never garbage."""
    from causal2vec.cli import main

    spec = f"{tmp_path / 'db'}::t"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1000, 1001]}), tmp_path / "numbers.parquet")
    assert main(["embed-corpus", "--input", str(tmp_path / "numbers.parquet"), "--table", spec]) == 2
    assert "--text-column 'text': " in (err := capsys.readouterr().err) and "int64 values there, not strings" in err

    (tmp_path / "latin1.txt").write_bytes("first line\ncaf\xe9 au lait\nthird line\n".encode("latin-1"))
    summary = _run(input=[str(tmp_path / "latin1.txt")], table=spec, stages="fused", index="none")
    assert (summary["rows_written"], summary["rejected"]) == (2, 1)
    (reject,) = store.open_table(spec + "_rejects").to_arrow().to_pylist()
    assert reject["id"] == "latin1.txt:2" and reject["reason"].startswith("not valid UTF-8")

    damaged = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"text": _texts(2000, seed=9)}), damaged, row_group_size=1000)
    column = pq.ParquetFile(damaged).metadata.row_group(1).column(0)
    data = bytearray(damaged.read_bytes())
    middle = (column.dictionary_page_offset or column.data_page_offset) + column.total_compressed_size // 2
    data[middle:middle + 32] = b"\xff" * 32
    damaged.write_bytes(bytes(data))
    assert main(["embed-corpus", "--input", str(damaged), "--table", f"{tmp_path / 'db'}::d"]) == 2
    assert f"{damaged}: row group 1 cannot be read, the file is damaged" in capsys.readouterr().err

    # a directory this user cannot write (root writes anywhere: the check runs as nobody there)
    readonly = Path(tempfile.mkdtemp(prefix="c2v-ro-"))
    shutil.copy(tmp_path / "numbers.parquet", readonly / "in.parquet")
    os.chmod(readonly, 0o555)
    os.chmod(readonly / "in.parquet", 0o444)
    as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    done = subprocess.run([*as_user, sys.executable, "-m", "causal2vec.cli", "embed-corpus", "--input",
                           str(readonly / "in.parquet"), "--table", f"{readonly}/db::t"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(readonly)})
    shutil.rmtree(readonly, ignore_errors=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"table '{readonly}/db::t': cannot write to {readonly}/db" in done.stderr
