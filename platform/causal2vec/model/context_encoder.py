"""The small bidirectional encoder that compresses a text into one Contextual-token vector."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Two-layer MLP from the encoder's hidden size to the decoder's (the paper's projection; shape is ours)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

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
