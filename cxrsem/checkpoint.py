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

import copy
import hashlib
import math
import pickle
import warnings
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
# Wider inputs break the image pixel limit (cxrsem.imageio.MAX_IMAGE_PIXELS) anyway.
MAX_INPUT_SIZE = 10_000
MAX_CHANNELS = 16


# Set by cxrsem from the checkpoint's task and input, never by the architecture's options.
RESERVED_ARCH_KWARGS = ("num_outputs", "in_channels")


def _check_arch_kwargs(arch_kwargs: Mapping[str, Any], source: str) -> None:
    reserved = [k for k in RESERVED_ARCH_KWARGS if k in arch_kwargs]
    if reserved:
        raise CheckpointError(
            f"{source}: arch kwargs must not hold {' or '.join(reserved)}: cxrsem sets them from "
            f"the task's outputs and the input's channels (give outputs= / channels= instead)")


def make_checkpoint(model: nn.Module, *, arch: str, arch_kwargs: Mapping[str, Any], task_kind: str,
                    outputs: list[str], image_size: int, normalization: Mapping[str, Any],
                    channels: int = 1, train: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from cxrsem import __version__

    _check_arch_kwargs(arch_kwargs, "make_checkpoint")

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


def load_model(spec: str | Path, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of a model: a checkpoint file, or ``SOURCE:SPEC`` from a registered model
    source (see :class:`cxrsem.components.ModelSourceInfo`) with the source's ``options``
    (``weights``, ``num_outputs``, ... for ``torchvision:``), validated the same way either way."""
    prefix = source_prefix(spec)
    if prefix is None:
        if options:
            raise CheckpointError(f"{', '.join(sorted(options))} apply to model sources "
                                  f"(torchvision:NAME, timm:NAME, ...), not to the checkpoint {spec}")
        return load_checkpoint(spec)
    try:
        info = get_model_source(prefix)
    except UnknownComponentError as exc:
        raise CheckpointError(f"{spec} is neither a checkpoint file nor a model of a known source "
                              f"({exc})") from None
    name = str(spec).partition(":")[2]
    if info.specs and name not in info.specs:
        raise CheckpointError(unknown_name_message(f"{prefix} model", name, info.specs))
    from cxrsem.options import resolve_options

    resolved = resolve_options(info, "model source", dict(options or {}))
    return validate_checkpoint(info.factory(spec=name, **resolved), str(spec))


def validate_checkpoint(data: Any, source: str) -> dict[str, Any]:
    """``data`` if it is a well-formed ``cxrsem-checkpoint/1`` dict, else one :class:`CheckpointError`.

    Checked here, so that every entry point (``dissect``, ``attribute``, ``train --init`` and
    ``--resume``, model sources) refuses the same files with the same sentence: the format tag and
    required keys; ``arch`` ``{"name": str, "kwargs": dict}``; ``task`` ``{"kind": str, "outputs":
    [str]}``; ``input.size`` an integer in ``1..MAX_INPUT_SIZE``, ``input.channels`` in
    ``1..MAX_CHANNELS``, ``input.normalization`` finite ``mean`` and positive finite ``std`` lists;
    ``state_dict`` a dict of tensors whose floating-point values are all finite.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{source} is not a cxrsem checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {source} lacks {', '.join(missing)}")

    def bad(field_: str, expected: str, value: Any) -> CheckpointError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return CheckpointError(f"checkpoint {source}: {field_!r} must be {expected}, got {shown}")

    arch = data["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise bad("arch", 'a table {"name": str, "kwargs": {...}}', arch)
    if not isinstance(arch.get("kwargs", {}), dict):
        raise bad("arch.kwargs", "a table", arch.get("kwargs"))
    task = data["task"]
    if (not isinstance(task, dict) or not isinstance(task.get("kind"), str)
            or not isinstance(task.get("outputs"), list)
            or not all(isinstance(o, str) for o in task["outputs"])):
        raise bad("task", 'a table {"kind": str, "outputs": [str, ...]}', task)
    spec = data["input"]
    if not isinstance(spec, dict):
        raise bad("input", 'a table {"size", "channels", "normalization"}', spec)
    size = spec.get("size")
    if not _is_int(size) or not 1 <= size <= MAX_INPUT_SIZE:
        raise bad("input.size", f"an integer from 1 to {MAX_INPUT_SIZE:,} (pixels a side)", size)
    channels = spec.get("channels", 1)
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise bad("input.channels", f"an integer from 1 to {MAX_CHANNELS}", channels)
    norm = spec.get("normalization")
    if norm is not None:
        if not isinstance(norm, dict):
            raise bad("input.normalization", 'a table {"mean": [...], "std": [...]}', norm)
        for key in ("mean", "std"):
            values = norm.get(key, [0.0] if key == "mean" else [1.0])
            if (not isinstance(values, (list, tuple)) or not values
                    or not all(_is_number(v) and math.isfinite(v) for v in values)):
                raise bad(f"input.normalization.{key}", "a non-empty list of finite numbers", values)
            if key == "std" and not all(v > 0 for v in values):
                raise bad("input.normalization.std", "positive (a zero std divides by zero)",
                          values)
    state_dict = data["state_dict"]
    if not isinstance(state_dict, dict):
        raise bad("state_dict", "a table of tensors", type(state_dict).__name__)
    check_finite(state_dict, source)
    return data


def non_finite(state_dict: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """``(name, non-finite count, size)`` of the first floating-point tensor holding NaN/inf."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                return name, int((~finite).sum()), tensor.numel()
    return None


def check_finite(state_dict: Mapping[str, Any], source: str) -> None:
    """One :class:`CheckpointError` naming the first entry that is not a tensor or holds NaN/inf
    (a model with such weights only ever predicts NaN)."""
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: state_dict entry {name!r} is a "
                                  f"{type(tensor).__name__}, not a tensor")
    found = non_finite(state_dict)
    if found is not None:
        name, count, size = found
        raise CheckpointError(
            f"checkpoint {source}: tensor {name!r} has {count:,} non-finite value(s) "
            f"(NaN or inf) of {size:,}; refusing a model with non-finite weights")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; any problem is one :class:`CheckpointError` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # torch's note on the pickle protocol is noise here: the file loads or is refused below
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused is not None and not refused.startswith("Unsupported operand"):
            # torch's own message is a page long, with its warning about running code in the middle
            raise CheckpointError(
                f"{path} is not a plain-data checkpoint: loading it would need to run code from the "
                f"file, which cxrsem never does (torch.load weights_only=True refused: "
                f"{refused or _first_line(exc)})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint file "
                              f"({refused or _first_line(exc)})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything on a file that is no checkpoint
        with open(path, "rb") as fh:
            head = fh.read(2)
        torch_like = head[:2] == b"PK" or head[:1] == b"\x80"  # zip archive, or a legacy pickle
        detail = (f"{type(exc).__name__}: {_first_line(exc)}" if torch_like
                  else "neither a zip archive nor a pickle: a text or other file?")
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint file "
                              f"({detail})") from None
    return validate_checkpoint(data, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _refused_global(exc: BaseException) -> str | None:
    """What torch's weights-only message says the file asked for (``Unsupported global: ...``)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return None
    lines = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[0].split(". Please use", 1)[0].rstrip(".")
    return line if len(line) <= 200 else line[:197] + "..."


def create_model(checkpoint: Mapping[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """The checkpoint's architecture (name, options, head size, input channels), freshly
    initialised: its weights are not loaded (:func:`build_model` loads them)."""
    from cxrsem.api import create_architecture
    from cxrsem.tasks import head_size

    arch, task = checkpoint["arch"], checkpoint["task"]
    _check_arch_kwargs(arch.get("kwargs", {}), str(source))
    try:
        return create_architecture(arch["name"], num_outputs=head_size(task["kind"], len(task["outputs"])),
                                   in_channels=checkpoint["input"].get("channels", 1),
                                   **arch.get("kwargs", {}))
    except CxrsemError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a factory refusing the recorded options
        raise CheckpointError(f"{source}: architecture {arch['name']!r} cannot be built with "
                              f"options {arch.get('kwargs', {})}: {exc}") from None


def build_model(checkpoint: Mapping[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Instantiate the checkpoint's architecture and load its weights (strictly), in eval mode.

    An in-memory checkpoint (:func:`cxrsem.modules.module_checkpoint`) gives a deep copy of its
    module: what cxrsem does to the model (device, dtype, eval mode) never touches the user's."""
    module = checkpoint.get("module")
    if isinstance(module, nn.Module):
        return copy.deepcopy(module).eval()
    arch = checkpoint["arch"]
    model = create_model(checkpoint, source)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = weights_mismatch(model, checkpoint["state_dict"], exc)
        raise CheckpointError(f"{source} does not fit architecture {arch['name']!r}: {detail}") from None
    return model.eval()


def weights_mismatch(model: nn.Module, state_dict: Mapping[str, Any], exc: Exception) -> str:
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
