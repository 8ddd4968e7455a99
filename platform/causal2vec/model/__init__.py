"""The Causal2Vec model: pure torch + transformers + peft, no Ray."""

from causal2vec.model.causal2vec import Causal2Vec
from causal2vec.model.config import Causal2VecConfig, LoraSettings

__all__ = ["Causal2Vec", "Causal2VecConfig", "LoraSettings"]
