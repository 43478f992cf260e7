"""Semantic attribution (paper Sec. 2.3, 3.5): which units -- and so which concepts -- drive one
prediction.  Integrated Gradients at a layer with a zero-activation baseline (Eq. 6), computed
once per image on a split model (:mod:`cxrsem.engine.split`)."""

from cxrsem.attribution.api import SCHEMA, AttributionResult, AttributionRun, attribute
from cxrsem.attribution.dissection import Dissection, UnitLabel, load_dissection
from cxrsem.attribution.ig import LayerAttribution, integrated_gradients, layer_integrated_gradients
from cxrsem.attribution.quadrature import METHODS, nodes_weights

__all__ = [
    "SCHEMA",
    "METHODS",
    "AttributionResult",
    "AttributionRun",
    "Dissection",
    "LayerAttribution",
    "UnitLabel",
    "attribute",
    "integrated_gradients",
    "layer_integrated_gradients",
    "load_dissection",
    "nodes_weights",
]
