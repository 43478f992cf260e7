"""Model initialisation for ``--init``: random, ImageNet (local file only) or a cxrsem checkpoint.

A checkpoint init is how the paper's pretraining chains are built (e.g. a CheXpert classifier as
the starting point of a BrixIA severity model): the backbone loads, and the output head is replaced
when its size differs.  Nothing here ever downloads: ImageNet weights come from ``--weights`` or
torchvision's local cache, and a missing file is an error that says where to put it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrsem.checkpoint import load_checkpoint
from cxrsem.components import ArchitectureInfo
from cxrsem.errors import CheckpointError, UsageError


def imagenet_weights_path(info: ArchitectureInfo, weights: str | Path | None) -> Path:
    """The local ImageNet weight file for ``info``: ``weights`` or torchvision's hub cache."""
    if info.load_imagenet is None:
        raise UsageError(f"architecture {info.name!r} has no ImageNet weights; use --init random")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"ImageNet weights file not found: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / (info.imagenet_filename or "")
    if not cached.is_file():
        raise CheckpointError(
            f"ImageNet weights for {info.name!r} not found at {cached}; cxrsem never downloads "
            f"them: copy the file there (torchvision's cache) or pass --weights FILE")
    return cached


def head_module_name(model: nn.Module) -> str:
    """Name of the output layer: the last ``nn.Linear`` (or 1x1 conv) registered in the model."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            last = name
    if last is None:
        raise CheckpointError("cannot find the output layer of the model")
    return last


def load_backbone(model: nn.Module, checkpoint_path: str | Path, arch: str) -> list[str]:
    """Load a cxrsem checkpoint's weights into ``model``; replace the head if its size differs.

    Returns notes for the user (e.g. that the head was replaced).
    """
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint["arch"]["name"] != arch:
        raise CheckpointError(
            f"--init checkpoint {checkpoint_path} is a {checkpoint['arch']['name']!r} model, "
            f"but --arch is {arch!r}")
    source = checkpoint["state_dict"]
    target = model.state_dict()
    head = head_module_name(model) + "."
    mismatched = [k for k in target if k in source and source[k].shape != target[k].shape]
    foreign = [k for k in mismatched if not k.startswith(head)]
    missing = [k for k in target if k not in source]
    if foreign or missing:
        bad = (foreign or missing)[0]
        raise CheckpointError(
            f"--init checkpoint {checkpoint_path} does not fit this {arch!r} model "
            f"(first differing weight: {bad}); were the architecture options different?")
    kept = {k: v for k, v in source.items() if k in target and k not in mismatched}
    model.load_state_dict(kept, strict=False)
    notes = [f"initialised from {checkpoint_path} (epoch {checkpoint.get('train', {}).get('epoch')})"]
    if mismatched:
        old = len(checkpoint["task"]["outputs"])
        notes.append(f"output head {head[:-1]!r} replaced: the checkpoint had {old} "
                     f"{checkpoint['task']['kind']} outputs, this task needs a new head")
    return notes


def initialise(model: nn.Module, info: ArchitectureInfo, init: str,
               weights: str | Path | None = None) -> list[str]:
    """Apply ``--init`` to a freshly built model; returns notes for the user."""
    if init == "random":
        if weights is not None:
            raise UsageError("--weights is only used with --init imagenet")
        return []
    if init == "imagenet":
        path = imagenet_weights_path(info, weights)
        info.load_imagenet(model, path)
        return [f"ImageNet weights loaded from {path}"]
    path = Path(init).expanduser()
    if not path.exists():
        raise UsageError(f"--init must be random, imagenet or a cxrsem checkpoint; {init!r} is none")
    return load_backbone(model, path, info.name)
