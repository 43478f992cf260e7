"""Semantic attribution (paper Sec. 2.3, 3.5): which units -- and so which concepts -- drive one
prediction.  Attribution methods are registered components (``register_attribution_methods``);
the built-in ``ig`` is Integrated Gradients at a layer with a zero-activation baseline (Eq. 6),
computed once per image on a split model (:mod:`cxrsem.engine.split`).

Submodules are imported on first use, so that registering the built-in method (which needs only
:mod:`cxrsem.attribution.quadrature`) does not load the whole pipeline.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "SCHEMA": "cxrsem.formats.attribution",
    "AttributionResult": "cxrsem.attribution.api",
    "AttributionRun": "cxrsem.attribution.api",
    "ShardedAttributionRun": "cxrsem.attribution.sharding",
    "attribute": "cxrsem.attribution.api",
    "Dissection": "cxrsem.formats.dissection",
    "UnitLabel": "cxrsem.formats.dissection",
    "load_dissection": "cxrsem.formats.dissection",
    "LayerAttribution": "cxrsem.attribution.methods",
    "unit_scores": "cxrsem.attribution.methods",
    "IntegratedGradients": "cxrsem.attribution.ig",
    "integrated_gradients": "cxrsem.attribution.ig",
    "layer_integrated_gradients": "cxrsem.attribution.ig",
    "LayerIntegratedGradients": "cxrsem.attribution.ig",
    "METHODS": "cxrsem.attribution.quadrature",
    "RULES": "cxrsem.attribution.quadrature",
    "nodes_weights": "cxrsem.attribution.quadrature",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrsem.attribution' has no attribute {name!r}")
