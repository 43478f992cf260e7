"""Self-describing checkpoints (``cxrsem-checkpoint/1``), the contract between train, dissect and
attribute.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    {"format": "cxrsem-checkpoint/1", "state_dict": {...},
     "arch": {"name", "kwargs"}, "task": {"kind", "outputs"},
     "input": {"size", "channels", "normalization"},
     "train": {"dataset", "loss", "init", "epoch", "metrics", "config"},
     "cxrsem_version": "..."}

``last.pt`` additionally holds ``"resume"`` (optimizer, scheduler and RNG states).  Checkpoints are
loaded with ``torch.load(weights_only=True)``, so a downloaded file cannot run code, and written
atomically, so a kill mid-write never leaves a corrupt file behind.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrsem.errors import CheckpointError, CxrsemError, UnknownComponentError
from cxrsem.outputs import save_torch
from cxrsem.plugins import get_model_source, unknown_name_message

FORMAT = "cxrsem-checkpoint/1"
REQUIRED = ("state_dict", "arch", "task", "input")


def make_checkpoint(model: nn.Module, *, arch: str, arch_kwargs: Mapping[str, Any], task_kind: str,
                    outputs: list[str], image_size: int, normalization: Mapping[str, Any],
                    channels: int = 1, train: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from cxrsem import __version__

    return {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "arch": {"name": arch, "kwargs": dict(arch_kwargs)},
        "task": {"kind": task_kind, "outputs": list(outputs)},
        "input": {"size": int(image_size), "channels": int(channels),
                  "normalization": {k: list(v) for k, v in normalization.items()}},
        "train": dict(train or {}),
        "cxrsem_version": __version__,
    }


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any]) -> Path:
    return save_torch(path, dict(checkpoint))


def source_prefix(spec: str | Path) -> str | None:
    """``"xrv"`` for ``"xrv:densenet121-res224-all"``; None for a file path (or a Windows drive)."""
    if not isinstance(spec, str) or Path(spec).exists():
        return None
    prefix, colon, rest = spec.partition(":")
    if not colon or not rest or len(prefix) < 2 or "/" in prefix or "\\" in prefix:
        return None
    return prefix


def load_model(spec: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a model: a checkpoint file, or ``SOURCE:SPEC`` from a registered model
    source (see :class:`cxrsem.components.ModelSourceInfo`), validated the same way either way."""
    prefix = source_prefix(spec)
    if prefix is None:
        return load_checkpoint(spec)
    try:
        info = get_model_source(prefix)
    except UnknownComponentError as exc:
        raise CheckpointError(f"{spec} is neither a checkpoint file nor a model of a known source "
                              f"({exc})") from None
    name = str(spec).partition(":")[2]
    if info.specs and name not in info.specs:
        raise CheckpointError(unknown_name_message(f"{prefix} model", name, info.specs))
    return validate_checkpoint(info.factory(spec=name, **info.defaults()), str(spec))


def validate_checkpoint(data: Any, source: str) -> dict[str, Any]:
    """``data`` if it is a ``cxrsem-checkpoint/1`` dict with every required key, else one error."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{source} is not a cxrsem checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {source} lacks {', '.join(missing)}")
    return data


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; any problem is one :class:`CheckpointError` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}") from None
    return validate_checkpoint(data, str(path))


def build_model(checkpoint: Mapping[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Instantiate the checkpoint's architecture and load its weights (strictly), in eval mode."""
    from cxrsem.api import create_architecture
    from cxrsem.tasks import head_size

    arch = checkpoint["arch"]
    task = checkpoint["task"]
    num_outputs = head_size(task["kind"], len(task["outputs"]))
    try:
        model = create_architecture(arch["name"], num_outputs=num_outputs,
                                    in_channels=checkpoint["input"].get("channels", 1),
                                    **arch.get("kwargs", {}))
    except CxrsemError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = _mismatch(model, checkpoint["state_dict"], exc)
        raise CheckpointError(f"{source} does not fit architecture {arch['name']!r}: {detail}") from None
    return model.eval()


def _mismatch(model: nn.Module, state_dict: Mapping[str, Any], exc: Exception) -> str:
    """Which weights do not fit, in one line (torch's own message spans many)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape]

    def listed(label: str, names: list[str]) -> str:
        return f"{len(names)} {label} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"

    parts = [listed(label, names) for label, names in (("missing", missing), ("unexpected", unexpected),
                                                        ("of another shape", shapes)) if names]
    return "; ".join(parts) or str(exc).strip().splitlines()[0][:200]


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Checksum of the weights (names, dtypes, shapes and bytes), independent of file layout."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
