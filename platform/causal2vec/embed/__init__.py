"""Bulk embedding: a corpus (parquet / jsonl / text / csv) -> Ray Data on every worker -> an indexed LanceDB table.

    read units -> validate -> [scan pass on the driver: rejects, duplicates, ids already in the table]
    read units -> keep the rows to embed -> tokenize (CPU actors) -> encoder stage (texts -> CTX vectors)
               -> decoder stage (texts + CTX -> vectors) -> store.sink.LanceSink (a commit per chunk) -> indexes

    config.py  the job's settings (YAML, --set, flags generated from the fields)
    inputs.py  the rows every read task emits: ids, texts, passthrough columns, reject reasons
    plan.py    rejects, duplicates and rows already committed, from the scan pass
    stages.py  the Ray Data actors: thin adapters over the model's stage runner (model/inference.py)
    job.py     the driver: plan, embed, commit, index, summary

The encoder and decoder stages are separate actor pools, each loading only its part of the model, so each gets its
own resources (a fraction of a GPU for the small encoder, whole GPUs for the LLM); `stages="fused"` runs both in one
actor for small models. Vectors equal `model.encode` of the same texts (the same runner computes both).

Resume. Every run reads the ids already in the table first and embeds only the others, so re-running the same
command after an interruption completes the table with each valid id exactly once (store/sink.py says why commits
are chunked). Ray stops a job's workers when its driver dies; rerun after that, not while a killed job's write tasks
could still be committing.

Ids. With an id column (`--id-column`, default `id` when the input has one) ids are its values; without one they are
`<file>:<n>`, the file's path relative to the inputs' common directory and the 1-based row / line number, so a rerun
with the same inputs generates the same ids. Rows with a text that `readers.text_problem` refuses or a missing id are
rejected; when several valid rows share an id the first (in input order) is kept and the others are rejected. The
rejects go to `<table>_rejects` (id, source, reason, text), rewritten on every run.
"""
