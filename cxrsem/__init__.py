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

from cxrsem.api import (  # noqa: E402
    create_architecture,
    create_concept_set,
    create_dataset,
    create_loss,
    list_architectures,
    list_concept_sets,
    list_datasets,
    list_losses,
    list_model_sources,
)
from cxrsem.components import (  # noqa: E402
    ArchitectureInfo,
    ConceptSetInfo,
    DatasetInfo,
    LossInfo,
    ModelSourceInfo,
    Option,
)
from cxrsem.errors import CxrsemError  # noqa: E402
from cxrsem.hookspecs import hookimpl  # noqa: E402


def __getattr__(name: str):
    # The pipeline stages import matplotlib and friends: load them when first used.
    lazy = {
        "train": ("cxrsem.training", "train"),
        "TrainConfig": ("cxrsem.training", "TrainConfig"),
        "dissect": ("cxrsem.dissection", "dissect"),
        "DissectSettings": ("cxrsem.dissection", "DissectSettings"),
        "attribute": ("cxrsem.attribution", "attribute"),
        "build_report": ("cxrsem.reporting", "build_report"),
        "prepare_images": ("cxrsem.prepare", "prepare_images"),
        "load_model": ("cxrsem.checkpoint", "load_model"),
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
    "DatasetInfo",
    "ConceptSetInfo",
    "LossInfo",
    "ArchitectureInfo",
    "ModelSourceInfo",
    "load_model",
    "prepare_images",
    "list_model_sources",
    "list_datasets",
    "list_concept_sets",
    "list_losses",
    "list_architectures",
    "create_dataset",
    "create_concept_set",
    "create_loss",
    "create_architecture",
    "train",
    "TrainConfig",
    "dissect",
    "DissectSettings",
    "attribute",
    "build_report",
]
