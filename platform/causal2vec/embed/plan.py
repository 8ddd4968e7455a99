"""What a run does with each row, decided on the driver from the scan pass: reject it, drop it as a repeated id,
skip it as already committed, or embed it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from causal2vec.embed.inputs import ORD, REASON, SOURCE

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class RowPlan:
    total: int
    rejects: pa.Table  # id, source, reason, text
    duplicate_ords: pa.Array  # ordinals of the non-first rows of duplicated ids
    skipped: int  # valid rows whose id is already in the table
    to_embed: int

    def reasons(self) -> dict[str, int]:
        """Rejected rows counted by reason (every duplicate id under one key)."""
        counts: dict[str, int] = {}
        for reason in self.rejects["reason"].to_pylist():
            key = "duplicate id" if reason.startswith("duplicate id") else reason
            counts[key] = counts.get(key, 0) + 1
        return counts


def plan_rows(scan: pa.Table, existing: pa.Array) -> RowPlan:
    """Rejects, duplicates (the first row of an id wins) and rows already present, from the scan pass."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = scan.filter(pc.is_valid(scan[REASON]))
    good = scan.filter(pc.is_null(scan[REASON]))
    first = good.group_by("id").aggregate([(ORD, "min"), (ORD, "count")])
    dup_ids = first.filter(pc.greater(first[f"{ORD}_count"], 1))
    losers = good.filter(pc.is_in(good["id"], value_set=dup_ids["id"].combine_chunks()))
    losers = losers.join(dup_ids.select(["id", f"{ORD}_min"]), "id")
    losers = losers.filter(pc.not_equal(losers[ORD], losers[f"{ORD}_min"]))
    winners = good.filter(pc.is_in(good[ORD], value_set=dup_ids[f"{ORD}_min"].combine_chunks()))
    winner_source = dict(zip(winners["id"].to_pylist(), winners[SOURCE].to_pylist()))
    dup_reasons = [f"duplicate id (kept the row at {winner_source[i]})" for i in losers["id"].to_pylist()]
    rejects = pa.concat_tables([
        bad.select(["id", SOURCE, REASON, "text", ORD]),
        pa.table({"id": losers["id"], SOURCE: losers[SOURCE], REASON: pa.array(dup_reasons, pa.string()),
                  "text": pa.nulls(losers.num_rows, pa.string()), ORD: losers[ORD]}),
    ]).sort_by(ORD).drop_columns([ORD]).rename_columns(["id", "source", "reason", "text"])  # input order
    unique = first.num_rows
    skipped = int(pc.sum(pc.is_in(first["id"], value_set=existing)).as_py() or 0) if len(existing) else 0
    return RowPlan(scan.num_rows, rejects, losers[ORD].combine_chunks(), skipped, unique - skipped)
