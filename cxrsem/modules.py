"""Your own model, in memory: any ``nn.Module`` as a cxrsem model, without a checkpoint file.

Everything downstream of a model (dissection, attribution, verify) reads a ``cxrsem-checkpoint/1``
dict (:mod:`cxrsem.checkpoint`): the architecture that rebuilds it, its weights, its task and
what its input must look like.  A module built in the user's own code has no registered
architecture, so :func:`module_checkpoint` describes it with an *in-memory* checkpoint: the
same dict, plus the live module under ``"module"``.  :func:`cxrsem.checkpoint.build_model`
returns a deep copy of that module (the user's object is never moved, cast or put in eval mode
by cxrsem), so the rest of the pipeline cannot tell the difference.  Such a dict is for one
process only: it is never written to disk (``torch.save`` of a live module is exactly what
``weights_only=True`` loading refuses).

::

    import torchvision, cxrsem
    net = torchvision.models.densenet121(num_classes=14)          # trained in your own code
    model = cxrsem.module_checkpoint(net, image_size=224, normalization="imagenet")
    result = cxrsem.dissect(model, "features.denseblock4", "phantom")

The input spec says how cxrsem's grey ``[0, 1]`` images become the module's input
(:class:`cxrsem.engine.preprocess.InputSpec`): ``image_size``, ``channels`` (the grey image is
repeated; default: the first convolution's ``in_channels``) and ``normalization`` (a preset
name, ``"MEAN,STD"`` or a ``{"mean": [...], "std": [...]}`` table; :func:`parse_normalization`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION
from cxrsem.errors import UsageError
from cxrsem.tasks import ZONE_CLASSES, check_kind

IN_MEMORY = "in-memory"  # the arch name of a module_checkpoint: nothing to rebuild from

# The normalisations models are commonly trained with, for x in [0, 1]: (x - mean) / std.
NORMALIZATIONS: Mapping[str, Mapping[str, list[float]]] = {
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    # TorchXRayVision: (2x - 1) * 1024 = (x - 0.5) * 2048
    "xrv": {"mean": [0.5], "std": [1 / 2048]},
    "none": {"mean": [0.0], "std": [1.0]},
}


def parse_normalization(value: str | Mapping[str, Any] | None, channels: int) -> dict[str, list[float]]:
    """A normalisation for a ``channels``-channel model from a preset name (``imagenet``, ``xrv``,
    ``none``), ``"MEAN,STD"`` (one value each), a table ``{"mean": [...], "std": [...]}`` or
    ``None`` (cxrsem's default, ImageNet's statistics averaged over RGB).  ``imagenet`` for a
    1-channel model is its RGB mean, the statistics an ImageNet stem averaged to one channel
    expects."""
    if value is None:
        return {k: list(v) for k, v in DEFAULT_NORMALIZATION.items()}
    if isinstance(value, Mapping):
        table = {k: [float(x) for x in value[k]] for k in ("mean", "std") if k in value}
        if set(table) != {"mean", "std"}:
            raise UsageError(f"a normalization table needs 'mean' and 'std', got {sorted(value)}")
        return table
    text = str(value).strip()
    if text.lower() in NORMALIZATIONS:
        table = {k: list(v) for k, v in NORMALIZATIONS[text.lower()].items()}
        if channels == 1 and len(table["mean"]) > 1:
            table = {k: [sum(v) / len(v)] for k, v in table.items()}
        return table
    parts = [p.strip() for p in text.split(",")]
    try:
        mean, std = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--normalization must be {', '.join(NORMALIZATIONS)} or MEAN,STD "
                         f"(e.g. 0.5,0.25), got {value!r}") from None
    if not std > 0:
        raise UsageError(f"--normalization: the std must be positive, got {std}")
    return {"mean": [mean], "std": [std]}


def input_channels(module: nn.Module) -> int:
    """The ``in_channels`` of the module's first 2-D convolution (a ViT's patch embedding is one),
    or 1 when it has none."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return int(layer.in_channels)
    return 1


def _output_count(module: nn.Module, image_size: int, channels: int) -> int:
    """The number of logits ``module`` gives for one image (one probe pass on a copy's state)."""
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, channels, image_size, image_size, device=device, dtype=dtype))
    except Exception as exc:  # the user's module: any failure is a usage problem
        raise UsageError(f"the model fails on a {channels}-channel {image_size}x{image_size} "
                         f"input ({type(exc).__name__}: {exc}); check image_size and channels") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"the model must return logits [B, outputs]; it returned {shape}")
    return int(out.shape[1])


def module_checkpoint(module: nn.Module, *, image_size: int, channels: int | None = None,
                      normalization: str | Mapping[str, Any] | None = None,
                      outputs: Sequence[str] | None = None, task: str = "multilabel",
                      name: str = "model", layer: str | None = None) -> dict[str, Any]:
    """An in-memory checkpoint of ``module`` for :func:`cxrsem.dissect`,
    :func:`cxrsem.attribute` and :func:`cxrsem.verify` (see the module docstring).

    ``task`` is the checkpoint's task kind (``multilabel``, ``binary``, ``global-score``,
    ``zones``); ``outputs`` names its outputs (default ``output0``, ``output1``, ... from one probe
    pass); ``name`` is what results call the model; ``layer`` the default layer of commands."""
    if not isinstance(module, nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(module).__name__}")
    kind = check_kind(task)
    size = int(image_size)
    if size < 1:
        raise UsageError(f"image_size must be positive, got {image_size}")
    channels = input_channels(module) if channels is None else int(channels)
    logits = _output_count(module, size, channels)
    per_output = ZONE_CLASSES if kind == "zones" else 1
    if outputs is None:
        if logits % per_output:
            raise UsageError(f"a zones model needs {per_output} logits per zone; it gives {logits}")
        outputs = [f"output{i}" for i in range(logits // per_output)]
    outputs = [str(o) for o in outputs]
    if len(outputs) * per_output != logits:
        raise UsageError(f"{len(outputs)} output name(s) for a model with {logits} logits"
                         + (f" ({per_output} per zone)" if per_output > 1 else ""))
    norm = parse_normalization(normalization, channels)
    for key, values in norm.items():
        if len(values) not in (1, channels):
            raise UsageError(f"normalization {key} has {len(values)} values; a {channels}-channel "
                             f"model needs 1 or {channels}")
    from cxrsem import __version__
    from cxrsem.checkpoint import FORMAT

    return {
        "format": FORMAT,
        "state_dict": module.state_dict(),  # the module's own tensors: identity and sha256
        "arch": {"name": IN_MEMORY, "kwargs": {}, **({"layer": layer} if layer else {}),
                 "class": type(module).__qualname__},
        "task": {"kind": kind, "outputs": outputs},
        "input": {"size": size, "channels": channels, "normalization": norm},
        "train": {},
        "cxrsem_version": __version__,
        "path": str(name),
        "module": module,
    }


def is_in_memory(checkpoint: Any) -> bool:
    return isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("module"), nn.Module)


def as_checkpoint(model: Any, **spec: Any) -> Any:
    """``model`` as the pipeline takes it: an ``nn.Module`` becomes :func:`module_checkpoint`
    with ``spec`` (``image_size`` required); paths, model names and checkpoint dicts pass as
    they are."""
    if isinstance(model, nn.Module):
        if spec.get("image_size") is None:
            raise UsageError("an nn.Module needs image_size= (and optionally channels=, "
                             "normalization=, outputs=, task=)")
        return module_checkpoint(model, **{k: v for k, v in spec.items() if v is not None})
    return model


__all__ = ["IN_MEMORY", "NORMALIZATIONS", "as_checkpoint", "input_channels", "is_in_memory",
           "module_checkpoint", "parse_normalization"]
