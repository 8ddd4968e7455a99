"""The bulk job's stages as Ray Data actors (callable classes: one model part per actor, loaded once). Each model
stage is a thin adapter over the stage runner (model/inference.py): columns in, runner, columns out. That is why the
vectors equal `model.encode`'s: the same code computes both."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from causal2vec.embed.config import EmbedConfig
from causal2vec.model.causal2vec import load_model
from causal2vec.model.inference import decoder_pass, encoder_pass
from causal2vec.model.sources import load_builder
from causal2vec.store.sink import TOKENS, TRUNCATED

ENC_IDS, DEC_IDS, CTX = "__c2v_enc", "__c2v_dec", "__c2v_ctx"  # columns passed between stages, never stored


class TokenizeStage:
    """Raw token ids for both tokenizers (no weights needed: CPU actors keep the GPUs busy with math)."""

    def __init__(self, model: str, use_encoder: bool):
        self.builder = load_builder(model)
        self.use_encoder = use_encoder

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        if self.use_encoder:
            batch = batch.append_column(ENC_IDS, _int_lists(self.builder.tokenize_for_encoder(texts)))
        return batch.append_column(DEC_IDS, _int_lists(self.builder.tokenize_for_decoder(texts)))


class _ModelStage:
    """Loads its `part` of the model once; runs each batch as passes of `sub_batch_size` rows."""

    part = "all"

    def __init__(self, model: str, device: str, dtype: str, sub_batch_size: int, bucket: bool,
                 instruction: str | None = None):
        self.model = load_model(model, self.part, device=device, dtype=dtype)
        self.passes = {"rows_per_pass": sub_batch_size, "sort": bucket}
        self.instruction = instruction


class EncoderStage(_ModelStage):
    """Encoder token ids -> CTX vectors (float32 carries bf16 / fp16 exactly; the decoder stage casts back)."""

    part = "encoder"

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = encoder_pass(self.model, batch[ENC_IDS].to_pylist(), **self.passes)
        return (batch.drop_columns([ENC_IDS]).append_column(CTX, vector_column(out.vectors))
                .append_column(TRUNCATED, pa.array(out.truncated)))


class DecoderStage(_ModelStage):
    """Decoder token ids + CTX vectors -> embeddings."""

    part = "decoder"

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = batch.column_names
        ctx = vector_rows(batch[CTX]) if CTX in names else None
        out = decoder_pass(self.model, batch[DEC_IDS].to_pylist(), ctx, instructions=self.instruction, **self.passes)
        cut = batch[TRUNCATED].to_pylist() if TRUNCATED in names else [False] * batch.num_rows
        return _with_vectors(batch.drop_columns([c for c in (DEC_IDS, CTX, TRUNCATED) if c in names]), out.vectors,
                             [a or b for a, b in zip(cut, out.truncated)], out.tokens)


class FusedStage(_ModelStage):
    """Tokenize + both model stages in one actor (small models)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts, builder = batch["text"].to_pylist(), self.model.builder
        ctx = encoder_pass(self.model, builder.tokenize_for_encoder(texts), **self.passes) \
            if self.model.config.use_ctx_token else None
        out = decoder_pass(self.model, builder.tokenize_for_decoder(texts), ctx.vectors if ctx else None,
                           instructions=self.instruction, **self.passes)
        cut = [a or b for a, b in zip(ctx.truncated, out.truncated)] if ctx else out.truncated
        return _with_vectors(batch, out.vectors, cut, out.tokens)


def model_stages(ds, config: EmbedConfig):
    """The dataset of rows to embed -> the dataset with vectors: the stages wired with their resources."""
    use_encoder = load_builder(config.model).config.use_ctx_token
    common = dict(model=config.model, device=config.device, dtype=config.dtype,
                  sub_batch_size=config.sub_batch_size, bucket=config.bucket)
    dec = config.decoder
    if config.stages == "fused":
        return ds.map_batches(FusedStage, fn_constructor_kwargs={**common, "instruction": config.instruction},
                              batch_size=config.batch_size, batch_format="pyarrow", compute=dec.strategy(),
                              **dec.ray_args())
    tok = config.tokenize
    ds = ds.map_batches(TokenizeStage, fn_constructor_kwargs={"model": config.model, "use_encoder": use_encoder},
                        batch_size=config.batch_size, batch_format="pyarrow", compute=tok.strategy(),
                        **tok.ray_args())
    if use_encoder:
        enc = config.encoder
        ds = ds.map_batches(EncoderStage, fn_constructor_kwargs=common, batch_size=config.batch_size,
                            batch_format="pyarrow", compute=enc.strategy(), **enc.ray_args())
    return ds.map_batches(DecoderStage, fn_constructor_kwargs={**common, "instruction": config.instruction},
                          batch_size=config.batch_size, batch_format="pyarrow", compute=dec.strategy(),
                          **dec.ray_args())


def vector_column(matrix: np.ndarray) -> pa.Array:
    """FixedSizeList<float32>: a 2-D numpy column would become Ray's tensor type, which LanceDB does not index."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def vector_rows(column) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def _with_vectors(batch: pa.Table, vectors: np.ndarray, truncated: list[bool], tokens: list[int]) -> pa.Table:
    return (batch.append_column("vector", vector_column(vectors)).append_column(TRUNCATED, pa.array(truncated))
            .append_column(TOKENS, pa.array(tokens, pa.int64())))


def _int_lists(values: list[list[int]]) -> pa.Array:
    return pa.array(values, pa.list_(pa.int32()))
