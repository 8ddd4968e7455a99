"""Ray Train + DeepSpeed training on CPU with the tiny model: ZeRO-2/3, export, resume, worker failure.
`ray job submit` against a local head is tests/test_demo.py's (the demo trains that way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from causal2vec import Causal2Vec, Causal2VecError
from causal2vec.train.config import load_config

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "jobs" / "configs" / "tiny.yaml"
TEXTS = ["text editor for the terminal", "a library for parsing XML documents", "network monitoring daemon"]


def _config(tmp_path, name: str, *overrides: str):
    return load_config(CONFIG, [f"ray.storage_path={tmp_path}", f"ray.name={name}", "data.dev=null", *overrides])


def _fit(config):
    from causal2vec.train.trainer import run_training

    result = run_training(config)
    return result, result.return_value


@pytest.mark.parametrize("stage, merge", [(2, True), (3, False)])
def test_two_workers_reduce_the_loss_and_export_a_loadable_model(ray_session, tmp_path, stage, merge, tiny):
    """ZeRO-2 exports LoRA merged (the default); ZeRO-3 keeps the adapter (`merge_lora: false`), gathered from the
    workers' shards."""
    config = _config(tmp_path, f"zero{stage}", f"deepspeed.zero_stage={stage}", "optim.max_steps=24",
                     "ray.report_every_steps=4", "ray.checkpoint_every_steps=12",
                     "model.gradient_checkpointing=true", *([] if merge else ["merge_lora=false"]))
    result, summary = _fit(config)
    losses = [h["loss"] for h in summary["history"]]
    assert [h["step"] for h in summary["history"]] == [4, 8, 12, 16, 20, 24]
    assert np.mean(losses[-2:]) < losses[0] - 0.2, f"loss did not go down: {losses}"
    assert result.checkpoint is not None

    exported = Causal2Vec.from_pretrained(summary["export_dir"])
    assert exported.has_lora != merge
    if not merge:
        assert (Path(summary["export_dir"]) / "decoder_lora" / "adapter_model.safetensors").is_file()
        lora_b = [p for n, p in exported.decoder.named_parameters() if "lora_B" in n]
        assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0, "trained adapters are not all zero"
    after = exported.encode(TEXTS)
    assert np.abs(after - tiny.encode(TEXTS)).max() > 1e-3, "training must have changed the model"
    # the exported weights are the trained ones, not an empty/partial adapter (a ZeRO-3 trap): reload twice
    np.testing.assert_allclose(Causal2Vec.from_pretrained(summary["export_dir"]).encode(TEXTS), after, atol=1e-6)


def test_a_killed_worker_is_recovered_and_a_later_run_continues(ray_session, tmp_path):
    """Within a run, a worker that dies is restarted from the last checkpoint; a later run with more steps continues
    from the finished run's checkpoint, with its curve and its optimizer state (one test: a Ray job fewer)."""
    first = _config(tmp_path, "crash", "optim.max_steps=8", "ray.report_every_steps=2",
                    "ray.checkpoint_every_steps=4", "ray.fail_at_step=6", "ray.max_failures=1")
    _, summary = _fit(first)
    assert (tmp_path / "crash" / ".failed-at-6").exists(), "the worker really died"
    history = summary["history"]
    assert summary["state"]["restarts"] == 1 and summary["state"]["step"] == 8
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    resumed = [h for h in history if h["restarts"] == 1]
    assert resumed[0]["step"] == 6 and resumed[0]["optimizer_step"] == 6, \
        "the restarted group resumed from the step-4 checkpoint, not from step 0"

    second = _config(tmp_path, "crash", "optim.max_steps=12", "ray.report_every_steps=2",
                     "ray.checkpoint_every_steps=4")
    _, summary = _fit(second)
    history = summary["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12], "the first run's curve is kept in the checkpoint"
    assert [h["restarts"] for h in history] == [0, 0, 1, 1, 2, 2], "the second run starts after step 8, not at 0"
    assert summary["state"]["restarts"] == 2 and summary["state"]["step"] == 12
    # the optimizer's own step count continued too: its state was restored, not just a counter
    assert history[4]["optimizer_step"] == 10


def test_bad_configs_and_data_are_named(ray_session, tmp_path):
    with pytest.raises(Causal2VecError, match="optim.learning_rate: Extra inputs"):
        load_config(CONFIG, ["optim.learning_rate=1"])
    with pytest.raises(Causal2VecError, match="ray.worker_resources: .*custom resources"):
        load_config(CONFIG, ["ray.worker_resources={GPU: 1}"])
    with pytest.raises(Causal2VecError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from causal2vec.train.data import prepare_source

    rows = {"query": ["q1", "", None, "q4", "q5"], "positive": ["p1", "p2", "p3", "  ", "p5"],
            "negatives": [["n1"], ["n2"], ["n3"], ["n4"], []]}
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet")
    spec = _config(tmp_path, "x").model.source()
    prepared = prepare_source(str(tmp_path / "pairs.parquet"), "p", spec, num_negatives=0, default_instruction=None)
    assert (prepared.rows, prepared.dropped) == (2, 3)  # empty query, null query, blank positive
    prepared = prepare_source(str(tmp_path / "pairs.parquet"), "p", spec, num_negatives=1, default_instruction=None)
    assert (prepared.rows, prepared.dropped) == (1, 4)  # and q5 has no hard negative
    (tmp_path / "pairs.jsonl").write_text('{"query": "q1", "positive": "p1"}\n{"query": "", "positive": "p2"}\n'
                                          '{"query": "q3", "positive": "p3", "instruction": "Find: "}\n')
    prepared = prepare_source(str(tmp_path / "pairs.jsonl"), "j", spec, num_negatives=0, default_instruction="D: ")
    assert (prepared.rows, prepared.dropped) == (2, 1)
    assert sorted(prepared.dataset.to_pandas()["instruction"]) == ["D: ", "Find: "]
    pq.write_table(pa.table({"question": ["q"], "positive": ["p"]}), tmp_path / "bad.parquet")
    with pytest.raises(Causal2VecError, match="missing column\\(s\\) query"):
        prepare_source(str(tmp_path / "bad.parquet"), "b", spec, num_negatives=0, default_instruction=None)


def test_training_rows_are_shuffled_by_seed_whatever_the_file_order(ray_session, tmp_path):
    """A sorted file (siblings adjacent) must not become batches of near-duplicates: the order comes from the seed
    and the texts, so the same rows in any file order train in the same order (a resume relies on it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from causal2vec.train.data import prepare_source

    spec = _config(tmp_path, "x").model.source()

    def order(rows: list[int], seed: int) -> list[str]:
        """Rows in training order, named by their instruction column (which passes through untouched)."""
        path = tmp_path / f"pairs_{seed}_{rows[0]}.parquet"
        pq.write_table(pa.table({"query": [f"package {i}" for i in rows], "positive": [f"doc {i}" for i in rows],
                                 "instruction": [f"{i:03d}" for i in rows]}), path)
        prepared = prepare_source(str(path), "p", spec, num_negatives=0, default_instruction=None, seed=seed)
        return [row for batch in prepared.dataset.iter_batches(batch_format="pyarrow")
                for row in batch["instruction"].to_pylist()]

    trained = order(list(range(200)), seed=0)
    assert sorted(trained) == [f"{i:03d}" for i in range(200)] and trained != sorted(trained)
    assert order(list(reversed(range(200))), seed=0) == trained
    assert order(list(range(200)), seed=1) != trained


def test_projector_alignment_leaves_the_adapters_alone(tmp_path, tiny):
    """align_steps: the encoder and projector train on the CTX state while the decoder's adapters wait. Run in one
    process (train.single): the micro-batch's forward and loss are the Ray loop's own (loop.micro_batch_loss)."""
    from causal2vec.train.single import train_single, training_rows

    config = _config(tmp_path, "align", "optim.align_steps=4", "optim.lr_projector=1.0e-2")
    model, history = train_single(config, training_rows(config), "cpu", steps=4, report_every=2)
    lora_b = [p for n, p in model.decoder.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) == 0, "adapters must not move while aligning"
    assert history[0]["lr"] == 0.0, "the decoder group's lr is 0 while aligning"
    projector = dict(model.context_encoder.projector.named_parameters())
    before = dict(tiny.context_encoder.projector.named_parameters())
    assert max(float((projector[k] - before[k]).abs().max()) for k in before) > 1e-3, "the projector trained"
    with pytest.raises(Causal2VecError, match="use_ctx_token=false"):
        _config(tmp_path, "align-bad", "optim.align_steps=2", "model.use_ctx_token=false", "model.pooling=last")


def test_native_bf16_follows_the_cpu(tmp_path):
    """`native` (deepspeed.bf16 and the model dtype): bf16 where the CPU has AVX512-BF16 or AMX, fp32 where bf16
    would be emulated (many times slower than fp32); bf16 on a GPU."""
    import torch

    from causal2vec.train.optim import cpu_autocast, deepspeed_config

    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    config = _config(tmp_path, "native", "deepspeed.bf16=native")
    with cpu_autocast(config, use_gpu=False):
        assert torch.is_autocast_enabled("cpu") == native
    assert deepspeed_config(config, use_gpu=True)["bf16"]["enabled"]
    assert Causal2Vec.from_pretrained("tiny", dtype="native").dtype == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(Causal2VecError, match="auto, native, fp32"):
        Causal2Vec.from_pretrained("tiny", dtype="bf17")


def test_every_model_setting_of_the_training_config_reaches_the_model(tmp_path):
    config = _config(tmp_path, "x", "model.ctx_placement=after_bos", 'model.ctx_prefix="\\n"', "model.pooling=last",
                     "model.ctx_scale=3000", "model.projector_init=isometry")
    assert config.model.source().overrides == {"pooling": "last", "ctx_placement": "after_bos", "ctx_prefix": "\n",
                                               "ctx_scale": 3000.0, "projector_init": "isometry"}
    with pytest.raises(Causal2VecError, match="model.ctx_placement: Input should be 'after_instruction' or"):
        _config(tmp_path, "x", "model.ctx_placement=first")
    with pytest.raises(Causal2VecError, match="model.ctx_scale: Input should be greater than 0"):
        _config(tmp_path, "x", "model.ctx_scale=0")


def test_the_halves_loss_needs_a_concat_model(tmp_path):
    from causal2vec.train.loop import build_model

    with pytest.raises(ValueError, match="halves_loss_weight .* pools 'last'"):
        build_model(_config(tmp_path, "x", "optim.halves_loss_weight=0.5", "model.pooling=last"))
    with pytest.raises(Causal2VecError, match="optim.halves_loss_weight: Input should be greater than or equal"):
        _config(tmp_path, "x", "optim.halves_loss_weight=-1")


def test_the_encoder_loss_needs_a_context_encoder(tmp_path):
    from causal2vec.train.loop import build_model

    with pytest.raises(ValueError, match="encoder_loss_weight trains the context encoder; this model has none"):
        build_model(_config(tmp_path, "x", "optim.encoder_loss_weight=1", "model.use_ctx_token=false",
                            "model.pooling=last"))
    with pytest.raises(Causal2VecError, match="optim.encoder_temperature: Input should be greater than 0"):
        _config(tmp_path, "x", "optim.encoder_temperature=0")


TRAINING_CONFIGS = sorted(p for p in (ROOT / "jobs" / "configs").glob("*.yaml") if not p.name.startswith("embed-"))


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_training_config_loads(path):
    """A typo in a shipped config (a key, a value out of range) is caught here, not an hour into a run."""
    config = load_config(path)
    assert config.optim.max_steps > 0 and config.data.train


def test_single_process_training_follows_the_job(tmp_path):
    """causal2vec.train.single (benches; a GPU machine without Ray): the job's seeded row order, the loss goes down,
    dev nDCG@10 on every dev step and the last whatever the report cadence, adapters trained and the base frozen."""
    import torch

    from causal2vec.train.loop import build_model
    from causal2vec.train.single import train_single, training_rows

    config = load_config(CONFIG, ["data.dev.every_steps=6", "data.dev.limit_queries=20", "data.dev.limit_corpus=100"])
    rows = training_rows(config)
    assert rows["order"].to_pylist() == sorted(rows["order"].to_pylist())
    model, history = train_single(config, rows, "cpu", steps=16, report_every=4)
    assert [h["step"] for h in history] == [4, 6, 8, 12, 16]
    assert [h["step"] for h in history if "dev_ndcg_at_10" in h] == [6, 12, 16]
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-2:]) < losses[0] - 0.1, f"loss did not go down: {losses}"
    start = dict(build_model(config).named_parameters())
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), start[name].detach())}
    assert moved and all("lora_" in n or not n.startswith("decoder.") for n in moved)
    assert any("lora_" in n for n in moved) and any("projector" in n for n in moved)
