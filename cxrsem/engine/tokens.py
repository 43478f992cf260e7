"""Layers whose output is a token sequence (vision transformers): ``[B, T, D]`` read as ``D``
units on the patch grid.

Network Dissection and semantic attribution work on units with spatial maps ``[B, K, h, w]``.
A ViT block outputs ``T`` tokens of width ``D``: ``P`` prefix tokens (the class token, timm's
register/distillation tokens) followed by the ``h x w`` patch tokens in row-major order.  The
``D`` channels are the units; a unit's map is its value at each patch token, laid out on the
grid.  The prefix tokens have no place on the grid: they are dropped for dissection and kept,
unchanged, for the model (attribution substitutes the patch tokens only, so Integrated
Gradients' zero baseline zeroes the patch tokens and keeps the class token as it was).

The prefix length comes from the model when it says (timm's ``num_prefix_tokens``; a torchvision
``VisionTransformer`` has a ``class_token``: 1), else ``P`` is 0 or 1, whichever leaves a square
number of tokens (register tokens must be declared: a guess over more would find a "grid" in
almost any sequence).  Understood: batch-first ``[B, T, D]`` sequences whose patch
tokens form a square grid after the prefix (torchvision ``vit_*`` encoder layers, timm ViT/DeiT
blocks at their native size).  Anything else -- non-square grids, sequence-first layouts,
pooled or windowed tokens (Swin's ``[B, h, w, D]`` is 4-D and not channel-first) -- is refused
with one line when chosen as a layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

MAX_GUESSED_PREFIX = 1  # a class token or none; more must be declared by the model


@dataclass(frozen=True)
class TokenLayout:
    prefix: int       # tokens before the patch tokens
    grid: tuple[int, int]

    def to_units(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, D, h, w]`` (the patch tokens; a new tensor)."""
        b, _t, d = tokens.shape
        h, w = self.grid
        return tokens[:, self.prefix:, :].transpose(1, 2).reshape(b, d, h, w).contiguous()

    def to_tokens(self, units: torch.Tensor, prefix_tokens: torch.Tensor) -> torch.Tensor:
        """``[R, D, h, w]`` patch units and ``[R, P, D]`` prefix tokens -> ``[R, T, D]``."""
        patches = units.flatten(2).transpose(1, 2)
        return torch.cat([prefix_tokens.to(patches.dtype), patches], dim=1)


def declared_prefix(model: nn.Module | None) -> int | None:
    """The number of prefix tokens the model declares (timm, torchvision), or None."""
    if model is None:
        return None
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    if isinstance(getattr(model, "class_token", None), torch.Tensor):  # torchvision ViT
        return 1
    return None


def token_layout(output: torch.Tensor, model: nn.Module | None = None) -> TokenLayout | None:
    """The layout of a ``[B, T, D]`` output, or None when it is not a token sequence on a square
    patch grid (see the module docstring)."""
    if not isinstance(output, torch.Tensor) or output.dim() != 3:
        return None
    tokens = int(output.shape[1])
    declared = declared_prefix(model)
    candidates = [declared] if declared is not None else range(MAX_GUESSED_PREFIX + 1)
    for prefix in candidates:
        patches = tokens - prefix
        side = math.isqrt(patches) if patches > 0 else 0
        if side > 0 and side * side == patches:
            return TokenLayout(prefix, (side, side))
    return None


def as_units(output: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """A layer's output as units ``[B, K, h, w]``: itself when 4-D, the patch grid of a token
    sequence (the layout must be understood: callers check with :func:`token_layout`)."""
    if output.dim() == 4:
        return output
    layout = token_layout(output, model)
    if layout is None:
        raise ValueError(f"output of shape {tuple(output.shape)} is not a token sequence on a "
                         f"square patch grid")
    return layout.to_units(output)


class TokenSplit:
    """A :class:`~cxrsem.engine.split.Split` at a token layer, with the split's contract in units:
    ``head`` gives ``[B, D, h, w]`` and the prefix tokens as the first extra; ``tail`` puts the
    prefix back in front of the (substituted) patch tokens."""

    def __init__(self, split, layout: TokenLayout, units: int) -> None:
        self.split, self.layout = split, layout
        self.activation_shape = (units, *layout.grid)

    def __getattr__(self, name: str):
        return getattr(self.split, name)

    def head(self, x: torch.Tensor):
        tokens, extras = self.split.head(x)
        return self.layout.to_units(tokens), (tokens[:, :self.layout.prefix].clone(), *extras)

    def rows(self, extras, index: torch.Tensor, num_images: int):
        from cxrsem.engine.split import repeat_rows

        prefix, *rest = extras
        return (repeat_rows(prefix, index), *self.split.rows(tuple(rest), index, num_images))

    def tail(self, a: torch.Tensor, extras):
        prefix, *rest = extras
        return self.split.tail(self.layout.to_tokens(a, prefix), tuple(rest))


__all__ = ["TokenLayout", "TokenSplit", "as_units", "declared_prefix", "token_layout"]
