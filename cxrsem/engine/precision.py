"""The forward pass's numeric precision (``--precision fp32|bf16|fp16``).

``fp32`` is the model as it is: no autocast, no change of memory format, bit for bit what it
computed before this option existed.  ``bf16`` and ``fp16`` run only the model's forward call under
``torch.autocast(device_type, dtype)`` (matrix products and convolutions in the reduced dtype,
reductions and normalisations as autocast decides) and, on CUDA, with the model and its inputs in
``channels_last`` memory format (what cuDNN's reduced-precision convolutions are fastest in).  What
a caller gets back (captured activations, tensor outputs) is cast to float32, so every statistic
computed afterwards is exact *given those activations*; the error is only the forward pass's.

channels_last stays off for fp32 on purpose: another memory format lets cuDNN pick other
convolution algorithms, whose float32 sums round differently, and fp32 must stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from cxrsem.errors import UsageError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}
DEFAULT_PRECISION = "fp32"


def check_precision(name: str) -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a one-line :class:`UsageError`."""
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}; use {', '.join(PRECISIONS)}")
    return name


def reduced(name: str) -> bool:
    """Whether ``name`` runs the forward pass in reduced precision (under autocast)."""
    return PRECISIONS[check_precision(name)] is not None


def supported_precision(name: str, device: torch.device | str) -> str:
    """``name`` if ``device`` can run it; a one-line :class:`UsageError` if not.

    fp32 runs anywhere.  CUDA: fp16 on every GPU, bf16 only where the GPU computes it natively
    (compute capability 8.0+; an emulated bf16 is slower than fp32 and not what was asked for).
    CPU: autocast supports both dtypes (torch >= 2.x); a one-convolution probe confirms it, so an
    older or unusual build fails here rather than in the middle of a pass."""
    dtype = PRECISIONS[check_precision(name)]
    if dtype is None:
        return name
    device = torch.device(device)
    if device.type == "cuda":
        if dtype is torch.bfloat16 and not _cuda_bf16(device):
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no "
                             f"native bfloat16; use --precision fp16 or fp32")
        return name
    if device.type == "cpu":
        if not _cpu_autocast_works(dtype):
            raise UsageError(f"--precision {name}: this torch ({torch.__version__}) cannot "
                             f"autocast to {dtype} on the CPU; use --precision fp32")
        return name
    raise UsageError(f"--precision {name} is supported on cpu and cuda only, not {device.type}")


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch without the keyword: the plain answer
            return bool(torch.cuda.is_bf16_supported())


_CPU_PROBES: dict[torch.dtype, bool] = {}


def _cpu_autocast_works(dtype: torch.dtype) -> bool:
    if dtype not in _CPU_PROBES:
        try:
            conv = nn.Conv2d(1, 1, 1)
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                works = conv(torch.ones(1, 1, 2, 2)).dtype == dtype
        except (RuntimeError, TypeError):
            works = False
        _CPU_PROBES[dtype] = works
    return _CPU_PROBES[dtype]


def forward_autocast(device: torch.device | str, name: str):
    """The context a forward pass at precision ``name`` runs in (nothing for fp32)."""
    dtype = PRECISIONS[check_precision(name)]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def uses_channels_last(device: torch.device | str, name: str) -> bool:
    """channels_last only on CUDA and only in reduced precision (see the module docstring)."""
    return torch.device(device).type == "cuda" and reduced(name)


@contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``model`` with its 4-d parameters and buffers in channels_last inside the block; the
    original tensors are put back afterwards (same objects, same values), so the model leaves
    the call as it came."""
    if not enabled:
        yield model
        return
    # Parameters keep their objects (.data is swapped); a converted buffer is a new object in
    # its module's _buffers, so the old one is put back there.
    params = [(p, p.data) for p in model.parameters()]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()]
    try:
        model.to(memory_format=torch.channels_last)
        yield model
    finally:
        for param, data in params:
            param.data = data
        for module, name, buffer in buffers:
            module._buffers[name] = buffer


def as_float32(value: Any) -> Any:
    """A floating tensor (or a tuple/list/dict of them) in float32; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(as_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    return value
