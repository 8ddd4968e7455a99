"""InfoNCE over in-batch + cross-worker + hard negatives.

Every query is scored against the positives and hard negatives of the *global* batch (all workers), so the
effective batch is the global batch. Gradients flow through the gather: each worker gets back the gradient that
every other worker's loss puts on its own documents. With the optimizer averaging gradients over workers (DDP /
DeepSpeed), 2 workers x batch b then give exactly the loss and gradients of 1 worker x batch 2b
(tests/test_train_loss.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and returns this rank's slice.

    Written with all_reduce rather than reduce_scatter because gloo (CPU training) has no reduce_scatter.
    Requires the same first dimension on every rank (the data pipeline guarantees equal batches).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def info_nce(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None, *,
             temperature: float = 0.05, symmetric: bool = False, gather: bool = True) -> torch.Tensor:
    """Contrastive loss for this rank's queries against the global batch's documents.

    queries, positives: [b, d] (row i of each is a pair); negatives: [b * h, d], rows i*h .. i*h+h-1 are query i's
    hard negatives (or None). Candidates for every query: all positives of all ranks, then all hard negatives of
    all ranks. Query i on rank r has its positive at global column r * b + i.
    `symmetric` adds the document->query direction over the global queries (positives as anchors).
    Embeddings are L2-normalised here, so scores are cosine / temperature.
    """
    q, p = F.normalize(queries.float(), dim=-1), F.normalize(positives.float(), dim=-1)
    b = q.shape[0]
    all_p = gather_with_grad(p) if gather else p
    candidates = [all_p]
    if negatives is not None and negatives.shape[0] > 0:
        n = F.normalize(negatives.float(), dim=-1)
        candidates.append(gather_with_grad(n) if gather else n)
    offset = dist.get_rank() * b if gather and dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(b, device=q.device) + offset
    scores = q @ torch.cat(candidates).T / temperature
    loss = F.cross_entropy(scores, labels)
    if symmetric:
        all_q = gather_with_grad(q) if gather else q
        loss = (loss + F.cross_entropy(p @ all_q.T / temperature, labels)) / 2
    return loss


def embedding_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None, *,
                   halves_weight: float = 0.0, **kwargs) -> torch.Tensor:
    """InfoNCE on the embeddings, plus `halves_weight` x InfoNCE on each half of a concat `[h_ctx ; h_eos]` alone.

    Trained on the concatenation only, one half can carry the whole score while the other stays near-constant (it
    shifts every candidate's score alike): SmolLM2 leaves the CTX half at chance with CTX after the instruction,
    and the EOS half with CTX first (README, recipe round 9). The per-half terms make each half retrieve on its own.
    """
    loss = info_nce(queries, positives, negatives, **kwargs)
    if halves_weight:
        d = queries.shape[-1] // 2
        for half in (slice(None, d), slice(d, None)):
            neg = None if negatives is None else negatives[:, half]
            loss = loss + halves_weight * info_nce(queries[:, half], positives[:, half], neg, **kwargs)
    return loss


def batch_loss(embeddings: torch.Tensor, queries: int, optim, *, gather: bool = True,
               encoder_dim: int = 0) -> torch.Tensor:
    """The training loss of one micro-batch's embeddings (queries, then positives, then hard negatives) under the
    config's `optim` section: the one place the Ray loop and the single-process benches take it from.

    `encoder_dim`: the embeddings' last that many columns are the encoder's own pooled vectors
    (`Causal2Vec.forward(with_encoder_vectors=True)`), trained to retrieve alone at `optim.encoder_temperature`,
    weighted by `optim.encoder_loss_weight`: the same-run anchor's objective, since through the decoder alone the
    encoder barely moves from its zero-shot quality (README, recipe round 12: +0.008 dev nDCG@10, off by default)."""
    b = queries
    kwargs = {"symmetric": optim.symmetric, "gather": gather}
    pooled = embeddings[:, embeddings.shape[1] - encoder_dim:]
    embeddings = embeddings[:, :embeddings.shape[1] - encoder_dim]
    loss = embedding_loss(embeddings[:b], embeddings[b:2 * b], embeddings[2 * b:], temperature=optim.temperature,
                          halves_weight=optim.halves_loss_weight, **kwargs)
    if encoder_dim:
        loss = loss + optim.encoder_loss_weight * info_nce(pooled[:b], pooled[b:2 * b], pooled[2 * b:],
                                                           temperature=optim.encoder_temperature, **kwargs)
    return loss
