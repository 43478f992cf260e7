"""The attribution-method contract: what a registered method is called with and what it returns.

A method is registered as an :class:`~cxrsem.components.AttributionMethodInfo`; its
``factory(**options)`` checks the options and returns an :class:`AttributionMethod`, called once
per batch of images as ``method(split, images, *, values, columns, batch_size, progress=None)``:

``split``
    the model cut at the explained layer ``L`` (:class:`cxrsem.engine.split.Split`): ``head(x)``
    gives the activations ``A`` and the extras, ``tail(A', extras)`` the logits;
``images``
    a batch ``[N, C, H, W]`` of model-ready (prepared, normalised) inputs;
``values``, ``columns``
    the explained scalar: image ``n`` explains ``values(logits)[n, columns[n]]``; ``columns`` is a
    tensor ``[N]`` or a function of the logits at ``A`` (``[N, ...] -> [N]``, e.g. the most
    probable class);
``batch_size``
    a bound on the rows of any one forward/backward pass.

It returns a :class:`LayerAttribution`: the per-unit maps ``s`` (``[N, K, h, w]``, required) and,
where the method defines them, ``f(A)`` and ``f(0)`` (``f_input``, ``f_baseline``: then the
completeness gap ``|sum s - (f(A) - f(0))|`` is reported), the ``logits`` at ``A`` and the
``columns`` it explained.  What the method leaves as ``None`` is filled in by the caller from one
plain forward pass (logits, columns) or reported as undefined (completeness).  Units are scored by
the paper's ``sum_i |s_k^i|`` (:func:`unit_scores`), whatever the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from cxrsem.attribution.quadrature import rule_name
from cxrsem.engine.split import Split

__all__ = ["AttributionMethod", "LayerAttribution", "ValuesFn", "complete", "deprecated_rule",
           "unit_scores"]

ValuesFn = Callable[[torch.Tensor], torch.Tensor]
Columns = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[..., None]


def unit_scores(attributions: torch.Tensor) -> torch.Tensor:
    """``sum_i |s_k^i|`` per image and unit (``[N, K, ...] -> [N, K]``): the paper's unit
    contribution (Sec. 2.3), the one definition every attribution method is ranked by."""
    return attributions.abs().flatten(2).sum(-1)


@dataclass
class LayerAttribution:
    """Attributions of a batch of images at one layer.

    ``attributions`` is ``s`` (``[N, K, h, w]``); the rest is optional (``None`` where a method
    does not define it): ``activations`` is ``A``; ``f_input`` and ``f_baseline`` are ``f(A)`` and
    ``f(0)`` (``[N]``), ``logits`` the model output at ``A`` (``[N, outputs]``), ``columns`` the
    explained column of ``values(logits)`` per image; ``path``/``split_reason`` describe the split,
    ``method``/``steps`` the quadrature of integrated gradients.
    """

    attributions: torch.Tensor
    activations: torch.Tensor | None = None
    f_input: torch.Tensor | None = None
    f_baseline: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    columns: torch.Tensor | None = None
    path: str | None = None
    split_reason: str | None = None
    method: str | None = None
    steps: int | None = None

    @property
    def unit_contributions(self) -> torch.Tensor:
        """``sum_i |s_k^i|`` per image and unit (``[N, K]``), see :func:`unit_scores`."""
        return unit_scores(self.attributions)

    @property
    def total(self) -> torch.Tensor:
        """``sum_k sum_i s_k^i`` per image (``[N]``)."""
        return self.attributions.flatten(1).sum(-1)

    @property
    def delta(self) -> torch.Tensor | None:
        """``f(A) - f(0)`` per image: what the attributions should sum to (completeness), or
        ``None`` where the method defines no ``f(A)``, ``f(0)``."""
        if self.f_input is None or self.f_baseline is None:
            return None
        return self.f_input - self.f_baseline


class AttributionMethod(Protocol):
    """What :attr:`AttributionMethodInfo.factory(**options) <cxrsem.components.AttributionMethodInfo>`
    returns (see the module docstring)."""

    def __call__(self, split: Split, images: torch.Tensor, *, values: ValuesFn, columns: Columns,
                 batch_size: int, progress: Progress | None = None) -> LayerAttribution: ...


def complete(result: LayerAttribution, split: Split, images: torch.Tensor, columns: Columns,
             batch_size: int) -> LayerAttribution:
    """``result`` with its logits and columns filled in where the method left them out: the
    logits at ``A`` from one plain pass through ``split``, the columns from ``columns``."""
    if result.logits is None:
        with torch.no_grad():
            parts = []
            for start in range(0, images.shape[0], batch_size):
                acts, extras = split.head(images[start:start + batch_size])
                index = torch.arange(acts.shape[0], device=acts.device)
                parts.append(split.tail(acts, split.rows(extras, index, acts.shape[0])))
        result.logits = torch.cat(parts)
    if result.columns is None:
        if callable(columns):
            with torch.no_grad():
                result.columns = columns(result.logits).long()
        else:
            result.columns = torch.as_tensor(columns).long()
    if result.path is None:
        result.path, result.split_reason = split.path, split.reason
    return result


def deprecated_rule(method: str) -> str | None:
    """The quadrature rule that ``method`` names when it is a rule name (``--method
    gausslegendre``, from before attribution methods were components), else None."""
    return rule_name(method) if isinstance(method, str) else None


def split_method_name(method: str) -> tuple[str, str | None]:
    """``(method, rule)`` for a ``--method`` value: ``(method, None)`` for a method name, and
    ``("ig", RULE)`` for a quadrature rule name (deprecated: ``--method`` named the rule before
    attribution methods were components) unless a registered method has that name."""
    from cxrsem.plugins import get_registry

    rule = deprecated_rule(method)
    if rule is None or method in get_registry().names("attribution_method"):
        return method, None
    return "ig", rule


def deprecation_message(method: str, rule: str) -> str:
    return (f"--method {method} is deprecated; use --rule {rule} (--method now names the "
            f"attribution method, default ig)")
