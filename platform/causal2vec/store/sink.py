"""The Ray Datasink that writes a bulk job's rows into a LanceDB table, one atomic commit every `commit_rows` rows.

Ray's `write_lance` commits once at the end, so a killed job would keep nothing. This sink commits from the write
tasks, which hold the vectors (pulling every vector through the driver would make one process the bottleneck of a
cluster), each chunk one `tables.append`: an interruption loses at most the chunks in flight. Run its write tasks with
`max_retries=0` (a retried task would re-add chunks it had already committed); a rerun resumes instead, skipping
the ids already committed (`tables.existing_ids`).

This module imports ray.data (seconds): only the job that writes imports it.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink

from causal2vec.store.tables import append, open_table

log = logging.getLogger(__name__)

TRUNCATED, TOKENS = "__c2v_truncated", "__c2v_tokens"  # per-row columns the model stages add (counted, not stored)
COUNTS = ("rows", "truncated", "tokens", "commits")


class LanceSink(Datasink):
    """Appends to table `spec` every `commit_rows` rows; `result` holds the totals once the write completes."""

    def __init__(self, spec: str, schema: pa.Schema, commit_rows: int):
        self.spec, self.schema, self.commit_rows = spec, schema, commit_rows
        self.result: dict[str, int] = dict.fromkeys(COUNTS, 0)

    @property
    def min_rows_per_write(self) -> int:
        return self.commit_rows  # each write task gets at least one full chunk

    def write(self, blocks, ctx) -> dict[str, int]:
        _worker_logging()
        table = open_table(self.spec)
        stats = dict.fromkeys(COUNTS, 0)
        pending: list[pa.Table] = []
        for block in blocks:
            pending.append(block if isinstance(block, pa.Table) else pa.Table.from_pandas(block))
            while sum(t.num_rows for t in pending) >= self.commit_rows:
                chunk = pa.concat_tables(pending)
                self._commit(table, chunk.slice(0, self.commit_rows), stats)
                pending = [chunk.slice(self.commit_rows)]
        if sum(t.num_rows for t in pending):
            self._commit(table, pa.concat_tables(pending), stats)
        return stats

    def _commit(self, table, chunk: pa.Table, stats: dict[str, int]) -> None:
        append(table, chunk, self.schema)
        stats["rows"] += chunk.num_rows
        stats["truncated"] += int(pc.sum(chunk[TRUNCATED]).as_py() or 0)
        stats["tokens"] += int(pc.sum(chunk[TOKENS]).as_py() or 0)
        stats["commits"] += 1
        log.info("committed %d rows to %s (%d by this task)", chunk.num_rows, self.spec, stats["rows"])

    def on_write_complete(self, write_result) -> None:
        totals = dict.fromkeys(COUNTS, 0)
        for part in write_result.write_returns:
            for key in totals:
                totals[key] += (part or {}).get(key, 0)
        self.result = totals


def _worker_logging() -> None:
    """Chunk commits are logged from the workers (Ray forwards their stderr to the driver; the demo reads them)."""
    logger = logging.getLogger("causal2vec.store")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
