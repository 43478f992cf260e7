"""Resolve the compute device once; everything downstream follows its inputs' device."""

from __future__ import annotations

import re
from contextlib import nullcontext

import torch

from cxrsem.errors import UsageError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec.strip().lower()
    if not _DEVICE_RE.match(spec):
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(spec)


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bfloat16 where supported); a no-op on CPU, where it does not pay."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
