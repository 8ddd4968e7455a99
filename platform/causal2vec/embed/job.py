"""The bulk job's driver: plan the rows, embed the new ones through the stages, commit, index, summarise."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from causal2vec import readers
from causal2vec.embed.config import EmbedConfig, config_from_args
from causal2vec.embed.inputs import keep_rows, plan_layout, read_batch, scan_view
from causal2vec.embed.plan import plan_rows
from causal2vec.errors import Causal2VecError
from causal2vec.ray_init import ensure_ray, ray_call
from causal2vec.store import tables
from causal2vec.store.indexes import refresh_indexes

log = logging.getLogger(__name__)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI verb's entry: settings from the flags, then join or start Ray (`ensure_ray`) and run."""
    config = config_from_args(args)
    tables.check_writable(config.table)  # before Ray starts and the model loads
    ensure_ray()
    return embed_corpus(config)


def embed_corpus(config: EmbedConfig) -> dict[str, Any]:
    """Run the whole job on the connected Ray cluster; returns the summary (also logged)."""
    import pyarrow as pa
    import ray

    from causal2vec.embed.stages import model_stages
    from causal2vec.store.sink import LanceSink

    started = time.monotonic()
    files = readers.expand(config.input, config.format)
    layout = plan_layout(files, config)
    units = [{**u, "index": i} for i, u in enumerate(readers.units(files))]
    log.info("%d input file(s), %d read unit(s); id column %s", len(files), len(units),
             layout.id_column or "(generated <file>:<row>)")
    identity = _model_identity(config)
    schema = tables.table_schema(identity, layout.passthrough)
    table = tables.create_or_resume(config.table, schema, overwrite=config.overwrite)
    existing = tables.existing_ids(table)

    def read():
        return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"files": files, "layout": layout})

    parts = ray_call(lambda: ray.get(read().map_batches(scan_view, batch_format="pyarrow").to_arrow_refs()))
    parts = [t for t in parts if t.num_rows]
    if not parts:
        raise Causal2VecError(f"--input {' '.join(config.input)}: no rows to embed (the files are empty)")
    plan = plan_rows(pa.concat_tables(parts), existing)
    rejects_table = tables.write_rejects(config.table, plan.rejects)
    log.info("%d rows: %d to embed, %d already in the table, %d rejected (see %s)", plan.total, plan.to_embed,
             plan.skipped, plan.rejects.num_rows, f"{config.table}{tables.REJECTS_SUFFIX}")

    sink = LanceSink(config.table, schema, config.commit_rows)
    embed_started = time.monotonic()
    if plan.to_embed:
        ds = read().map_batches(keep_rows, batch_format="pyarrow", fn_kwargs={
            "drop_ords": ray.put(plan.duplicate_ords), "skip_ids": ray.put(existing)})
        ds = model_stages(ds.repartition(target_num_rows_per_block=config.batch_size), config)
        ray_call(lambda: ds.write_datasink(sink, ray_remote_args={"max_retries": 0}))
    written, embed_seconds = sink.result, time.monotonic() - embed_started

    index = refresh_indexes(table, new_rows=written["rows"], index=config.index, fts=config.fts,
                            num_partitions=config.num_partitions, num_sub_vectors=config.num_sub_vectors)
    rows_now = table.count_rows()
    expected = len(existing) + written["rows"]
    if rows_now != expected:
        log.error("table %s has %d rows, expected %d (present before + written): another writer, or a bug",
                  config.table, rows_now, expected)
    summary = {
        "table": config.table, "rejects_table": f"{config.table}{tables.REJECTS_SUFFIX}",
        "model": identity["model"], "fingerprint": identity["fingerprint"], "dim": identity["dim"],
        "input_rows": plan.total, "rows_written": written["rows"], "skipped_existing": plan.skipped,
        "rejected": rejects_table.count_rows(), "rejected_by_reason": plan.reasons(),
        "truncated": written["truncated"], "table_rows": rows_now, "commits": written["commits"],
        "tokens": written["tokens"], "embed_seconds": round(embed_seconds, 3),
        "seconds": round(time.monotonic() - started, 3),
        "docs_per_s": written["rows"] / embed_seconds if written["rows"] else 0.0,
        "tokens_per_s": written["tokens"] / embed_seconds if written["rows"] else 0.0,
        "index": index, "stages": config.stages,
    }
    log.info("summary: %s", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"table {summary['table']}: {summary['table_rows']} rows",
             f"  written {summary['rows_written']}, skipped (already present) {summary['skipped_existing']}, "
             f"rejected {summary['rejected']} {summary['rejected_by_reason'] or ''}, "
             f"truncated {summary['truncated']}",
             f"  {summary['docs_per_s']:.1f} docs/s, {summary['tokens_per_s']:.0f} tokens/s "
             f"({summary['embed_seconds']:.1f} s embedding, {summary['seconds']:.1f} s in all)",
             f"  index {summary['index']}"]
    if summary["rejected"]:
        lines.append(f"  rejects in {summary['rejects_table']}")
    return "\n".join(lines)


def _identity(model: str, device: str, dtype: str) -> dict[str, Any]:
    from causal2vec.model.causal2vec import load_model
    from causal2vec.store.identity import model_identity

    return model_identity(load_model(model, device=device, dtype=dtype), model)


def _model_identity(config: EmbedConfig) -> dict[str, Any]:
    """The model's identity for the table's metadata: computed here for CPU runs; where the stages use GPUs, in a
    task with the decoder's resources (the driver may be a CPU head node without room for the model)."""
    import ray

    res = config.decoder
    if not (res.num_gpus or config.encoder.num_gpus):  # CPU actors: identify the model as they will run it
        return _identity(config.model, "cpu" if config.device == "auto" else config.device, config.dtype)
    return ray_call(ray.remote(**res.ray_args())(_identity).remote(config.model, config.device, config.dtype))
