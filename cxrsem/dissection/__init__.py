"""Network Dissection (paper Sec. 2.2): which units of a layer detect which concepts."""

from cxrsem.dissection.run import (
    DissectSettings,
    LayerDissection,
    ModelDissection,
    dissect,
    null_settings,
)

__all__ = ["DissectSettings", "LayerDissection", "ModelDissection", "dissect", "null_settings"]
