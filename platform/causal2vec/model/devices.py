"""Device and dtype choice: fp32 on CPU by default (exact), bf16 on CUDA; bf16 on CPU when asked for, or `native`:
bf16 wherever the hardware runs it natively, fp32 where it would be emulated (and slower than fp32)."""

from __future__ import annotations

import logging

import torch

from causal2vec.errors import Causal2VecError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Causal2VecError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype == "native":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    if dtype not in _DTYPES:
        raise Causal2VecError(f"unknown dtype {dtype!r}; use one of auto, native, fp32, bf16, fp16")
    resolved = _DTYPES[dtype]
    if resolved == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 instructions: bf16 will be emulated and likely slower than fp32")
    return resolved


def native_dtype_name(device: str | torch.device | None = "auto") -> str:
    """What `native` resolves to on `device`, by name ("bf16" or "fp32"), for commands and results that must say it."""
    return "bf16" if resolve_dtype("native", resolve_device(device)) == torch.bfloat16 else "fp32"


def cpu_has_native_bf16() -> bool:
    """True when the CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), where bf16 is several times fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
