"""Input normalisation recorded in every checkpoint (``input.normalization``).

Images enter cxrsem as grayscale float ``[B, 1, S, S]`` in [0, 1].  Models see
``(x - mean) / std`` with the checkpoint's mean/std.  The default is ImageNet's statistics averaged
over RGB, matching the ImageNet stem whose first-conv weights are averaged to one channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

DEFAULT_NORMALIZATION = {"mean": [0.449], "std": [0.226]}


def normalize(images: torch.Tensor, normalization: Mapping[str, Any] | None = None) -> torch.Tensor:
    norm = normalization or DEFAULT_NORMALIZATION
    mean = torch.tensor(norm["mean"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std
