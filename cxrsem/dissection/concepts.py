"""Several concept sets dissected together, as one stream of (image, concept masks).

The paper annotates units with NIH boxes and COVID segmentations at once.  Each set annotates only
its own concepts, so an image of set A carries empty channels for set B's concepts (and therefore
does not enter B's sums in Eq. 5).  A concept name present in two sets keeps one name per set
(``nih-bbox/Consolidation``) unless the user maps them together.

Each set's annotation kind (:attr:`cxrsem.components.ConceptSetInfo.annotation`) is kept, so
the channels that hold bounding boxes are known (:meth:`ConceptSource.box_concepts`).

Images are grouped by patient for resampling (:meth:`ConceptSource.groups`): a set that knows its
patients says so through the optional ``groups()`` of the concept-set contract; group names are
prefixed with the set's name, so patients of two sets never merge.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrsem.api import create_concept_set
from cxrsem.errors import DataError, UsageError
from cxrsem.plugins import get, unknown_name_message


@dataclass
class ConceptSource:
    """The concatenation of concept sets, with one global list of concept channels."""

    sets: list[tuple[str, Any]]
    concepts: list[str]
    channel_maps: list[list[int]]  # for each set: global channel of each of its concepts
    image_size: int
    mask_size: int
    limit: int = 0
    seed: int = 0
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per set, as given
    # per set: its ConceptSetInfo.annotation ("masks" | "boxes"); empty: every set has masks
    annotations: list[str] = field(default_factory=list)

    def box_concepts(self) -> list[bool]:
        """One flag per global concept channel: True when the channel holds bounding boxes.

        A channel that several sets feed (``--map-concept`` merges names) counts as boxes only when
        *all* of them are box sets: its images then mix boxes and outlines, and the box-fit
        figures (:mod:`cxrsem.statistics.boxes`) would present an outline's IoU as box-limited."""
        kinds = self.annotations or ["masks"] * len(self.sets)
        boxes = [True] * len(self.concepts)
        for kind, channels in zip(kinds, self.channel_maps, strict=True):
            for channel in channels:
                boxes[channel] = boxes[channel] and kind == "boxes"
        return boxes

    def prepared_images(self) -> dict[str, Any]:
        """Per set, which prepared image stores serve it (part of the activation cache's key: a
        prepared image differs from the decoded one by storage rounding)."""
        return {name: getattr(ds, "image_cache_state", None) for name, ds in self.sets}

    def __len__(self) -> int:
        total = sum(len(ds) for _, ds in self.sets)
        return min(total, self.limit) if self.limit else total

    def locate(self, index: int) -> tuple[int, int]:
        for set_index, (_, ds) in enumerate(self.sets):
            if index < len(ds):
                return set_index, index
            index -= len(ds)
        raise IndexError(index)

    def set_names(self) -> list[str]:
        return [name for name, _ in self.sets]

    def groups(self) -> tuple[np.ndarray, list[str]]:
        """The patient of every image, in stream order (the first ``len(self)``): int64 ``[N]``
        group indices and one name per group, ``"<set>/<patient>"``.  A set without ``groups()``
        makes each of its images its own group (``"<set>/#<item>"``)."""
        names: list[str] = []
        index: dict[str, int] = {}
        rows: list[int] = []
        remaining = len(self)
        for set_name, ds in self.sets:
            take = min(len(ds), remaining)
            if take <= 0:
                break
            remaining -= take
            patients = _set_groups(set_name, ds)
            for item in range(take):
                name = (f"{set_name}/{patients[item]}" if patients is not None
                        else f"{set_name}/#{item}")
                if name not in index:
                    index[name] = len(names)
                    names.append(name)
                rows.append(index[name])
        return np.asarray(rows, dtype=np.int64), names

    def concepts_of(self) -> dict[str, list[str]]:
        return {name: list(ds.concepts) for name, ds in self.sets}

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Images ``[B, 1, S, S]`` and masks ``[B, C, M, M]`` over all concept channels."""
        groups: dict[int, list[tuple[int, int]]] = {}
        for position, index in enumerate(indices):
            set_index, local = self.locate(index)
            groups.setdefault(set_index, []).append((position, local))
        images = torch.zeros(len(indices), 1, self.image_size, self.image_size)
        masks = torch.zeros(len(indices), len(self.concepts), self.mask_size, self.mask_size,
                            dtype=torch.bool)
        for set_index, members in groups.items():
            name, ds = self.sets[set_index]
            positions = [p for p, _ in members]
            local = [i for _, i in members]
            if hasattr(ds, "batch"):
                set_images, set_masks = _from_batch(ds.batch(local))
            else:
                items = [ds[i] for i in local]
                set_images = torch.stack([item["image"] for item in items])
                set_masks = torch.stack([item["masks"] for item in items])
            set_masks = self._conform(name, set_masks.bool())
            images[positions] = set_images.float()
            channels = torch.tensor(self.channel_maps[set_index])
            masks[torch.tensor(positions)[:, None], channels[None, :]] = set_masks
        return {"image": images, "masks": masks}

    def _conform(self, name: str, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[-2:] == (self.mask_size, self.mask_size):
            return masks
        warnings.warn(f"concept set {name!r} gave {tuple(masks.shape[-2:])} masks for seg size "
                      f"{self.mask_size}; resized with nearest neighbour", stacklevel=2)
        return F.interpolate(masks.float(), size=(self.mask_size, self.mask_size),
                             mode="nearest").bool()


def _set_groups(set_name: str, ds: Any) -> list[str] | None:
    """``ds.groups()`` (one patient id per item) when the set has it, checked; else None."""
    method = getattr(ds, "groups", None)
    if method is None:
        return None
    groups = method() if callable(method) else method
    if groups is None:
        return None
    groups = list(groups)
    if len(groups) != len(ds) or not all(isinstance(g, str) and g for g in groups):
        raise DataError(f"concept set {set_name!r}: groups() must give one non-empty string per "
                        f"item ({len(ds)}), got {len(groups)} values")
    return groups


def _from_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], batch["masks"]
    images, masks = batch
    return images, masks


def build_concept_source(names: Sequence[Any], *, image_size: int, mask_size: int, seed: int,
                         options: Mapping[str, Mapping[str, Any]] | None = None,
                         data_roots: Mapping[str, str] | None = None,
                         concept_map: Mapping[str, str] | None = None,
                         limit: int = 0, cache_dir: str | None = None,
                         concept_names: Sequence[str] | None = None) -> ConceptSource:
    """Create every named concept set and lay their concepts out as channels.

    ``names`` may also hold the user's own concept data (a concept-set object or a dataset of
    ``(image, masks)`` with ``concept_names``: :mod:`cxrsem.dissection.custom_concepts`).
    ``concept_map`` maps qualified names (``nih-bbox/Consolidation``) to a shared channel name.
    """
    from cxrsem.dissection.custom_concepts import as_concept_set

    options = dict(options or {})
    registered = [n for n in names if isinstance(n, str)]
    unknown = set(options) - set(registered)
    if unknown:
        raise DataError(f"options given for concept sets not being dissected: {', '.join(sorted(unknown))}")
    sets = []
    annotations = []
    for index, entry in enumerate(dict.fromkeys(names) if all(isinstance(n, str) for n in names)
                                  else names):
        if not isinstance(entry, str):
            ds = as_concept_set(entry, index, image_size=image_size, mask_size=mask_size,
                                concept_names=concept_names)
            name, n = ds.name, 1
            while name in {other for other, _ in sets} | set(registered):
                n += 1
                name = f"{ds.name}-{n}"
            options[name] = {"in_memory": ds.token}
            sets.append((name, ds))
            annotations.append(ds.annotation)
            continue
        name = entry
        ds = create_concept_set(name, image_size=image_size, mask_size=mask_size, seed=seed,
                                data_roots=data_roots, cache_dir=cache_dir,
                                **dict(options.get(name, {})))
        sets.append((name, ds))
        # getattr: an info object that predates the field (or imitates ConceptSetInfo) has masks.
        annotations.append(getattr(get("concept_set", name), "annotation", "masks"))
    counts = Counter(c for _, ds in sets for c in dict.fromkeys(ds.concepts))
    concept_map = dict(concept_map or {})
    qualified_names = [f"{name}/{concept}" for name, ds in sets for concept in ds.concepts]
    for key in concept_map:
        if key not in qualified_names:  # a typo would silently merge nothing
            raise UsageError(f"--map-concept {key}: {unknown_name_message('concept', key, qualified_names)}")
    concepts: list[str] = []
    channel_maps: list[list[int]] = []
    for name, ds in sets:
        channels = []
        for concept in ds.concepts:
            qualified = f"{name}/{concept}"
            label = concept_map.get(qualified) or (qualified if counts[concept] > 1 else concept)
            if label not in concepts:
                concepts.append(label)
            channels.append(concepts.index(label))
        channel_maps.append(channels)
    source = ConceptSource(sets, concepts, channel_maps, image_size, mask_size, limit, seed,
                           {name: dict(opts) for name, opts in options.items()}, annotations)
    if len(source) == 0:
        raise DataError(f"the concept set(s) {', '.join(n for n, _ in sets)} hold no images")
    return source
