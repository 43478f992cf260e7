"""Built-in attribution method ``ig``: exact layer Integrated Gradients with a zero-activation
baseline (paper Sec. 2.3, Eq. 6), registered through the same hook as third-party methods."""

from __future__ import annotations

from typing import Any

from cxrsem.attribution.quadrature import RULES
from cxrsem.components import AttributionMethodInfo, Option
from cxrsem.hookspecs import hookimpl


def _ig(**options: Any):
    from cxrsem.attribution.ig import IntegratedGradients

    return IntegratedGradients.from_options(**options)


@hookimpl
def register_attribution_methods(register):
    register(AttributionMethodInfo(
        name="ig",
        factory=_ig,
        options=(
            # No choices: the rule's own check also accepts riemann_left for riemann-left.
            Option("rule", str, "gausslegendre",
                   f"Quadrature rule of the path integral (--rule): {', '.join(RULES)}."),
            Option("steps", int, 32, "Integration points, at least 2 (--steps)."),
        ),
        description="Integrated Gradients at the layer, zero-activation baseline (Eq. 6).",
        baseline="zero activations",
    ))
