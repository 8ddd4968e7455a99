"""Fast local retrieval evaluation: exact top-k over normalised embeddings, nDCG@10 / Recall@k / MRR@10.

Its numbers agree with mteb's on the same task (tests/test_eval.py); it needs no network and no `datasets`, and is
what training's dev evaluation and `jobs/eval.py` call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from causal2vec.config import E5_TEMPLATE, query_instruction
from causal2vec.eval.cache import encode_resumable
from causal2vec.errors import Causal2VecError
from causal2vec.readers import read_table, text_problem

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 10, 100)
__all__ = ["E5_TEMPLATE", "RetrievalTask", "evaluate", "exact_top_k", "query_instruction", "ranking_metrics"]


@dataclass
class RetrievalTask:
    """Queries, a corpus and graded relevance judgements (query id -> {doc id: relevance})."""

    name: str
    query_ids: list[str]
    queries: list[str]
    corpus_ids: list[str]
    corpus: list[str]
    qrels: dict[str, dict[str, int]]
    description: str | None = None  # what the query-side instruction says the task is

    def __post_init__(self) -> None:
        if len(self.query_ids) != len(self.queries) or len(self.corpus_ids) != len(self.corpus):
            raise Causal2VecError(f"task {self.name!r}: ids and texts differ in length")
        if not self.corpus:
            raise Causal2VecError(f"task {self.name!r}: the corpus is empty")
        known = set(self.corpus_ids)
        if len(known) != len(self.corpus_ids):
            raise Causal2VecError(f"task {self.name!r}: corpus ids are not unique")
        judged = [q for q in self.query_ids if self.qrels.get(q)]
        if not judged:
            raise Causal2VecError(f"task {self.name!r}: no query has a relevance judgement")
        missing = {d for q in judged for d in self.qrels[q]} - known
        if missing:
            raise Causal2VecError(f"task {self.name!r}: {len(missing)} judged document(s) are not in the corpus, "
                                  f"e.g. {sorted(missing)[:3]}")

    def with_corpus_limit(self, limit: int) -> RetrievalTask:
        """A cheaper task: every judged document plus the first distractors in corpus order, `limit` in all."""
        if len(self.corpus) <= limit:
            return self
        judged = {d for q in self.query_ids for d in self.qrels.get(q, {})}
        keep = [i for i, d in enumerate(self.corpus_ids) if d in judged]
        keep += [i for i, d in enumerate(self.corpus_ids) if d not in judged][: max(0, limit - len(keep))]
        keep.sort()
        return RetrievalTask(self.name, self.query_ids, self.queries, [self.corpus_ids[i] for i in keep],
                             [self.corpus[i] for i in keep], self.qrels, self.description)

    @classmethod
    def from_files(cls, corpus: str | Path, queries: str | Path, qrels: str | Path | None = None, *,
                   name: str | None = None, description: str | None = None, limit_queries: int | None = None,
                   corpus_id: str | None = None, corpus_text: str = "text", query_id: str | None = None,
                   query_text: str | None = None) -> RetrievalTask:
        """Corpus (id, text) + queries (id, text[, doc_id]) + optional qrels (query_id, doc_id[, score]).

        Without a qrels file each query's `doc_id` column names its one relevant document (the Debian data's form).
        Column names are detected from common spellings unless given.
        """
        ctable, qtable = read_table(corpus, what="corpus"), read_table(queries, what="queries")
        cid = corpus_id or _pick(ctable, corpus, ("id", "doc_id", "_id", "corpus-id"))
        qid = query_id or _pick(qtable, queries, ("query_id", "id", "_id", "query-id"))
        qtext = query_text or _pick(qtable, queries, ("query", "text"))
        _require(ctable, corpus, corpus_text)
        if limit_queries:
            qtable = qtable.slice(0, limit_queries)
        qids = [str(x) for x in qtable[qid].to_pylist()]
        if qrels is not None:
            rtable = read_table(qrels, what="qrels")
            rq = _pick(rtable, qrels, ("query_id", "query-id", "qid"))
            rd = _pick(rtable, qrels, ("doc_id", "corpus-id", "corpus_id", "docid"))
            scores = rtable["score"].to_pylist() if "score" in rtable.column_names else [1] * rtable.num_rows
            judgements: dict[str, dict[str, int]] = {}
            for q, d, s in zip(rtable[rq].to_pylist(), rtable[rd].to_pylist(), scores):
                judgements.setdefault(str(q), {})[str(d)] = int(s)
        else:
            _require(qtable, queries, "doc_id", hint="or pass a qrels file")
            judgements = {q: {str(d): 1} for q, d in zip(qids, qtable["doc_id"].to_pylist())}
        return cls(name=name or Path(queries).stem, query_ids=qids, queries=_texts(qtable, qtext, queries),
                   corpus_ids=[str(x) for x in ctable[cid].to_pylist()], corpus=_texts(ctable, corpus_text, corpus),
                   qrels=judgements, description=description)

    @classmethod
    def from_pairs(cls, pairs: str | Path, *, name: str | None = None, description: str | None = None,
                   limit: int | None = None) -> RetrievalTask:
        """Training-pair files (`query`, `positive`) as a task: the corpus is the set of distinct positives."""
        table = read_table(pairs, what="pairs")
        _require(table, pairs, "query")
        _require(table, pairs, "positive")
        if limit:
            table = table.slice(0, limit)
        queries, positives = _texts(table, "query", pairs), _texts(table, "positive", pairs)
        doc_index: dict[str, str] = {}
        for text in positives:
            doc_index.setdefault(text, f"d{len(doc_index)}")
        qids = [f"q{i}" for i in range(len(queries))]
        return cls(name=name or Path(pairs).stem, query_ids=qids, queries=queries,
                   corpus_ids=list(doc_index.values()), corpus=list(doc_index.keys()),
                   qrels={q: {doc_index[p]: 1} for q, p in zip(qids, positives)}, description=description)


def _pick(table: pa.Table, path, candidates: Sequence[str]) -> str:
    for name in candidates:
        if name in table.column_names:
            return name
    raise Causal2VecError(f"{path}: no column named any of {', '.join(candidates)} "
                          f"(columns: {', '.join(table.column_names)})")


def _require(table: pa.Table, path, column: str, hint: str = "") -> None:
    if column not in table.column_names:
        raise Causal2VecError(f"{path}: missing column {column!r}{' ' + hint if hint else ''} "
                              f"(columns: {', '.join(table.column_names)})")


def _texts(table: pa.Table, column: str, path) -> list[str]:
    values = table[column].to_pylist()
    for row, value in enumerate(values):
        problem = text_problem(value)
        if problem:
            raise Causal2VecError(f"{path}: row {row} has an empty or missing {column!r} ({problem})")
    return values


# -- search and metrics ---------------------------------------------------------------------------------------------
def exact_top_k(queries: np.ndarray, docs: np.ndarray, k: int, *, query_block: int = 1024,
                doc_block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, blocked so a [queries x corpus] score matrix never exists in full.

    Peak memory is query_block x (doc_block + k) floats (~270 MB at the defaults), whatever the corpus size.
    """
    k = min(k, len(docs))
    q_all, d_all = torch.from_numpy(np.ascontiguousarray(queries, np.float32)), torch.from_numpy(
        np.ascontiguousarray(docs, np.float32))
    out_scores = np.empty((len(queries), k), np.float32)
    out_index = np.empty((len(queries), k), np.int64)
    for qs in range(0, len(queries), query_block):
        q = q_all[qs:qs + query_block]
        best_s = torch.full((len(q), 0), -math.inf)
        best_i = torch.zeros((len(q), 0), dtype=torch.long)
        for ds in range(0, len(docs), doc_block):
            s = q @ d_all[ds:ds + doc_block].T
            top_s, top_i = s.topk(min(k, s.shape[1]), dim=1)
            cand_s, cand_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + ds], 1)
            best_s, pos = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
            best_i = cand_i.gather(1, pos)
        out_scores[qs:qs + len(q)], out_index[qs:qs + len(q)] = best_s.numpy(), best_i.numpy()
    return out_scores, out_index


def ranking_metrics(ranked: Sequence[Sequence[str]], query_ids: Sequence[str], qrels: dict[str, dict[str, int]],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """nDCG@k (graded, linear gain, as trec_eval), Recall@k and MRR@10, averaged over judged queries."""
    sums: dict[str, float] = {}
    judged = 0
    for qid, docs in zip(query_ids, ranked):
        rel = {d: r for d, r in qrels.get(qid, {}).items() if r > 0}
        if not rel:
            continue
        judged += 1
        ideal = sorted(rel.values(), reverse=True)
        for k in ks:
            dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:k]))
            idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
            sums[f"ndcg_at_{k}"] = sums.get(f"ndcg_at_{k}", 0.0) + dcg / idcg
            sums[f"recall_at_{k}"] = sums.get(f"recall_at_{k}", 0.0) + sum(d in rel for d in docs[:k]) / len(rel)
        first = next((i for i, d in enumerate(docs[:10]) if d in rel), None)
        sums["mrr_at_10"] = sums.get("mrr_at_10", 0.0) + (1.0 / (first + 1) if first is not None else 0.0)
    return {name: total / judged for name, total in sorted(sums.items())} | {"judged_queries": judged}


def evaluate(model, task: RetrievalTask, *, instruction: str | None = None, batch_size: int = 64,
             k: int = 100, show_progress: bool = False, cache: str | Path | None = None,
             halves: bool = False) -> dict:
    """Embed the task with `model` (anything with Causal2Vec's `encode`) and score exact top-k retrieval.

    `instruction` defaults to the E5-style prefix built from `task.description`; documents get no instruction.
    `cache`: a folder the embeddings are written to chunk by chunk, so a rerun resumes an interrupted evaluation
    (eval/cache.py: one subfolder per model, dtype and texts). `halves`: for a `concat` model, also
    `halves_ndcg_at_10`, each half scored alone (`concat_halves`), from the same embeddings.
    """
    if instruction is None:
        instruction = query_instruction(task.description)

    def embed(texts: list[str], prefix: str | None) -> np.ndarray:
        if cache is None:
            return model.encode(texts, instruction=prefix, batch_size=batch_size, show_progress=show_progress)
        return encode_resumable(model, texts, cache, instruction=prefix, batch_size=batch_size,
                                show_progress=show_progress)

    t0 = time.perf_counter()
    doc_vecs = embed(task.corpus, None)
    t1 = time.perf_counter()
    query_vecs = embed(task.queries, instruction)
    t2 = time.perf_counter()
    metrics = score_embeddings(task, query_vecs, doc_vecs, k)
    metrics |= {"corpus_size": len(task.corpus), "queries": len(task.queries),
                "embed_corpus_s": round(t1 - t0, 3), "embed_queries_s": round(t2 - t1, 3),
                "search_s": round(time.perf_counter() - t2, 3)}
    if halves and getattr(getattr(model, "config", None), "pooling", None) == "concat":
        metrics["halves_ndcg_at_10"] = concat_halves(task, query_vecs, doc_vecs, k)
    log.info("%s: nDCG@10 %.4f, Recall@10 %.4f", task.name, metrics["ndcg_at_10"], metrics["recall_at_10"])
    return metrics


def score_embeddings(task: RetrievalTask, query_vecs: np.ndarray, doc_vecs: np.ndarray, k: int = 100) -> dict:
    """Ranking metrics of exact top-k search with given embeddings (row i = task.queries[i] / task.corpus[i])."""
    _, index = exact_top_k(_normalise(query_vecs), _normalise(doc_vecs), k)
    ranked = [[task.corpus_ids[j] for j in row] for row in index]
    return ranking_metrics(ranked, task.query_ids, task.qrels, ks=sorted({1, 10, k}))


def concat_halves(task: RetrievalTask, query_vecs: np.ndarray, doc_vecs: np.ndarray, k: int = 100) -> dict:
    """nDCG@10 of each half of concatenated `[h_ctx ; h_eos]` embeddings on its own: which half carries the
    retrieval signal. Scoring renormalises, so halves of normalised vectors score exactly as the raw states would."""
    h = query_vecs.shape[1] // 2
    return {name: score_embeddings(task, query_vecs[:, part], doc_vecs[:, part], k)["ndcg_at_10"]
            for name, part in (("ctx", slice(None, h)), ("eos", slice(h, None)))}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
