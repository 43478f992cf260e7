"""cxrsem: semantic interpretation of chest X-ray models.

Python API (the CLI is a thin layer over it)::

    import cxrsem
    cxrsem.list_datasets()                       # names of registered datasets
    ds = cxrsem.create_dataset("phantom", split="train", image_size=128)
    model = cxrsem.create_architecture("densenet-mini", num_outputs=8)

    cxrsem.train(cxrsem.TrainConfig(out="runs/x", loss="mae-scce", arch="densenet-mini"))
    cxrsem.dissect(["runs/x/best.pt"], ["denseblock4"], out="runs/x-dissect")
    cxrsem.attribute(["img.png"], "runs/x/best.pt", "denseblock4", dissection="runs/x-dissect")
    cxrsem.build_report(["runs/x-dissect"], out="report.html")

Plugins implement the hooks in :mod:`cxrsem.hookspecs` with :data:`hookimpl`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from cxrsem import api as _api  # noqa: E402
from cxrsem.api import (  # noqa: E402
    create_architecture,
    create_attribution_method,
    create_concept_set,
    create_dataset,
    create_loss,
)
from cxrsem.components import KINDS as _KINDS  # noqa: E402
from cxrsem.components import Option  # noqa: E402
from cxrsem.errors import CxrsemError  # noqa: E402
from cxrsem.hookspecs import hookimpl  # noqa: E402

# list_datasets, ... and DatasetInfo, ...: one of each per kind of cxrsem.components.KINDS.
for _kind in _KINDS.values():
    globals()[_kind.list_name] = getattr(_api, _kind.list_name)
    globals()[_kind.info_class.__name__] = _kind.info_class
del _kind


def __getattr__(name: str):
    # The pipeline stages import matplotlib and friends: load them when first used.
    lazy = {
        "train": ("cxrsem.training", "train"),
        "TrainConfig": ("cxrsem.training", "TrainConfig"),
        "dissect": ("cxrsem.dissection", "dissect"),
        "DissectSettings": ("cxrsem.dissection", "DissectSettings"),
        "attribute": ("cxrsem.attribution", "attribute"),
        "build_report": ("cxrsem.reporting", "build_report"),
        "compare": ("cxrsem.statistics.compare", "compare"),
        "verify": ("cxrsem.attribution.verify", "verify"),
        "VerifySettings": ("cxrsem.attribution.verify", "VerifySettings"),
        "prepare_images": ("cxrsem.prepare", "prepare_images"),
        "load_model": ("cxrsem.checkpoint", "load_model"),
        "module_checkpoint": ("cxrsem.modules", "module_checkpoint"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cxrsem' has no attribute {name!r}")


__all__ = [
    "__version__",
    "hookimpl",
    "CxrsemError",
    "Option",
    *(kind.info_class.__name__ for kind in _KINDS.values()),
    "load_model",
    "prepare_images",
    *(kind.list_name for kind in _KINDS.values()),
    "create_dataset",
    "create_concept_set",
    "create_loss",
    "create_architecture",
    "create_attribution_method",
    "train",
    "TrainConfig",
    "dissect",
    "module_checkpoint",
    "DissectSettings",
    "attribute",
    "build_report",
    "compare",
    "verify",
    "VerifySettings",
]
