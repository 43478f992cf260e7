"""The module named by the ``cxrsem`` entry point ``xrv``.

Cheap to import on purpose (cxrsem imports every installed plugin on start-up): torchxrayvision
itself is imported only when an xrv architecture, model, dataset or concept set is actually built.
"""

from __future__ import annotations

from cxrsem import ArchitectureInfo, hookimpl
from cxrsem.components import ModelSourceInfo

from cxrsem_xrv.datasets import CONCEPT_SETS, DATASETS
from cxrsem_xrv.models import build_densenet121, build_resnet50
from cxrsem_xrv.source import CACHE_ENV, SPECS, xrv_checkpoint


@hookimpl
def register_architectures(register) -> None:
    register(ArchitectureInfo(
        name="xrv-densenet121",
        factory=build_densenet121,
        description="TorchXRayVision's DenseNet-121 (xrv.models.DenseNet), logits out; layers "
                    "features.denseblock1..4, features.norm5",
        default_layer="features.denseblock4",
    ))
    register(ArchitectureInfo(
        name="xrv-resnet50",
        factory=build_resnet50,
        description="the torchvision ResNet-50 with a one-channel stem inside xrv.models.ResNet, "
                    "logits out; layers layer1..4",
        default_layer="layer4",
    ))


@hookimpl
def register_model_sources(register) -> None:
    register(ModelSourceInfo(
        name="xrv",
        factory=xrv_checkpoint,
        specs=tuple(SPECS),
        description=f"TorchXRayVision's pretrained models, read from the local xrv cache "
                    f"(${CACHE_ENV} or ~/.torchxrayvision/models_data); never downloaded",
    ))


@hookimpl
def register_datasets(register) -> None:
    # One registration per xrv class rather than one parametrised "xrv" dataset: cxrsem resolves
    # --dataset NAME in its registry (no NAME:SPEC form for datasets), and each class has its own
    # files and options, which a registration declares and cxrsem checks before anything is read.
    for info in DATASETS:
        register(info)


@hookimpl
def register_concept_sets(register) -> None:
    for info in CONCEPT_SETS:
        register(info)
