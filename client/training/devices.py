"""Devices and precision: which device trains, and in which autocast dtype."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Literal

import torch

from shared.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is visible")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def configure_device(device: torch.device, cpu_threads: int | None = None) -> str:
    """Set process-wide knobs for ``device`` and describe it in one line for the log."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"training on GPU cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    threads = cpu_threads or max(1, min(8, (os.cpu_count() or 2) - 1))
    torch.set_num_threads(threads)
    return f"training on CPU ({threads} threads); no GPU in use"


def resolve_precision(device: torch.device, precision: Precision = "auto") -> torch.dtype:
    """The autocast dtype: bf16 on GPUs that have it, else fp16; fp32 on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``; nothing at fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
