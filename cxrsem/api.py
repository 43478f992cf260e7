"""Listing and creating registered components by name: the library face of the plugin registry."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cxrsem.errors import DataError
from cxrsem.imagecache import resolve_cache_dir
from cxrsem.options import resolve_options
from cxrsem.plugins import get_architecture, get_concept_set, get_dataset, get_loss, get_registry


def list_datasets() -> list[str]:
    return get_registry().names("dataset")


def list_concept_sets() -> list[str]:
    return get_registry().names("concept_set")


def list_losses() -> list[str]:
    return get_registry().names("loss")


def list_architectures() -> list[str]:
    return get_registry().names("architecture")


def list_model_sources() -> list[str]:
    return get_registry().names("model_source")


def data_root_env_var(name: str) -> str:
    return "CXRSEM_DATA_" + name.upper().replace("-", "_")


def resolve_root(name: str, needs_root: bool, data_roots: Mapping[str, str | Path] | None) -> Path | None:
    """Where dataset ``name`` lives: ``data_roots[name]`` (CLI/config), else ``CXRSEM_DATA_<NAME>``."""
    if not needs_root:
        return None
    given = (data_roots or {}).get(name) or os.environ.get(data_root_env_var(name))
    if not given:
        raise DataError(
            f"{name!r} needs its data folder: pass --data-root {name}=PATH, set [data_roots] "
            f"{name} = \"PATH\" in the config, or set {data_root_env_var(name)}"
        )
    root = Path(given).expanduser()
    if not root.is_dir():
        raise DataError(f"data root for {name!r} is not a folder: {root}")
    return root


def use_image_cache(dataset: Any, cache_dir: str | Path | None) -> Any:
    """Let ``dataset`` serve images prepared by ``cxrsem prepare`` when it supports the cache (the
    optional ``use_image_cache`` method of the data contracts); ``cache_dir`` None = the default
    cache, ``"off"`` = none."""
    if hasattr(dataset, "use_image_cache"):
        dataset.use_image_cache(resolve_cache_dir(cache_dir))
    return dataset


def create_dataset(name: str, *, split: str = "train", image_size: int = 224, seed: int = 0,
                   data_roots: Mapping[str, str | Path] | None = None,
                   cache_dir: str | Path | None = None, **options: Any):
    """Build registered dataset ``name`` (see the training-dataset contract in ``components``),
    reading prepared images from ``cache_dir`` (see :mod:`cxrsem.imagecache`) where they exist."""
    info = get_dataset(name)
    resolved = resolve_options(info, "dataset", options)
    root = resolve_root(name, info.needs_root, data_roots)
    dataset = info.factory(split=split, image_size=image_size, root=root, seed=seed, **resolved)
    return use_image_cache(dataset, cache_dir)


def create_concept_set(name: str, *, image_size: int = 224, mask_size: int = 112, seed: int = 0,
                       data_roots: Mapping[str, str | Path] | None = None,
                       cache_dir: str | Path | None = None, **options: Any):
    """Build registered concept set ``name`` (see the concept-set contract in ``components``),
    reading prepared images from ``cache_dir`` where they exist."""
    info = get_concept_set(name)
    resolved = resolve_options(info, "concept set", options)
    root = resolve_root(name, info.needs_root, data_roots)
    concept_set = info.factory(image_size=image_size, mask_size=mask_size, root=root, seed=seed,
                               **resolved)
    return use_image_cache(concept_set, cache_dir)


def create_loss(name: str, *, train_targets: torch.Tensor | None = None, **options: Any):
    info = get_loss(name)
    resolved = resolve_options(info, "loss", options)
    return info.factory(train_targets=train_targets, **resolved)


def create_architecture(name: str, *, num_outputs: int, in_channels: int = 1, **options: Any):
    info = get_architecture(name)
    resolved = resolve_options(info, "architecture", options)
    return info.factory(num_outputs=num_outputs, in_channels=in_channels, **resolved)
