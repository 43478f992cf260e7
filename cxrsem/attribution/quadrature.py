"""Quadrature rules for the path integral of Integrated Gradients (paper Eq. 6).

``Quadrature.of(rule, steps)`` -- the one place a rule and a step count are checked -- holds the
points ``alpha_j`` in ``[0, 1]`` and weights ``w_j``
with ``int_0^1 g(alpha) d alpha ~= sum_j w_j g(alpha_j)``.  The rules are defined exactly as
Captum's ``captum.attr._utils.approximation_methods`` (same floating-point values), so that the
agreement test against ``captum.attr.IntegratedGradients`` is exact up to summation order:

- ``gausslegendre``: numpy's ``leggauss(n)`` mapped from ``[-1, 1]`` to ``[0, 1]`` (exact for
  polynomials of degree ``2n - 1``; the default, as in Captum);
- ``riemann-left`` / ``riemann-right`` / ``riemann-middle``: ``n`` points spaced ``1/n``, weight
  ``1/n`` each;
- ``riemann-trapezoid``: ``n`` points from 0 to 1 inclusive, weight ``1/n`` with the two end
  weights halved (Captum's definition; their sum is ``1 - 1/n``, not 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrsem.errors import UsageError

RULES = ("gausslegendre", "riemann-trapezoid", "riemann-left", "riemann-right", "riemann-middle")
METHODS = RULES  # the name before attribution methods were components (``--method`` was the rule)


def rule_name(rule: str) -> str | None:
    """The canonical rule name of ``rule`` (``riemann_left`` -> ``riemann-left``), None if unknown."""
    name = str(rule).strip().lower().replace("_", "-")
    return name if name in RULES else None


def check_method(method: str) -> str:
    """The canonical rule name (``riemann_left`` is accepted for ``riemann-left``)."""
    name = rule_name(method)
    if name is None:
        raise UsageError(f"unknown integration method {method!r}; use one of {', '.join(RULES)}")
    return name


def check_steps(steps: int) -> int:
    if int(steps) != steps or int(steps) < 2:
        raise UsageError(f"--steps must be an integer of at least 2, got {steps}")
    return int(steps)


def captum_method(method: str) -> str:
    """The name Captum uses for ``method`` (``riemann-left`` -> ``riemann_left``)."""
    return check_method(method).replace("-", "_")


@dataclass(frozen=True)
class Quadrature:
    """A checked rule: ``rule`` (canonical name), ``steps``, and its ``alphas`` and ``weights``."""

    rule: str
    steps: int
    alphas: tuple[float, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, rule: str, steps: int) -> Quadrature:
        rule, steps = check_method(rule), check_steps(steps)
        alphas, weights = _nodes_weights(rule, steps)
        return cls(rule, steps, tuple(alphas), tuple(weights))


def nodes_weights(method: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of the rule, as Python floats (see the module docstring)."""
    q = Quadrature.of(method, steps)
    return list(q.alphas), list(q.weights)


def _nodes_weights(method: str, n: int) -> tuple[list[float], list[float]]:
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + x)).tolist(), (0.5 * w).tolist()
    weights = [1 / n] * n
    kind = method.split("-", 1)[1]
    if kind == "trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = torch.linspace(0, 1, n)
    elif kind == "left":
        alphas = torch.linspace(0, 1 - 1 / n, n)
    elif kind == "middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    else:
        alphas = torch.linspace(1 / n, 1, n)
    # torch.linspace in float32, as Captum does: the same points to the last bit.
    return alphas.tolist(), weights
