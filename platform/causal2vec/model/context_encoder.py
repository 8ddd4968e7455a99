"""The small bidirectional encoder that compresses a text into one Contextual-token vector."""

from __future__ import annotations

import torch
from torch import nn

from causal2vec.errors import Causal2VecError


class Projector(nn.Module):
    """Two-layer MLP from the encoder's hidden size to the decoder's (the paper's projection; shape is ours).

    `init="isometry"` starts it as exactly x -> Qx, Q with orthonormal columns (rows, if the decoder is narrower):
    GELU(x) - GELU(-x) = x, so a first layer [I; -I] and a second [Q, -Q] (hidden 2 x in_dim) are linear. A random
    MLP bends the encoder's geometry, and at the encoder's learning rate it barely moves in a short run: on dev a
    trained encoder's pooled vector retrieved at nDCG@10 0.785, its random-init projection at 0.748 (README,
    recipe round 13)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, init: str = "random"):
        super().__init__()
        if init == "isometry" and hidden not in (None, 2 * in_dim):
            raise Causal2VecError(f"an isometric projector has hidden width 2 x {in_dim} = {2 * in_dim}, "
                                  f"got projector_hidden={hidden}")
        hidden = hidden or (2 * in_dim if init == "isometry" else out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        if init == "isometry":
            self._start_as_isometry(in_dim, out_dim)

    @torch.no_grad()
    def _start_as_isometry(self, in_dim: int, out_dim: int) -> None:
        first, second = self.net[0], self.net[2]
        eye = torch.eye(in_dim)
        q = nn.init.orthogonal_(torch.empty(out_dim, in_dim))
        first.weight.copy_(torch.cat([eye, -eye]))
        second.weight.copy_(torch.cat([q, -q], dim=1))
        first.bias.zero_()
        second.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContextEncoder(nn.Module):
    """Any Hugging Face BERT-style encoder + pooling + projector: texts -> one vector each in the decoder's space."""

    def __init__(self, encoder: nn.Module, projector: Projector, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.pooling = pooling

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled text vector, before projection (what sentence-transformers calls the embedding)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projector(pooled.to(self.projector.net[0].weight.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(input_ids, attention_mask))
