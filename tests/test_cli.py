"""The `causal2vec` console script, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np


CLI = str(Path(sys.executable).parent / "causal2vec")  # the console script installed beside this interpreter


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_embed_prints_json_and_writes_npy(tiny, tmp_path):
    out = run("embed", "--model", "tiny", "vim editor", "apt package manager")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    vectors = np.array([row["embedding"] for row in payload["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, tiny.encode(["vim editor", "apt package manager"]), atol=1e-6)

    (tmp_path / "texts.txt").write_text("first text\nsecond text\n")
    out = run("embed", "--model", "tiny", "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "e.npy"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), tiny.encode(["first text", "second text"]), atol=1e-6)


def test_embed_errors_name_the_problem(tmp_path):
    out = run("embed", "--model", "gpt-17", "x")
    assert out.returncode == 2 and "cannot load Causal2Vec model 'gpt-17'" in out.stderr
    assert "preset" in out.stderr
    out = run("embed", "--model", "tiny", "ok", "   ")
    assert out.returncode == 2 and "text #1 is empty" in out.stderr
    out = run("embed", "--model", "tiny")
    assert out.returncode == 2 and "nothing to embed" in out.stderr
    out = run("embed", "--model", "tiny", "--input", str(tmp_path / "missing.txt"))
    assert out.returncode == 2 and "no such file" in out.stderr
