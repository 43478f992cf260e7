"""One-point attribution methods at a layer, beside the paper's Integrated Gradients (Eq. 6).

For an image with activations ``A`` at layer ``L`` (units ``k``, positions ``i``; ``h x w``
positions) and the explained scalar ``f`` of the network after ``L``:

``grad-x-act`` (:class:`GradientTimesActivation`)
    ``s_k^i = a_k^i * df/da_k^i (A)`` -- Integrated Gradients (Eq. 6) with the integral replaced by
    its value at the single point ``alpha = 1``; with the zero baseline it is the first-order
    Taylor term of ``f(A) - f(0)`` around ``A``.  ``f(A)`` and ``f(0)`` are recorded, so the
    completeness gap ``|sum s - (f(A) - f(0))|`` is the Taylor remainder: zero where ``f`` is
    linear along the ray ``alpha * A`` (a linear or positively homogeneous tail), not otherwise.
``activation`` (:class:`ActivationMap`)
    ``s_k^i = a_k^i`` -- the unit's activation map itself, the "crude activation map" the paper
    contrasts IG with (Sec. 3.5: highly activated maps do not necessarily correspond to
    contribution).  No gradient: ``s`` does not depend on the explained output; ``f(A)``, ``f(0)``
    are not defined (completeness is reported as undefined).
``gradcam`` (:class:`GradCAM`)
    Grad-CAM (Selvaraju et al., ICCV 2017) per unit: ``alpha_k = (1/hw) sum_i df/da_k^i (A)``,
    ``s_k^i = alpha_k * a_k^i``, *without* Grad-CAM's ``ReLU(sum_k s_k)`` over channels because
    cxrsem scores units (the usual Grad-CAM heat map is ``ReLU(sum_k s_k)``).  No completeness
    claim: ``f(A)``, ``f(0)`` are not recorded.

Whatever the method, units are scored by ``sum_i |s_k^i|``
(:func:`~cxrsem.attribution.methods.unit_scores`): ``sum_i |a_k^i df/da_k^i|``, ``sum_i |a_k^i|``
and ``|alpha_k| sum_i |a_k^i|``.  Only the tail needs a backward pass: ``A`` comes from one
no-grad pass through the head (:func:`layer_gradients`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cxrsem.attribution.methods import Columns, LayerAttribution, ValuesFn
from cxrsem.engine.split import Split
from cxrsem.errors import UsageError

__all__ = ["ActivationMap", "GradCAM", "GradientTimesActivation", "LayerGradients",
           "layer_gradients"]

Progress = Callable[..., None]


@dataclass
class LayerGradients:
    """``A``, ``df/dA`` at ``A`` (both ``[N, K, h, w]``), ``f(A)`` (``[N]``), ``f(0)`` (``[N]``,
    when asked for), the logits at ``A`` and the explained columns."""

    activations: torch.Tensor
    gradients: torch.Tensor
    f_input: torch.Tensor
    f_baseline: torch.Tensor | None
    logits: torch.Tensor
    columns: torch.Tensor


def _check_batch(images: torch.Tensor, batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if images.dim() < 2 or images.shape[0] == 0:
        raise UsageError(f"expected a batch of images [N, C, H, W], got {tuple(images.shape)}")


def _columns(columns: Columns, logits: torch.Tensor, start: int) -> torch.Tensor:
    """The explained column of each of the ``n`` images from ``start``: ``columns`` as given, or
    its value on the logits at ``A``."""
    if callable(columns):
        with torch.no_grad():
            return columns(logits.detach()).to(logits.device).long()
    return torch.as_tensor(columns, device=logits.device).long()[start:start + logits.shape[0]]


def _explained(values: ValuesFn, logits: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return values(logits).gather(1, cols.view(-1, 1)).squeeze(1)


def layer_gradients(split: Split, images: torch.Tensor, *, values: ValuesFn, columns: Columns,
                    batch_size: int, with_zero: bool = False, progress: Progress | None = None,
                    event: str = "gradient_batch") -> LayerGradients:
    """``df/dA`` evaluated at ``A`` for every image, ``f`` the explained scalar
    ``values(logits)[n, columns[n]]`` (``columns`` a tensor or a function of the logits at ``A``).

    ``A`` comes from a no-grad pass through ``split.head``; only ``split.tail`` is differentiated,
    at most ``batch_size`` images per pass.  Rows are independent (eval mode), so the gradient of
    the summed outputs is every image's own gradient.  ``with_zero`` adds ``f(0)`` (one no-grad
    tail pass at zero activations).
    """
    _check_batch(images, batch_size)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("a", "g", "fa", "f0", "logits", "col")}
    total = images.shape[0]
    for start in range(0, total, batch_size):
        with torch.no_grad():
            acts, extras = split.head(images[start:start + batch_size])
        n = acts.shape[0]
        index = torch.arange(n, device=acts.device)
        x = acts.detach().requires_grad_(True)
        with torch.enable_grad():
            # A clone: a tail that starts with an in-place op (relu_) must not hit the leaf.
            logits = split.tail(x.clone(), split.rows(extras, index, n))
            cols = _columns(columns, logits, start)
            f = _explained(values, logits, cols)
            (grad,) = torch.autograd.grad(f.sum(), x, allow_unused=True)
        if grad is None:  # f does not depend on L at all (e.g. a zero classifier row)
            grad = torch.zeros_like(x)
        if with_zero:
            with torch.no_grad():
                zero = split.tail(torch.zeros_like(acts), split.rows(extras, index, n))
                parts["f0"].append(_explained(values, zero, cols))
        parts["a"].append(acts.detach())
        parts["g"].append(grad.detach())
        parts["fa"].append(f.detach())
        parts["logits"].append(logits.detach())
        parts["col"].append(cols)
        if progress is not None:
            progress(event, done=start + n, total=total)
    return LayerGradients(
        activations=torch.cat(parts["a"]), gradients=torch.cat(parts["g"]),
        f_input=torch.cat(parts["fa"]), f_baseline=torch.cat(parts["f0"]) if with_zero else None,
        logits=torch.cat(parts["logits"]), columns=torch.cat(parts["col"]))


class _WithoutOptions:
    """What the three one-point methods share: they take no options."""

    @classmethod
    def from_options(cls):
        return cls()

    @property
    def options(self) -> dict[str, object]:
        return {}


@dataclass(frozen=True)
class GradientTimesActivation(_WithoutOptions):
    """The registered method ``grad-x-act``: ``s_k^i = a_k^i * df/da_k^i`` at ``A`` (Eq. 6 at the
    one point ``alpha = 1``; with the zero baseline, the first-order Taylor term of
    ``f(A) - f(0)``).  Records ``f(A)`` and ``f(0)``: the completeness gap is the Taylor
    remainder (zero for a tail linear along ``alpha * A``)."""

    def __call__(self, split: Split, images: torch.Tensor, *, values: ValuesFn, columns: Columns,
                 batch_size: int = 64, progress: Progress | None = None) -> LayerAttribution:
        g = layer_gradients(split, images, values=values, columns=columns, batch_size=batch_size,
                            with_zero=True, progress=progress, event="grad_x_act_batch")
        return LayerAttribution(
            attributions=g.activations * g.gradients, activations=g.activations,
            f_input=g.f_input, f_baseline=g.f_baseline, logits=g.logits, columns=g.columns,
            path=split.path, split_reason=split.reason)


@dataclass(frozen=True)
class GradCAM(_WithoutOptions):
    """The registered method ``gradcam``: Grad-CAM (Selvaraju et al. 2017) per unit,
    ``alpha_k = (1/hw) sum_i df/da_k^i`` at ``A`` and ``s_k^i = alpha_k * a_k^i`` -- without the
    ``ReLU(sum_k s_k)`` that makes Grad-CAM's heat map, since cxrsem scores units.  The unit score
    is ``|alpha_k| sum_i |a_k^i|``.  No completeness claim: ``f(A)``, ``f(0)`` stay ``None``."""

    def __call__(self, split: Split, images: torch.Tensor, *, values: ValuesFn, columns: Columns,
                 batch_size: int = 64, progress: Progress | None = None) -> LayerAttribution:
        g = layer_gradients(split, images, values=values, columns=columns, batch_size=batch_size,
                            progress=progress, event="gradcam_batch")
        spatial = tuple(range(2, g.gradients.dim()))
        weights = g.gradients.mean(dim=spatial, keepdim=True) if spatial else g.gradients
        return LayerAttribution(
            attributions=weights * g.activations, activations=g.activations, logits=g.logits,
            columns=g.columns, path=split.path, split_reason=split.reason)


@dataclass(frozen=True)
class ActivationMap(_WithoutOptions):
    """The registered method ``activation``: ``s_k^i = a_k^i``, the unit's own activation map (the
    paper's "crude activation map", Sec. 3.5), scored ``sum_i |a_k^i|``.  No gradient: ``s`` does
    not depend on the explained output (``values`` is unused; the logits and columns are recorded
    only to report the prediction).  ``f(A)``, ``f(0)`` stay ``None``: completeness is undefined."""

    def __call__(self, split: Split, images: torch.Tensor, *, values: ValuesFn, columns: Columns,
                 batch_size: int = 64, progress: Progress | None = None) -> LayerAttribution:
        _check_batch(images, batch_size)
        parts: dict[str, list[torch.Tensor]] = {"a": [], "logits": [], "col": []}
        total = images.shape[0]
        with torch.no_grad():
            for start in range(0, total, batch_size):
                acts, extras = split.head(images[start:start + batch_size])
                n = acts.shape[0]
                index = torch.arange(n, device=acts.device)
                # The tail may act in place: it gets a copy, A stays the activations.
                logits = split.tail(acts.clone(), split.rows(extras, index, n))
                parts["a"].append(acts)
                parts["logits"].append(logits)
                parts["col"].append(_columns(columns, logits, start))
                if progress is not None:
                    progress("activation_batch", done=start + n, total=total)
        acts = torch.cat(parts["a"])
        return LayerAttribution(
            attributions=acts, activations=acts, logits=torch.cat(parts["logits"]),
            columns=torch.cat(parts["col"]), path=split.path, split_reason=split.reason)
