"""A Causal2Vec model as an mteb 2.x encoder, plus local parquet retrieval tasks mteb can run with no network."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from causal2vec.config import E5_TEMPLATE
from causal2vec.errors import Causal2VecError
from causal2vec.eval.retrieval import RetrievalTask
from causal2vec.readers import text_problem

log = logging.getLogger(__name__)

EMPTY_TEXT = "empty"  # MTEB corpora hold some empty documents; Causal2Vec refuses empty input, so they map here


class Causal2VecMTEB(AbsEncoder):
    """mteb's encoder protocol around `Causal2Vec.encode`.

    Queries (and both sides of symmetric tasks such as STS or clustering) get the E5-style instruction
    `Instruct: {task}\\nQuery: ` built from the task's description, or from `instructions[task_name]` when given;
    retrieval documents get none. The instruction reaches the decoder only (the encoder never sees it).
    """

    def __init__(self, model, *, name: str = "causal2vec/model", revision: str = "local",
                 instructions: dict[str, str] | None = None, template: str = E5_TEMPLATE, batch_size: int = 64):
        self.model = model
        self.instructions = instructions or {}
        self.template = template
        self.batch_size = batch_size
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": name, "revision": revision, "embed_dim": model.embedding_dim,
            "max_tokens": model.config.max_decoder_length, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True, "framework": ["PyTorch"], "open_weights": True,
            "n_parameters": sum(p.numel() for p in model.parameters()),
        })

    def instruction_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        if prompt_type == PromptType.document:
            return None
        task = self.instructions.get(task_metadata.name) or task_metadata.description
        return self.template.format(task=task) if task else None

    def encode(self, inputs, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        texts = [EMPTY_TEXT if text_problem(text) else text for batch in inputs for text in batch["text"]]
        return self.model.encode(texts, instruction=self.instruction_for(task_metadata, prompt_type),
                                 batch_size=self.batch_size, show_progress=kwargs.get("show_progress_bar", False))


def local_retrieval_task(task: RetrievalTask) -> AbsTaskRetrieval:
    """Wrap a RetrievalTask (parquet/jsonl files) as an mteb retrieval task that loads nothing from the hub."""
    from datasets import Dataset

    metadata = TaskMetadata(
        name=task.name, description=task.description or f"Retrieve the relevant document for the query ({task.name})",
        dataset={"path": f"local/{task.name}", "revision": "local"}, type="Retrieval", category="t2t",
        eval_splits=["test"], eval_langs=["eng-Latn"], main_score="ndcg_at_10", modalities=["text"])

    class LocalRetrieval(AbsTaskRetrieval):
        def load_data(self, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            self.dataset = {"default": {"test": {
                "corpus": Dataset.from_dict({"id": task.corpus_ids, "text": task.corpus}),
                "queries": Dataset.from_dict({"id": task.query_ids, "text": task.queries}),
                "relevant_docs": task.qrels,
                "top_ranked": None,
            }}}
            self.data_loaded = True

    LocalRetrieval.metadata = metadata
    return LocalRetrieval()


def run_mteb(model: Causal2VecMTEB, tasks: list, *, output_folder: str | None = None) -> dict[str, dict]:
    """Evaluate with mteb, no result cache; returns {task name: scores of its first split/subset}."""
    import mteb

    results = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False,
                            encode_kwargs={"batch_size": model.batch_size})
    scores = {}
    for task_result in results.task_results:
        split = next(iter(task_result.scores))
        scores[task_result.task_name] = task_result.scores[split][0]
    return scores


def evaluate_tasks(model, task_names: list[str] | None = None, local: RetrievalTask | None = None, *,
                   name: str = "causal2vec/model", batch_size: int = 64) -> dict[str, dict]:
    """`causal2vec eval --tasks ...` (and `--engine mteb`): MTEB tasks by name, and a local task, through mteb."""
    import mteb

    tasks = [local_retrieval_task(local)] if local is not None else []
    if task_names:
        try:
            tasks += list(mteb.get_tasks(tasks=task_names))
        except (KeyError, ValueError) as exc:
            raise Causal2VecError(f"--tasks: {exc}") from exc
    try:
        return run_mteb(Causal2VecMTEB(model, name=name, batch_size=batch_size), tasks)
    except (OSError, ConnectionError) as exc:
        raise Causal2VecError(f"mteb could not load a task's data ({exc.__class__.__name__}: {exc}); tasks from "
                              "the hub need network access (HF_HUB_OFFLINE=0) or a local HF datasets cache") from exc
