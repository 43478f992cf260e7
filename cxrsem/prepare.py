"""``cxrsem prepare``: store a registered dataset's (or concept set's) images resized, once.

The component is built through the registry exactly as ``train``/``dissect`` build it, and each of
its images goes through the component's own decoder; :mod:`cxrsem.imagecache` writes and serves
the result.  A name registered as a dataset contributes the images of all three splits; a concept
set of the same name adds its images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrsem.api import create_concept_set, create_dataset
from cxrsem.errors import DataError, UsageError
from cxrsem.imagecache import ImageSources, PrepareResult, prepare
from cxrsem.plugins import get_registry, unknown_name_message

SPLITS = ("train", "val", "test")


def _sources(component: Any, name: str) -> ImageSources:
    if not hasattr(component, "image_sources"):
        raise UsageError(f"{name} does not read image files (it has no image_sources()), so there is "
                         "nothing to prepare")
    return component.image_sources()


def collect_sources(name: str, *, size: int, seed: int = 0,
                    data_roots: Mapping[str, str | Path] | None = None,
                    dataset_options: Mapping[str, Any] | None = None,
                    concept_options: Mapping[str, Any] | None = None) -> list[ImageSources]:
    """The image sources of dataset and/or concept set ``name`` at ``size`` (no cache applied)."""
    registry = get_registry()
    is_dataset = name in registry.components["dataset"]
    is_concept_set = name in registry.components["concept_set"]
    if not (is_dataset or is_concept_set):
        names = registry.names("dataset") + registry.names("concept_set")
        raise UsageError(unknown_name_message("dataset or concept set", name, set(names)))
    sources: list[ImageSources] = []
    if is_dataset:
        failures = []
        for split in SPLITS:
            try:
                ds = create_dataset(name, split=split, image_size=size, seed=seed, data_roots=data_roots,
                                    cache_dir="off", **dict(dataset_options or {}))
            except DataError as exc:  # e.g. a dataset without a test split
                failures.append(exc)
                continue
            sources.append(_sources(ds, f"dataset {name!r}"))
        if len(failures) == len(SPLITS):
            raise failures[0]
    if is_concept_set:
        concept_set = create_concept_set(name, image_size=size, mask_size=1, seed=seed,
                                         data_roots=data_roots, cache_dir="off",
                                         **dict(concept_options or {}))
        sources.append(_sources(concept_set, f"concept set {name!r}"))
    return sources


def prepare_images(name: str, *, sizes: Sequence[int] = (224,), seed: int = 0,
                   data_roots: Mapping[str, str | Path] | None = None,
                   dataset_options: Mapping[str, Any] | None = None,
                   concept_options: Mapping[str, Any] | None = None,
                   cache_dir: str | Path | None = None, workers: int = 0, force: bool = False,
                   progress: Callable[..., None] | None = None) -> list[PrepareResult]:
    """Prepare ``name``'s images at each of ``sizes`` (see :mod:`cxrsem.imagecache`); a store that
    is already current is left alone unless ``force``."""
    if not sizes:
        raise UsageError("give at least one --size")
    if any(int(s) < 1 for s in sizes):
        raise UsageError(f"--size must be positive, got {', '.join(map(str, sizes))}")
    if int(workers) < 0:
        raise UsageError("--workers must be 0 or more")
    results = []
    for size in dict.fromkeys(int(s) for s in sizes):
        sources = collect_sources(name, size=size, seed=seed, data_roots=data_roots,
                                  dataset_options=dataset_options, concept_options=concept_options)
        results.append(prepare(sources, name=name, cache_dir=cache_dir, workers=workers, force=force,
                               progress=progress))
    return results
