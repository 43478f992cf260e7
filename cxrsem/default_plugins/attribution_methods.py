"""Built-in attribution methods beside ``ig``: ``grad-x-act``, ``activation`` and ``gradcam``
(:mod:`cxrsem.attribution.gradient_methods`), registered through the same hook as third-party
methods."""

from __future__ import annotations

from cxrsem.components import AttributionMethodInfo
from cxrsem.hookspecs import hookimpl


def _grad_x_act():
    from cxrsem.attribution.gradient_methods import GradientTimesActivation

    return GradientTimesActivation.from_options()


def _activation():
    from cxrsem.attribution.gradient_methods import ActivationMap

    return ActivationMap.from_options()


def _gradcam():
    from cxrsem.attribution.gradient_methods import GradCAM

    return GradCAM.from_options()


@hookimpl
def register_attribution_methods(register):
    register(AttributionMethodInfo(
        name="grad-x-act",
        factory=_grad_x_act,
        description="Gradient x activation at the layer, s = A * df/dA at A (one-point IG; "
                    "completeness gap = first-order Taylor remainder).",
        # Completeness is measured against f(0), like ig, but from one point instead of a path.
        baseline="zero activations (one point)",
    ))
    register(AttributionMethodInfo(
        name="activation",
        factory=_activation,
        description="The unit's activation map, s = A (Sec. 3.5's crude activation map; "
                    "independent of the explained output, no completeness).",
        baseline=None,
    ))
    register(AttributionMethodInfo(
        name="gradcam",
        factory=_gradcam,
        description="Grad-CAM per unit, s_k = mean_i(df/dA_k) * A_k (no ReLU-sum over units; "
                    "no completeness).",
        baseline=None,
    ))
