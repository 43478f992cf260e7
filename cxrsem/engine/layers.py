"""Finding layers by name and capturing their outputs with hooks that always clean up.

``--layer`` accepts a full module path (``features.denseblock4``) or an unambiguous suffix on a dot
boundary (``denseblock4``).  Valid layers are the modules whose output is a 4-D tensor
``[B, K, h, w]`` (conv-like feature maps) or a token sequence ``[B, T, D]`` on a square patch grid
(vision transformers: :mod:`cxrsem.engine.tokens`), found with one probe forward pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from cxrsem.engine.tokens import as_units, token_layout
from cxrsem.errors import UsageError


@contextmanager
def forward_hooks(model: nn.Module, hooks: dict[str, callable]) -> Iterator[None]:
    """Register ``{module_name: hook}`` forward hooks for the duration of the block, then remove
    them, whatever happens inside: a model leaves every call unchanged."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def feature_map_layers(model: nn.Module, image_size: int, in_channels: int = 1) -> list[str]:
    """Names of the modules that output a 4-D tensor, in execution order (one probe pass)."""
    found: list[str] = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if name in found or not isinstance(output, torch.Tensor):
                return
            if output.dim() == 4 or token_layout(output, model) is not None:
                found.append(name)
        return hook

    names = [name for name, _ in model.named_modules() if name]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    probe = torch.zeros(1, in_channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forward_hooks(model, {n: make_hook(n) for n in names}):
            model(probe)
    finally:
        model.train(was_training)
    return found


def resolve_layer(name: str, valid: Sequence[str], all_modules: Sequence[str] = ()) -> str:
    """Map a user's layer name to a full module path, or fail listing the valid names."""
    if name in valid:
        return name
    matches = [v for v in valid if v.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"layer {name!r} is ambiguous: {', '.join(matches)}; give the full path")
    if name in all_modules or any(m.endswith("." + name) for m in all_modules):
        raise UsageError(f"layer {name!r} outputs neither a feature map [B, K, h, w] nor a token "
                         f"sequence on a square patch grid; valid layers: "
                         f"{_short_list(valid)}")
    close = difflib.get_close_matches(name, list(valid) + [v.rsplit(".", 1)[-1] for v in valid],
                                      n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown layer {name!r}{hint} valid layers: {_short_list(valid)}")


def _short_list(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def resolve_layers(model: nn.Module, names: Sequence[str], image_size: int,
                   in_channels: int = 1) -> list[str]:
    valid = feature_map_layers(model, image_size, in_channels)
    all_modules = [n for n, _ in model.named_modules() if n]
    resolved = []
    for name in names:
        full = resolve_layer(name, valid, all_modules)
        if full not in resolved:
            resolved.append(full)
    return resolved


@contextmanager
def capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of ``layers`` during forward passes inside the block.

    Outputs are **cloned**: torchvision's DenseNet applies ``F.relu(..., inplace=True)`` right after
    ``features``, which would silently overwrite a stored reference to ``features.norm5``'s output.
    What is captured is therefore exactly the module's output (pre-ReLU for ``norm5``).
    """
    store: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            # A token layer's [B, T, D] becomes its units on the patch grid (a new tensor).
            store[name] = (output.detach().clone() if output.dim() == 4
                           else as_units(output.detach(), model))
        return hook

    with forward_hooks(model, {name: make_hook(name) for name in layers}):
        yield store
