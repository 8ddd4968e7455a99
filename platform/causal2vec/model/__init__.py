"""The Causal2Vec model: pure torch + transformers + peft, no Ray.

Imports inside model/ run one way (a test walks them): config, devices, gguf, pooling, context_encoder,
tokenization, inference -> build -> presets, io -> sources -> causal2vec (the class, and `load_model`).
"""

import os

# transformers (5.x) fetches layers from the Hugging Face Hub ("hub kernels") when a model it loaded with
# from_pretrained switches to train()/eval() on a GPU: code downloaded at run time, and a crash where the hub is out
# of reach (an air-gapped GPU machine: "not available in the local cache"). The platform runs offline; a user who
# wants hub kernels sets USE_HUB_KERNELS=YES.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

__all__ = ["Causal2Vec", "Causal2VecConfig", "LoraSettings", "ModelSource", "load_model"]


def __getattr__(name):  # lazy: the light modules here (config, sources) must not pull in torch
    if name in ("Causal2Vec", "load_model"):
        from causal2vec.model import causal2vec

        return getattr(causal2vec, name)
    if name in ("Causal2VecConfig", "LoraSettings"):
        from causal2vec.model import config

        return getattr(config, name)
    if name == "ModelSource":
        from causal2vec.model.sources import ModelSource

        return ModelSource
    raise AttributeError(name)
