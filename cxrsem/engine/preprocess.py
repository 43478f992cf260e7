"""Model-ready inputs: the one place where images become what a checkpoint's model expects.

Images enter cxrsem as grayscale float ``[B, 1, S, S]`` in [0, 1] (every dataset, concept set and
image reader delivers that).  A checkpoint's ``input`` block says what its model sees: ``size``,
``channels`` (the grey image repeated, e.g. 3 for an RGB ImageNet stem) and ``normalization``
(``(x - mean) / std`` with one value or one per channel).  The default normalisation is
ImageNet's statistics averaged over RGB, matching the ImageNet stem whose first-conv weights are
averaged to one channel.  Training, dissection and attribution all go through
:meth:`InputSpec.prepare`, so a checkpoint is fed the same way by every stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cxrsem.errors import UsageError

DEFAULT_NORMALIZATION = {"mean": [0.449], "std": [0.226]}


def normalize(images: torch.Tensor, normalization: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``(images - mean) / std``, mean/std broadcast over the channel dimension."""
    norm = normalization or DEFAULT_NORMALIZATION
    mean = torch.tensor(norm["mean"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: image ``size``, input ``channels`` and ``normalization``."""

    size: int
    channels: int = 1
    normalization: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))

    def __post_init__(self) -> None:
        if int(self.size) < 1 or int(self.channels) < 1:
            raise UsageError(f"input size and channels must be positive, got size {self.size}, "
                             f"channels {self.channels}")
        for key in ("mean", "std"):
            values = list(self.normalization.get(key, ()))
            if len(values) not in (1, int(self.channels)):
                raise UsageError(f"input normalization {key} has {len(values)} values; a "
                                 f"{self.channels}-channel model needs 1 or {self.channels}")

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> InputSpec:
        """The ``input`` block of a ``cxrsem-checkpoint/1`` dict."""
        spec = checkpoint["input"]
        return cls(size=int(spec["size"]), channels=int(spec.get("channels", 1)),
                   normalization=dict(spec.get("normalization") or DEFAULT_NORMALIZATION))

    def prepare(self, images: torch.Tensor, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """Grey images ``[B, 1, S, S]`` in [0, 1] -> model input ``[B, channels, S, S]``: moved to
        ``device``/``dtype``, repeated to the model's channels, then normalised."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise UsageError(f"expected grey images [B, 1, S, S], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.size, self.size):
            raise UsageError(f"images are {tuple(images.shape[-2:])} but the model expects "
                             f"{self.size}x{self.size}")
        images = images.to(device=device, dtype=dtype or torch.float32)
        if self.channels != 1:
            images = images.expand(-1, self.channels, -1, -1)
        return normalize(images, self.normalization)
