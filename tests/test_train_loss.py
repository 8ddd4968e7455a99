"""Cross-worker negatives are exact: 2 workers x batch b == 1 worker x batch 2b, hard negatives included; the
halves loss of a concat embedding."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from causal2vec.tools.processes import free_port
from causal2vec.train.loss import batch_loss, embedding_loss, info_nce

B, H = 3, 2  # per-worker batch, hard negatives per query
QUERIES = [f"query number {i} about packages" for i in range(2 * B)]
POSITIVES = [f"document {i}: a Debian package that does thing {i}" for i in range(2 * B)]
NEGATIVES = [f"hard negative {j} for query {i}" for i in range(2 * B) for j in range(H)]
TOL = dict(atol=1e-6, rtol=1e-4)  # fp32; the two paths sum the same terms in a different order


def _loss_and_grads(model, rows: range, *, gather: bool):
    """InfoNCE over `rows` of the fixed batch, and the gradient of every trainable parameter."""
    queries = [QUERIES[i] for i in rows]
    docs = [POSITIVES[i] for i in rows] + [NEGATIVES[i * H + j] for i in rows for j in range(H)]
    model.zero_grad()
    q = model(model.builder(queries, "Instruct: find it\nQuery: "))
    d = model(model.builder(docs))
    loss = info_nce(q, d[:len(rows)], d[len(rows):], temperature=0.05, gather=gather)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _model():
    from causal2vec import Causal2Vec

    model = Causal2Vec.from_pretrained("tiny").enable_lora()
    model.eval()  # dropout off: the comparison is about the math, not about random masks
    return model


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loss, grads = _loss_and_grads(_model(), range(rank * B, (rank + 1) * B), gather=True)
        for g in grads.values():  # what DDP / DeepSpeed do: average gradients over workers
            dist.all_reduce(g)
            g /= 2
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / 2, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def test_two_workers_equal_one_worker_with_the_global_batch(tmp_path):
    single_loss, single_grads = _loss_and_grads(_model(), range(2 * B), gather=False)
    # rank 0 hands its results back in a file, not a multiprocessing.Manager: a Manager forks this process, and a
    # fork of a process holding the session's Ray driver (gRPC threads) can take that driver down (ray#22909)
    mp.spawn(_worker, args=(free_port(), str(tmp_path / "rank0.pt")), nprocs=2, join=True)
    out = torch.load(tmp_path / "rank0.pt")
    dist_loss, dist_grads = out["loss"], out["grads"]
    assert dist_loss == pytest.approx(float(single_loss), rel=1e-5)
    assert set(dist_grads) == set(single_grads)
    assert any("lora_" in n for n in dist_grads) and any("projector" in n for n in dist_grads)
    for name, g in single_grads.items():
        torch.testing.assert_close(dist_grads[name], g, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_without_the_gather_two_workers_differ():
    """The control: local-only negatives give a different loss, so the test above can fail."""
    single_loss, _ = _loss_and_grads(_model(), range(2 * B), gather=False)
    half_losses = [_loss_and_grads(_model(), range(r * B, (r + 1) * B), gather=False)[0] for r in range(2)]
    assert abs(float(sum(half_losses) / 2) - float(single_loss)) > 1e-3


def test_the_halves_loss_adds_each_half_of_a_concat_embedding_scored_alone():
    torch.manual_seed(0)
    q, p, n = (torch.randn(k, 8, requires_grad=True) for k in (4, 4, 8))
    plain = info_nce(q, p, n, temperature=0.05, gather=False)
    ctx = info_nce(q[:, :4], p[:, :4], n[:, :4], temperature=0.05, gather=False)
    eos = info_nce(q[:, 4:], p[:, 4:], n[:, 4:], temperature=0.05, gather=False)
    both = embedding_loss(q, p, n, temperature=0.05, gather=False, halves_weight=0.5)
    torch.testing.assert_close(both, plain + 0.5 * (ctx + eos))
    torch.testing.assert_close(embedding_loss(q, p, None, temperature=0.05, gather=False),
                               info_nce(q, p, None, temperature=0.05, gather=False))


def test_the_encoder_loss_scores_the_appended_encoder_vectors_at_their_own_temperature():
    from causal2vec.train.config import OptimSection

    torch.manual_seed(0)
    emb, pooled = torch.randn(12, 8), torch.randn(12, 3)  # 4 queries, 4 positives, 4 hard negatives
    optim = OptimSection(temperature=0.02, halves_loss_weight=0.5, encoder_loss_weight=0.7, encoder_temperature=0.1)
    plain = embedding_loss(emb[:4], emb[4:8], emb[8:], temperature=0.02, halves_weight=0.5, gather=False)
    encoder = info_nce(pooled[:4], pooled[4:8], pooled[8:], temperature=0.1, gather=False)
    both = batch_loss(torch.cat([emb, pooled], dim=1), 4, optim, gather=False, encoder_dim=3)
    torch.testing.assert_close(both, plain + 0.7 * encoder)
    torch.testing.assert_close(batch_loss(emb, 4, optim, gather=False), plain)
