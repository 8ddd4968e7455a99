"""Causal2Vec: decoder-only LLM embeddings with one Contextual token (Lin et al., arXiv 2507.23386)."""

from causal2vec.errors import Causal2VecError
from causal2vec.version import __version__

__all__ = ["Causal2Vec", "Causal2VecConfig", "Causal2VecError", "__version__"]


def __getattr__(name):  # lazy: `import causal2vec` must stay cheap (no torch) for CLIs and Ray drivers
    if name == "Causal2Vec":
        from causal2vec.model.causal2vec import Causal2Vec

        return Causal2Vec
    if name == "Causal2VecConfig":
        from causal2vec.model.config import Causal2VecConfig

        return Causal2VecConfig
    raise AttributeError(name)
