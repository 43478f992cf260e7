"""The module named by the ``cxrsem`` entry point: one hook implementation per component kind.

cxrsem calls each hook once when it builds its registry, passing a ``register`` callback; every
call of ``register`` adds one component under a name users type on the command line.  Keep this
module cheap to import (cxrsem imports every installed plugin on start-up, even for ``--help``):
the heavy work happens inside the factories, when a component is actually created.
"""

from __future__ import annotations

from cxrsem import ArchitectureInfo, ConceptSetInfo, DatasetInfo, LossInfo, Option, hookimpl

from cxrsem_example.csv_folder import create_csv_folder
from cxrsem_example.focal import create_focal_loss
from cxrsem_example.mask_folder import create_mask_folder
from cxrsem_example.resnet import RESNET50_IMAGENET_FILE, build_resnet50, load_resnet50_imagenet


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name="csv-folder",
        factory=create_csv_folder,
        tasks=("multilabel", "binary"),
        needs_root=True,
        options=(
            Option("val_fraction", float, 0.1,
                   "share of images for validation when labels.csv has no 'split' column"),
            Option("test_fraction", float, 0.1,
                   "share of images for testing when labels.csv has no 'split' column"),
        ),
        description="images listed in ROOT/labels.csv (path, one 1/0/blank column per label, "
                    "optional split)",
    ))


@hookimpl
def register_concept_sets(register) -> None:
    register(ConceptSetInfo(
        name="mask-folder",
        factory=create_mask_folder,
        needs_root=True,
        description="ROOT/images/<stem>.png with binary masks ROOT/masks/<concept>/<stem>.png",
    ))


@hookimpl
def register_losses(register) -> None:
    register(LossInfo(
        name="focal",
        factory=create_focal_loss,
        tasks=("multilabel", "binary"),
        options=(
            Option("gamma", float, 2.0, "focusing parameter: down-weights easy labels"),
            Option("alpha", float, 0.25, "weight of positive labels (1 - alpha for negatives); "
                                         "negative = no alpha weighting"),
        ),
        description="sigmoid focal loss (Lin et al. 2017), mean over known labels",
    ))


@hookimpl
def register_architectures(register) -> None:
    register(ArchitectureInfo(
        name="resnet50",
        factory=build_resnet50,
        description="torchvision ResNet-50 (23.5M parameters); dissect layer1..layer4",
        load_imagenet=load_resnet50_imagenet,
        imagenet_filename=RESNET50_IMAGENET_FILE,
    ))
