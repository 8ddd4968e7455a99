"""The config toolkit and the one reader: flags generated from typed fields, one error formatter, paths, and every
input format read the same way."""

from __future__ import annotations

import argparse
import gzip
import json
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import Field

from causal2vec import Causal2VecError, readers
from causal2vec.config import Strict, absolute, add_flags, flag_values, load


class Pool(Strict):
    size: str = Field("2-4", description="pool size")
    num_cpus: float = Field(1.0, description="CPUs per actor", json_schema_extra={"flag": "cpus"})


class Job(Strict):
    name: str = Field(description="what to call it")
    inputs: list[str] = Field(default_factory=list, description="files")
    mode: Literal["fast", "exact"] = Field("fast", description="how")
    steps: int = Field(10, ge=1, description="how many")
    sort: bool = Field(True, description="sort rows")
    dry_run: bool = Field(False, description="do nothing")
    options: dict[str, str] = Field(default_factory=dict)  # YAML only
    workers: Pool = Field(default_factory=Pool)


def test_every_typed_field_becomes_a_flag():
    parser = argparse.ArgumentParser()
    flags = add_flags(parser, Job)
    assert flags == {"name": "--name", "inputs": "--inputs", "mode": "--mode", "steps": "--steps", "sort": "--no-sort",
                     "dry_run": "--dry-run", "workers.size": "--workers-size", "workers.num_cpus": "--workers-cpus"}
    args = parser.parse_args(["--name", "x", "--inputs", "a", "b", "--no-sort", "--workers-cpus", "0.5"])
    assert flag_values(args) == {"name": "x", "inputs": ["a", "b"], "sort": False, "workers.num_cpus": 0.5}
    job = load(Job, "job settings", overrides=flag_values(args))
    assert (job.inputs, job.sort, job.dry_run, job.workers.size, job.workers.num_cpus) == (["a", "b"], False, False,
                                                                                          "2-4", 0.5)
    help_text = parser.format_help()
    assert "(default 2-4)" in help_text and "{fast,exact}" in help_text and "--options" not in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "slow"])


def test_one_formatter_names_every_problem_as_the_user_wrote_it(tmp_path):
    flags = add_flags(argparse.ArgumentParser(), Job)
    with pytest.raises(Causal2VecError, match=r"invalid job settings: --name: Field required; --steps: Input should"):
        load(Job, "job settings", overrides={"steps": 0}, flags=flags)
    with pytest.raises(Causal2VecError, match=r"--workers-cpus \(workers.num_cpus\): Input should be a valid number"):
        load(Job, "job settings", overrides={"name": "x", "workers.num_cpus": "many"}, flags=flags)
    (tmp_path / "job.yaml").write_text("name: x\nworkers: {sizes: 3}\nstpes: 2\n")
    with pytest.raises(Causal2VecError, match="workers.sizes: Extra inputs are not permitted; --stpes: Extra"):
        load(Job, "job settings", path=tmp_path / "job.yaml", flags=flags)
    job = load(Job, "job settings", data={"name": "x"}, sets=["workers.size='3'", "mode=exact"])
    assert (job.workers.size, job.workers.num_cpus, job.mode) == ("3", 1.0, "exact")
    with pytest.raises(Causal2VecError, match="--set 'steps': expected key=value"):
        load(Job, "job settings", sets=["steps"])
    with pytest.raises(Causal2VecError, match="--set 'name.first=1': name is not a section"):
        load(Job, "job settings", data={"name": "x"}, sets=["name.first=1"])


def test_paths_are_made_absolute_and_uris_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert absolute("s3://bucket/key") == "s3://bucket/key"


def test_text_problem_is_the_one_rule():
    assert [readers.text_problem(t) for t in ("ok", None, "", " \n", 3)] == [
        None, "null text", "empty text", "whitespace-only text", "not a string (int)"]


def test_one_reader_for_every_format(tmp_path):
    rows = [{"id": "a", "text": "first"}, {"id": "b", "text": "second"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.csv").write_text("id,text\na,first\nb,second\n")
    (tmp_path / "t.tsv").write_text("id\ttext\na\tfirst\nb\tsecond\n")
    for name in ("t.parquet", "t.jsonl", "t.jsonl.gz", "t.csv", "t.tsv"):
        assert readers.read_table(tmp_path / name).to_pylist() == rows, name
    (tmp_path / "t.txt").write_text("first\nsecond\n")
    assert readers.read_table(tmp_path / "t.txt").to_pylist() == [{"text": "first"}, {"text": "second"}]
    (tmp_path / "parts").mkdir()
    for i, row in enumerate(rows):
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / "parts" / f"{i}.parquet")
    assert readers.read_table(tmp_path / "parts").to_pylist() == rows
    assert readers.read_table(str(tmp_path / "parts" / "*.parquet")).to_pylist() == rows
    assert [u["row_group"] for u in readers.units(readers.expand([str(tmp_path / "t.parquet")]))] == [0]


def test_reader_errors_name_the_setting(tmp_path):
    with pytest.raises(Causal2VecError, match="--corpus '.*missing.parquet': no such file or directory"):
        readers.read_table(tmp_path / "missing.parquet", what="--corpus")
    (tmp_path / "notes.doc").write_text("x")
    with pytest.raises(Causal2VecError, match="unknown file type"):
        readers.read_table(tmp_path / "notes.doc")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(Causal2VecError, match="not a readable jsonl file"):
        readers.read_table(tmp_path / "bad.jsonl")
