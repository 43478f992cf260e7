"""The built-in phantom: procedurally generated chest radiographs with exact concept masks.

Registers the ``phantom`` training dataset (all four task kinds) and two concept sets for Network
Dissection: ``phantom`` (13 segmentation masks) and ``phantom-bbox`` (boxes around the 8
pathologies).  Nothing is downloaded: images are rendered on the fly from ``(seed, split, index)``.
See ``docs/phantom.md`` for the anatomy, the concepts and the label rules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrsem.components import TASK_KINDS, ConceptSetInfo, DatasetInfo, Option
from cxrsem.default_plugins.phantom.concepts import (
    CONCEPTS,
    CONFIGURABLE,
    DEFAULT_PREVALENCE,
    PATHOLOGIES,
    parse_prevalence,
)
from cxrsem.default_plugins.phantom.datasets import SPLITS, PhantomConceptSet, PhantomDataset
from cxrsem.default_plugins.phantom.generator import PhantomBatch, generate
from cxrsem.hookspecs import hookimpl

__all__ = [
    "CONCEPTS",
    "PATHOLOGIES",
    "DEFAULT_PREVALENCE",
    "PhantomBatch",
    "PhantomConceptSet",
    "PhantomDataset",
    "create_bbox_concept_set",
    "create_concept_set",
    "create_dataset",
    "generate",
    "parse_prevalence",
    "register_concept_sets",
    "register_datasets",
]

_PREVALENCE = Option(
    "prevalence", str, "",
    "comma-separated NAME=P overrides of the per-image prevalences, e.g. "
    "'Pneumothorax=0.03,Consolidation=0.4'; names: " + ", ".join(CONFIGURABLE),
)


def create_dataset(*, split: str, image_size: int, root: Path | None = None, seed: int = 0,
                   n_train: int = 1000, n_val: int = 200, n_test: int = 200,
                   prevalence: str = "") -> PhantomDataset:
    """Factory of the ``phantom`` dataset (``root`` is unused: nothing is read from disk)."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    return PhantomDataset(split=split, image_size=image_size, seed=seed, n=sizes.get(split, 0),
                          prevalence=prevalence)


def _concept_set_factory(boxes: bool) -> Callable[..., PhantomConceptSet]:
    def create(*, image_size: int, mask_size: int, root: Path | None = None, seed: int = 0,
               n_images: int = 400, split: str = "test", prevalence: str = "") -> PhantomConceptSet:
        return PhantomConceptSet(image_size=image_size, mask_size=mask_size, seed=seed,
                                 n_images=n_images, split=split, prevalence=prevalence,
                                 boxes=boxes)

    name = "create_bbox_concept_set" if boxes else "create_concept_set"
    create.__name__ = create.__qualname__ = name
    return create


create_concept_set = _concept_set_factory(boxes=False)
create_bbox_concept_set = _concept_set_factory(boxes=True)


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name="phantom",
        factory=create_dataset,
        tasks=TASK_KINDS,
        options=(
            Option("n_train", int, 1000, "number of training images"),
            Option("n_val", int, 200, "number of validation images"),
            Option("n_test", int, 200, "number of test images"),
            _PREVALENCE,
        ),
        description="built-in procedural chest X-ray phantom with exact labels for all four "
                    "tasks (8 findings, BrixIA-style zone scores, global score, healthy/unhealthy)",
    ))


@hookimpl
def register_concept_sets(register) -> None:
    shared = (
        Option("n_images", int, 400, "number of annotated images"),
        Option("split", str, "test", "which phantom split the images come from", choices=SPLITS),
        _PREVALENCE,
    )
    register(ConceptSetInfo(
        name="phantom",
        factory=create_concept_set,
        options=shared,
        description="phantom chest X-rays with exact segmentation masks of 13 concepts "
                    "(lungs, cardiomediastinum, 8 findings, 2 devices), like Covid-CXR",
    ))
    register(ConceptSetInfo(
        name="phantom-bbox",
        factory=create_bbox_concept_set,
        options=shared,
        annotation="boxes",
        description="phantom chest X-rays with one bounding box per lesion for the 8 "
                    "pathologies, like NIH ChestX-ray8",
    ))
