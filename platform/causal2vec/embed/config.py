"""The bulk job's settings: one typed class. Its fields are the YAML keys, the `--set` keys and (generated) the flags
of `causal2vec embed-corpus` and `jobs/embed_corpus.py`."""

from __future__ import annotations

import argparse
from typing import Any, Literal

from pydantic import Field, field_validator

from causal2vec.config import IndexType, Strict, absolute, add_flags, flag_values, load
from causal2vec.model.sources import ModelSource
from causal2vec.store.tables import parse_spec


class TokenizeSection(Strict):
    """An actor pool without GPUs. concurrency: a fixed size, or `min-max` (the pool autoscales between them)."""

    concurrency: str = Field("1-2", description="actor pool size: N, or MIN-MAX to autoscale",
                             json_schema_extra={"metavar": "N|MIN-MAX"})
    num_cpus: float = Field(1.0, description="CPUs per actor", json_schema_extra={"flag": "cpus"})
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources each actor needs, "
                                        "e.g. {encoder_node: 1}: the pool runs only on nodes that declare them")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _sizes(cls, value):
        value = str(value)
        low, _, high = value.partition("-")
        if not (low.isdigit() and (not high or high.isdigit())) or int(low) < 1 or (high and int(high) < int(low)):
            raise ValueError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {value!r}")
        return value

    def ray_args(self) -> dict[str, Any]:
        """The pool's resource arguments for `map_batches` / `ray.remote` (no custom resources: left out)."""
        return {"num_cpus": self.num_cpus, **({"resources": self.resources} if self.resources else {})}

    def strategy(self):
        from ray.data import ActorPoolStrategy

        low, _, high = self.concurrency.partition("-")
        return ActorPoolStrategy(min_size=int(low), max_size=int(high or low))


class StageSection(TokenizeSection):
    """A model stage's actor pool."""

    concurrency: str = Field("1", description="actor pool size: N, or MIN-MAX to autoscale",
                             json_schema_extra={"metavar": "N|MIN-MAX"})
    num_gpus: float = Field(0.0, description="GPUs per actor (fractions allowed)", json_schema_extra={"flag": "gpus"})

    def ray_args(self) -> dict[str, Any]:
        return super().ray_args() | ({"num_gpus": self.num_gpus} if self.num_gpus else {})


class EmbedConfig(Strict):
    model: str = Field("tiny", description="a saved model directory or a preset")
    input: list[str] = Field(min_length=1, description="files, directories or globs (local or pyarrow filesystem URIs)")
    table: str = Field(description="the output table DIR::TABLE (rejects go to DIR::TABLE_rejects)")
    format: Literal["auto", "parquet", "jsonl", "text", "csv", "tsv"] = Field(
        "auto", description="the input format (auto: from each file's suffix)")
    id_column: str | None = Field(None, description="the id column (default: `id` when present, else <file>:<row>)")
    text_column: str = Field("text", description="the text column")
    instruction: str | None = Field(None, description="a decoder-side instruction for every document (usually none)")
    device: str = Field("auto", description="auto (cuda if the actor has a GPU, else cpu), cpu, cuda")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), native (bf16 where the "
                                           "hardware has it), fp32, bf16, fp16")
    stages: Literal["split", "fused"] = Field(
        "split", description="separate encoder / decoder actors, or one fused actor (small models)")
    batch_size: int = Field(256, ge=1, description="rows per actor call (and per Ray Data block)")
    sub_batch_size: int = Field(32, ge=1, description="rows per forward pass, after sorting by length")
    bucket: bool = Field(True, description="sort each batch's rows by length before cutting passes (--no-bucket: "
                                           "input order, for benchmarks)")
    tokenize: TokenizeSection = Field(default_factory=TokenizeSection)
    encoder: StageSection = Field(default_factory=StageSection)
    decoder: StageSection = Field(default_factory=StageSection)  # also the fused stage's resources
    commit_rows: int = Field(2048, ge=1, description="rows per LanceDB commit (what a killed job keeps)")
    index: IndexType = Field("auto", description="the ANN index (auto: HNSW_SQ below 100k rows, IVF_PQ above)")
    num_partitions: int | None = Field(None, ge=1, description="override the index's IVF partitions")
    num_sub_vectors: int | None = Field(None, ge=1, description="override IVF_PQ's sub-vectors")
    fts: bool = Field(False, description="also build a full-text index on text")
    overwrite: bool = Field(False, description="replace the table instead of resuming it")

    @field_validator("table")
    @classmethod
    def _spec(cls, value: str) -> str:
        parse_spec(value)
        return value


FLAGS = add_flags(argparse.ArgumentParser(add_help=False), EmbedConfig)  # field path -> flag, for error messages


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> EmbedConfig:
    """YAML file (optional) <- `--set a.b=value` <- explicit settings ({"decoder.num_cpus": 2}); local paths made
    absolute (workers run elsewhere)."""
    config = load(EmbedConfig, "embed-corpus settings", path=path, sets=sets, overrides=overrides, flags=FLAGS)
    config.input = [absolute(p) for p in config.input]
    uri, name = parse_spec(config.table)
    config.table = f"{absolute(uri)}::{name}"
    config.model = ModelSource.of(config.model).label
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `causal2vec embed-corpus` and `jobs/embed_corpus.py`: --config, --set, one per setting."""
    parser.add_argument("--config", help="a YAML file of these settings (flags override it)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set decoder.num_gpus=1")
    add_flags(parser, EmbedConfig)


def config_from_args(args: argparse.Namespace) -> EmbedConfig:
    return load_config(args.config, flag_values(args), args.sets)
