"""Listing and creating registered components by name: the library face of the plugin registry."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cxrsem.components import KINDS, _Component
from cxrsem.errors import DataError
from cxrsem.imagecache import resolve_cache_dir
from cxrsem.options import resolve_options
from cxrsem.plugins import get, get_registry


def list_components(kind: str) -> list[str]:
    """Names of the registered components of ``kind`` (a key of :data:`cxrsem.components.KINDS`)."""
    return get_registry().names(kind)


def _lister(kind: str):
    def lister() -> list[str]:
        return list_components(kind)

    lister.__name__ = lister.__qualname__ = KINDS[kind].list_name
    lister.__doc__ = f"Names of the registered {KINDS[kind].plural}."
    return lister


# list_datasets, list_concept_sets, ...: one per kind of cxrsem.components.KINDS.
for _kind in KINDS.values():
    globals()[_kind.list_name] = _lister(_kind.key)
del _kind

LIST_FUNCTIONS = tuple(kind.list_name for kind in KINDS.values())


def resolve_component(kind: str, name: str, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(info, options)``: registered component ``name`` of ``kind`` and ``options`` checked and
    completed with its defaults -- the one place component options are resolved, so callers that
    record the options (training, attribution) and the ``create_*`` functions agree."""
    info = get(kind, name)
    return info, resolve_options(info, KINDS[kind].label, options)


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


def build_dataset(info: _Component, options: Mapping[str, Any], *, split: str = "train",
                  image_size: int = 224, seed: int = 0,
                  data_roots: Mapping[str, str | Path] | None = None,
                  cache_dir: str | Path | None = None):
    """Dataset ``info`` with already resolved ``options`` (see :func:`resolve_component`)."""
    root = resolve_root(info.name, info.needs_root, data_roots)
    dataset = info.factory(split=split, image_size=image_size, root=root, seed=seed, **options)
    return use_image_cache(dataset, cache_dir)


def create_dataset(name: str, *, split: str = "train", image_size: int = 224, seed: int = 0,
                   data_roots: Mapping[str, str | Path] | None = None,
                   cache_dir: str | Path | None = None, **options: Any):
    """Build registered dataset ``name`` (see the training-dataset contract in ``components``),
    reading prepared images from ``cache_dir`` (see :mod:`cxrsem.imagecache`) where they exist."""
    info, resolved = resolve_component("dataset", name, options)
    return build_dataset(info, resolved, split=split, image_size=image_size, seed=seed,
                         data_roots=data_roots, cache_dir=cache_dir)


def create_concept_set(name: str, *, image_size: int = 224, mask_size: int = 112, seed: int = 0,
                       data_roots: Mapping[str, str | Path] | None = None,
                       cache_dir: str | Path | None = None, **options: Any):
    """Build registered concept set ``name`` (see the concept-set contract in ``components``),
    reading prepared images from ``cache_dir`` where they exist."""
    info, resolved = resolve_component("concept_set", name, options)
    root = resolve_root(name, info.needs_root, data_roots)
    concept_set = info.factory(image_size=image_size, mask_size=mask_size, root=root, seed=seed,
                               **resolved)
    return use_image_cache(concept_set, cache_dir)


def build_loss(info: _Component, options: Mapping[str, Any], *,
               train_targets: torch.Tensor | None = None):
    """Loss ``info`` with already resolved ``options`` (see :func:`resolve_component`)."""
    return info.factory(train_targets=train_targets, **options)


def create_loss(name: str, *, train_targets: torch.Tensor | None = None, **options: Any):
    info, resolved = resolve_component("loss", name, options)
    return build_loss(info, resolved, train_targets=train_targets)


def build_architecture(info: _Component, options: Mapping[str, Any], *, num_outputs: int,
                       in_channels: int = 1):
    """Architecture ``info`` with already resolved ``options`` (see :func:`resolve_component`)."""
    return info.factory(num_outputs=num_outputs, in_channels=in_channels, **options)


def create_architecture(name: str, *, num_outputs: int, in_channels: int = 1, **options: Any):
    info, resolved = resolve_component("architecture", name, options)
    return build_architecture(info, resolved, num_outputs=num_outputs, in_channels=in_channels)


def create_attribution_method(name: str, **options: Any):
    """Attribution method ``name`` built with ``options``: a callable
    ``method(split, images, *, values, columns, batch_size, progress=None) -> LayerAttribution``
    (see :class:`~cxrsem.components.AttributionMethodInfo`)."""
    info, resolved = resolve_component("attribution_method", name, options)
    return info.factory(**resolved)
