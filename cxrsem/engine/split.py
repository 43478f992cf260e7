"""Splitting a model at a layer: ``head(x) -> (A, extras)`` and ``tail(A', extras) -> logits``.

Layer attributions (Integrated Gradients at layer L, paper Eq. 6) evaluate the network *after* L
at many scaled copies ``alpha * A`` of one activation tensor.  Re-running the whole model for each
copy wastes all the work before L; the split computes ``A`` once and runs only the tail.

Two paths compute the same function:

``fx``
    The model is traced with :mod:`torch.fx`, ``L`` kept as one leaf node.  The *head* graph holds
    every node that does not depend on ``L``'s output; the *tail* graph holds the nodes that do.
    Its inputs are ``L``'s output and the **extras**: values computed before ``L`` that later nodes
    still read (skip connections that bypass ``L``, e.g. the identity of a ResNet block).  Extras
    are computed once per image and repeated over the rows that belong to it.
``hook``
    For models that cannot be traced (data-dependent control flow, ...): the head runs the model
    and captures ``L``'s output; the tail re-runs the *full* model on the image with a forward hook
    that substitutes the given tensor for ``L``'s output.  Its single extra is the image itself.

Everything before ``L`` sees the same image in both paths and everything after ``L`` the same
values, so the two paths agree (up to the floating-point order of identical operations).
:func:`split_at` checks the fx split against the model on an example input and falls back to the
hook path, naming the reason, when tracing fails or the traced split does not reproduce the model.

Rows must be independent: the model is expected in eval mode (batch norm with running statistics,
no dropout), as every attribution needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from cxrsem.engine.layers import forward_hooks
from cxrsem.errors import UsageError

__all__ = ["HeadOnce", "Split", "SplitError", "SplitPath", "repeat_rows", "split_at"]

SplitPath = Literal["fx", "hook"]


class SplitError(UsageError):
    """A request no split can serve (a reused layer, an output independent of the layer)."""


class _LayerLeafTracer(torch.fx.Tracer):
    """A tracer that keeps module ``layer`` as one call (its output becomes one node)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.layer or super().is_leaf_module(module, qualified_name)


@dataclass
class Split:
    """A model cut at ``layer``.

    ``head(x)`` returns ``(A, extras)`` for a batch of ``N`` images; ``rows(extras, index, N)``
    selects the extras of the images ``index`` (one entry per tail row); ``tail(A_rows,
    extras_rows)`` returns the model output for the rows.  ``path`` says which implementation runs
    and ``reason`` why the fx path was not used (``None`` when it was); ``activation_shape`` is the
    shape of ``L``'s output for one image of the example input.
    """

    model: nn.Module
    layer: str
    path: SplitPath
    reason: str | None = None
    _head: nn.Module | None = field(default=None, repr=False)
    _tail: nn.Module | None = field(default=None, repr=False)
    _batched: tuple[bool, ...] = field(default=(), repr=False)
    activation_shape: tuple[int, ...] = ()  # L's output per image, e.g. (K, h, w)

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """``L``'s output for the images ``x`` and the extras the tail needs."""
        if self.path == "fx":
            out = self._head(x)
            return out[0], tuple(out[1:])
        store: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            # A clone: an in-place op after L (DenseNet's relu after norm5) must not change A.
            store.append(output.detach().clone())

        with forward_hooks(self.model, {self.layer: hook}):
            self.model(x)
        _check_calls(self.layer, len(store))
        return store[0], (x,)

    def rows(self, extras: Sequence[Any], index: torch.Tensor, num_images: int) -> tuple[Any, ...]:
        """The extras of the images ``index`` (a long tensor, one entry per row).

        Per-image tensors (those that depend on the input and have one entry per image) are
        indexed -- a copy, so an in-place op in the tail cannot alter them; constants pass as is.
        """
        batched = self._batched if self.path == "fx" else (True,) * len(extras)
        out = []
        for value, depends in zip(extras, batched, strict=True):
            if (depends and isinstance(value, torch.Tensor) and value.dim() >= 1
                    and value.shape[0] == num_images):
                out.append(repeat_rows(value, index))
            else:
                out.append(value)
        return tuple(out)

    def tail(self, a: torch.Tensor, extras: Sequence[Any]) -> torch.Tensor:
        """The model output when ``L``'s output is ``a`` (rows of ``a`` match rows of extras)."""
        if self.path == "fx":
            return self._tail(a, *extras)
        (x,) = extras
        calls = []

        def hook(_module, _inputs, output):
            calls.append(1)
            if tuple(output.shape) != tuple(a.shape):
                raise UsageError(f"layer {self.layer!r} produced {tuple(output.shape)}, but the "
                                 f"substituted activations have shape {tuple(a.shape)}")
            return a

        with forward_hooks(self.model, {self.layer: hook}):
            out = self.model(x)
        _check_calls(self.layer, len(calls))
        return out


class HeadOnce:
    """A :class:`Split` whose ``head`` remembers its last batch: several attribution methods run
    one after another on the same images (``cxrsem verify``) pay for the head once.

    The batch is recognised by its storage, shape, strides, dtype, device and version counter (so
    an in-place change recomputes); the cached input is held, so its memory cannot be reused by
    another batch while it is remembered.  A caller (or a tail acting in place) that changed the
    returned activations also forces a new pass: their version counter is checked.  Everything
    else is the wrapped split's.
    """

    def __init__(self, split: Split) -> None:
        self.split = split
        self._input: torch.Tensor | None = None
        self._key: tuple[Any, ...] | None = None
        self._value: tuple[torch.Tensor, tuple[Any, ...]] | None = None
        self._acts_version = 0
        self.computed = 0  # head passes actually run

    def __getattr__(self, name: str) -> Any:
        return getattr(self.split, name)

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version)
        if key != self._key or self._value is None or self._value[0]._version != self._acts_version:
            self._value = self.split.head(x)
            self._input, self._key = x, key
            self._acts_version = self._value[0]._version
            self.computed += 1
        return self._value


def repeat_rows(value: torch.Tensor, index: torch.Tensor,
                scale: torch.Tensor | None = None) -> torch.Tensor:
    """``value[index]`` (times ``scale`` per row, when given) as a new tensor.

    Rows come in runs of one image (image-major order), so each run is one broadcast of a single
    row: several times faster on CPU than ``index_select`` with repeated indices.
    """
    index = index.to(value.device)
    if index.numel() == 0:
        return value[:0].clone()
    images, counts = torch.unique_consecutive(index, return_counts=True)
    parts, start = [], 0
    for image, count in zip(images.tolist(), counts.tolist(), strict=True):
        row = value[image:image + 1]
        if scale is None:
            parts.append(row.expand(count, *value.shape[1:]))
        else:
            factors = scale[start:start + count].view((-1,) + (1,) * (value.dim() - 1))
            parts.append(factors * row)
        start += count
    return torch.cat(parts) if len(parts) > 1 or scale is None else parts[0]


def _check_calls(layer: str, calls: int) -> None:
    if calls == 0:
        raise SplitError(f"layer {layer!r} is not called in the model's forward pass")
    if calls > 1:
        raise SplitError(f"layer {layer!r} runs {calls} times in one forward pass; attributing to a "
                         f"reused module is ambiguous -- choose a layer that runs once")


def _fx_split(model: nn.Module, layer: str) -> Split:
    """Trace ``model`` and cut the graph at ``layer``'s node (see the module docstring)."""
    tracer = _LayerLeafTracer(layer)
    graph = tracer.trace(model)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"the traced forward takes {len(placeholders)} inputs, expected one")
    layer_nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(layer_nodes) != 1:
        if len(layer_nodes) > 1:
            _check_calls(layer, len(layer_nodes))
        raise ValueError(f"layer {layer!r} does not appear as one node in the traced graph")
    layer_node = layer_nodes[0]
    output_node = next(n for n in graph.nodes if n.op == "output")

    # Nodes whose value depends on L's output form the tail; the rest is the head.
    downstream: set[torch.fx.Node] = set()
    frontier = list(layer_node.users)
    while frontier:
        node = frontier.pop()
        if node not in downstream:
            downstream.add(node)
            frontier.extend(node.users)
    if output_node not in downstream:
        raise SplitError(f"the model output does not depend on layer {layer!r}")
    tail_nodes = [n for n in graph.nodes if n in downstream]

    # Extras: head values read by tail nodes (besides L's output itself).
    extras: list[torch.fx.Node] = []
    for node in tail_nodes:
        for used in node.all_input_nodes:
            if used is not layer_node and used not in downstream and used not in extras:
                extras.append(used)

    # Which extras depend on the input image (and so differ per image): the rest are constants.
    from_input: set[torch.fx.Node] = set(placeholders)
    for node in graph.nodes:
        if any(used in from_input for used in node.all_input_nodes):
            from_input.add(node)
    batched = tuple(node in from_input for node in extras)

    head = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in graph.nodes:
        if node in downstream or node.op == "output":
            continue
        env[node] = head.node_copy(node, lambda n: env[n])
    head.output((env[layer_node], *[env[n] for n in extras]))
    head_module = torch.fx.GraphModule(model, head)
    head_module.graph.eliminate_dead_code()  # the nodes after L that the tail does not need
    head_module.recompile()

    tail = torch.fx.Graph()
    tenv: dict[torch.fx.Node, torch.fx.Node] = {layer_node: tail.placeholder("activations")}
    for i, node in enumerate(extras):
        tenv[node] = tail.placeholder(f"extra_{i}")
    for node in tail_nodes:
        tenv[node] = tail.node_copy(node, lambda n: tenv[n])

    return Split(model=model, layer=layer, path="fx", _head=head_module,
                 _tail=torch.fx.GraphModule(model, tail), _batched=batched)


def _max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def split_at(model: nn.Module, layer: str, example_input: torch.Tensor, *,
             mode: Literal["auto", "fx", "hook"] = "auto") -> Split:
    """Cut ``model`` (in eval mode) at module ``layer`` (a full module path).

    ``mode="auto"`` traces with torch.fx and falls back to the hook path when tracing fails or the
    traced split does not reproduce ``model(example_input)``; ``"fx"`` makes such a failure an
    error and ``"hook"`` skips tracing.  The model itself is never modified.
    """
    if mode not in ("auto", "fx", "hook"):
        raise UsageError(f"unknown split mode {mode!r}; use auto, fx or hook")
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        raise UsageError(f"model has no module {layer!r}")
    if model.training:
        raise UsageError("the model is in training mode; call model.eval() first (attributions "
                         "need rows that do not influence each other)")
    hook_split = Split(model=model, layer=layer, path="hook")
    if mode == "hook":
        hook_split.reason = "requested"
        _verify(model, hook_split, example_input)
        return _in_units(model, hook_split, example_input)
    try:
        split = _fx_split(model, layer)
        _verify(model, split, example_input)
        return _in_units(model, split, example_input)
    except SplitError:
        raise
    except UsageError as exc:
        reason = str(exc)
        if mode == "fx":
            raise
    except Exception as exc:  # tracing raises many types: TraceError, TypeError, NotImplementedError
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if mode == "fx":
            raise UsageError(f"cannot split the model at {layer!r} with torch.fx: {reason}") from None
    hook_split.reason = f"torch.fx split unavailable ({reason[:300]})"
    _verify(model, hook_split, example_input)
    return _in_units(model, hook_split, example_input)


def _in_units(model: nn.Module, split: Split, x: torch.Tensor):
    """``split`` itself at a feature-map layer; at a token layer (``[B, T, D]``), the split read
    as ``D`` units on the patch grid (:class:`~cxrsem.engine.tokens.TokenSplit`)."""
    if len(split.activation_shape) == 3:
        return split
    from cxrsem.engine.tokens import TokenSplit, token_layout

    with torch.no_grad():
        a, _extras = split.head(x[:1])
    layout = token_layout(a, model)
    if layout is None:
        raise UsageError(f"layer {split.layer!r} outputs {tuple(a.shape)}: neither a feature map "
                         f"[B, K, h, w] nor a token sequence [B, T, D] on a square patch grid")
    return TokenSplit(split, layout, int(a.shape[-1]))


def _verify(model: nn.Module, split: Split, x: torch.Tensor) -> None:
    """``tail(head(x))`` must reproduce ``model(x)``: the split computes the same function."""
    with torch.no_grad():
        expected = model(x)
        a, extras = split.head(x)
        n = a.shape[0]
        got = split.tail(a, split.rows(extras, torch.arange(n, device=a.device), n))
    split.activation_shape = tuple(a.shape[1:])
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
        raise UsageError("attribution needs a model whose output is one tensor of logits")
    if got.shape != expected.shape:
        raise UsageError(f"split output shape {tuple(got.shape)} differs from the model's "
                         f"{tuple(expected.shape)}")
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    tol = (1e-4 if expected.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9)
    if _max_gap(got, expected) > tol * max(scale, 1.0):
        raise UsageError(f"split at {split.layer!r} does not reproduce the model output (max gap "
                         f"{_max_gap(got, expected):.3g})")
