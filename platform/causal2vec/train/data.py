"""Training pairs as Ray Datasets: read, validate (drop + count bad rows), tokenize in parallel tasks, collate.

Rows: `query`, `positive`, optional `negatives: list<string>`, optional `instruction`. Files are read by the one
reader (readers.py), in parallel read tasks. Tokenization runs in Ray Data tasks (raw ids, no layout); the workers'
collate applies the model's layout and padding (BatchBuilder), so the data pipeline never needs the model's weights.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
import pyarrow as pa

from causal2vec import readers
from causal2vec.errors import Causal2VecError
from causal2vec.model.inference import length_buckets
from causal2vec.model.sources import ModelSource, load_builder
from causal2vec.model.tokenization import Batch

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("q_enc", "q_dec", "p_enc", "p_dec", "n_enc", "n_dec")
ORDER = "order"  # the column rows are sorted on: a seeded shuffle (prepare_source)


def read_pairs(path: str):
    """A Ray Dataset of training pairs: a file, a directory or a glob of them (parquet, jsonl, ...)."""
    import ray.data

    files = readers.expand([path], what="training data")
    units = readers.units(files)
    return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        readers.read_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"files": files})


@dataclass
class PreparedSource:
    name: str
    dataset: object  # a materialized ray.data.Dataset of token columns
    rows: int
    dropped: int


def prepare_source(path: str, name: str, model: ModelSource, *, num_negatives: int,
                   default_instruction: str | None, seed: int = 0) -> PreparedSource:
    """Validate, tokenize and shuffle one training file; materialized so the run can count it and stream it.

    Rows are put in an order drawn from `seed` and each row's text, not the file's: files are often sorted (the
    Debian pairs by package name, siblings like libfoo1/libfoo-dev adjacent), and read in order they make each batch
    a cluster of near-duplicates and a short run a slice of the alphabet. The order depends on content alone, so a
    resumed run sees the same order whatever order Ray Data's tasks finish in."""
    raw = read_pairs(path).materialize()  # read once: the checks, the count and tokenizing all use it
    columns = raw.columns()
    missing = {"query", "positive"} - set(columns)
    if missing:
        raise Causal2VecError(f"training data {path!r}: missing column(s) {', '.join(sorted(missing))} "
                              f"(columns: {', '.join(columns)})")
    if num_negatives and "negatives" not in columns:
        raise Causal2VecError(f"training data {path!r}: data.num_hard_negatives={num_negatives} needs a "
                              "`negatives` list column (see `causal2vec mine-negatives`)")
    total = raw.count()
    tokenized = raw.map_batches(
        TokenizePairs, fn_constructor_kwargs=dict(model=model, num_negatives=num_negatives,
                                              default_instruction=default_instruction, seed=seed),
        batch_format="pyarrow", batch_size=256, compute=_actor_pool()).materialize()
    rows = tokenized.count()
    if rows == 0:
        raise Causal2VecError(f"training data {path!r}: no valid rows out of {total}")
    if rows < total:
        log.warning("%s: dropped %d of %d rows (empty/missing text, or fewer than %d hard negatives)",
                    name, total - rows, total, num_negatives)
    return PreparedSource(name, _in_seeded_order(tokenized), rows, total - rows)


def _in_seeded_order(tokenized, block_rows: int = 1024):
    """The token rows sorted by ORDER in the driver and put back as blocks it owns, on its node.

    Not Dataset.sort: that spreads its output blocks over the cluster's nodes, and with it the multinode drill's
    resumed run failed (2 of 6 runs) after a worker node was lost. The driver's node lives as long as the job does.
    The cost is the token ids passing through the driver once (~1 KB a pair)."""
    import ray
    import ray.data

    table = pa.concat_tables(ray.get(tokenized.to_arrow_refs())).sort_by(ORDER)
    return ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)])


def _actor_pool():
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(min_size=1, max_size=2)


def _ok(text) -> bool:
    return readers.text_problem(text) is None


class TokenizePairs:
    """Ray Data callable class: loads the tokenizers once per actor, drops bad rows, emits raw token ids."""

    def __init__(self, model: ModelSource, num_negatives: int, default_instruction: str | None, seed: int = 0):
        self.builder = load_builder(model)
        self.h = num_negatives
        self.default_instruction = default_instruction
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        keep = []
        for row in rows:
            if not (_ok(row.get("query")) and _ok(row.get("positive"))):
                continue
            negatives = [n for n in (row.get("negatives") or []) if _ok(n)][: self.h]
            if len(negatives) < self.h:
                continue
            keep.append((row["query"], row["positive"], negatives,
                         row.get("instruction") if _ok(row.get("instruction")) else self.default_instruction))
        b = self.builder
        queries, positives = [k[0] for k in keep], [k[1] for k in keep]
        flat_negs = [n for k in keep for n in k[2]]
        n_enc, n_dec = b.tokenize_for_encoder(flat_negs), b.tokenize_for_decoder(flat_negs)
        group = lambda ids: [ids[i * self.h:(i + 1) * self.h] for i in range(len(keep))]  # noqa: E731
        i32 = pa.list_(pa.int32())
        return pa.table({
            "q_enc": pa.array(b.tokenize_for_encoder(queries), i32),
            "q_dec": pa.array(b.tokenize_for_decoder(queries), i32),
            "p_enc": pa.array(b.tokenize_for_encoder(positives), i32),
            "p_dec": pa.array(b.tokenize_for_decoder(positives), i32),
            "n_enc": pa.array(group(n_enc), pa.list_(i32)),
            "n_dec": pa.array(group(n_dec), pa.list_(i32)),
            "instruction": pa.array([k[3] for k in keep], pa.string()),
            ORDER: pa.array([shuffle_key(self.seed, k[0], k[1]) for k in keep], pa.int64()),
        })


def shuffle_key(seed: int, query: str, positive: str) -> int:
    """A row's place in the training order: a seeded hash of its texts (prepare_source)."""
    salt = seed.to_bytes(8, "little", signed=True)
    digest = hashlib.blake2b(f"{query}\0{positive}".encode(), digest_size=8, salt=salt)
    return int.from_bytes(digest.digest(), "little") >> 1  # fits int64


@dataclass
class TrainBatch:
    """A micro-batch as forward passes of similar lengths. Rows are [queries ; positives ; negatives]; each pass
    names the rows it holds, so the embeddings can be put back in that order."""

    passes: list[tuple[list[int], Batch]]
    queries: int
    tokens: int  # real (unpadded) tokens, encoder + decoder


def collate(builder, batch: pa.Table, rows_per_pass: int | None = None, *, through_ctx: bool = False) -> TrainBatch:
    """Token columns -> length-sorted passes of at most `rows_per_pass` rows (default: the micro-batch size, so
    short queries and long documents are padded apart: ~1.5x faster than one pass padded to the longest text).
    `through_ctx`: decoder rows end at the CTX slot (projector alignment; see BatchBuilder.decoder_batch)."""
    cols = {name: batch[name].to_pylist() for name in (*TOKEN_COLUMNS, "instruction")}
    b = len(cols["q_enc"])
    negs_enc = [ids for row in cols["n_enc"] for ids in row]
    negs_dec = [ids for row in cols["n_dec"] for ids in row]
    enc_ids = cols["q_enc"] + cols["p_enc"] + negs_enc
    dec_ids = cols["q_dec"] + cols["p_dec"] + negs_dec
    instructions = cols["instruction"] + [None] * (len(dec_ids) - b)
    lengths, _ = builder.decoder_lengths(dec_ids, instructions)
    passes, tokens = [], 0
    for rows in length_buckets(lengths, rows_per_pass or b):
        encoder = builder.encoder_batch([enc_ids[i] for i in rows]) if builder.config.use_ctx_token else None
        decoder = builder.decoder_batch([dec_ids[i] for i in rows], [instructions[i] for i in rows],
                                        through_ctx=through_ctx)
        passes.append((rows, Batch(encoder, decoder)))
        tokens += decoder.num_tokens + (encoder.num_tokens if encoder is not None else 0)
    return TrainBatch(passes, b, tokens)


def epoch_schedule(batches_per_source: Sequence[int], seed: int, epoch: int) -> list[int]:
    """Which source each global batch of an epoch comes from: every global batch from one dataset, so in-batch
    negatives stay meaningful; the same seed gives every rank the same order."""
    order = [i for i, n in enumerate(batches_per_source) for _ in range(n)]
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def iterate_epoch(shards: Sequence, schedule: Sequence[int], micro_batch_size: int, *,
                  skip: int = 0) -> Iterator[tuple[int, pa.Table]]:
    """Yield (position, micro-batch) following `schedule`, skipping the first `skip` positions.

    Ray Data iterators cannot resume mid-epoch, so a resumed run re-reads and discards the batches the checkpoint
    says were consumed (the same number from each source on every rank).
    """
    iterators = [iter(shard.iter_batches(batch_size=micro_batch_size, batch_format="pyarrow", drop_last=True,
                                         prefetch_batches=1)) for shard in shards]
    for position, source in enumerate(schedule):
        batch = next(iterators[source], None)
        if batch is None:
            raise Causal2VecError(f"source {source} ran out of batches at position {position}: the shards are "
                                  "not equal (this is a bug)")
        if position >= skip:
            yield position, batch
