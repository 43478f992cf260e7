"""Per-image sufficient statistics of Eq. 5: what each image adds to every IoU sum of a layer.

Network Dissection's IoU of unit k and concept c (paper Eq. 5) is a ratio of sums over the images
that contain c.  Keeping each image's terms -- sparsely -- lets any reweighting of the images
(a bootstrap resample, a patient grouping, a subset) recompute every IoU without a model pass and
without re-reading the activation cache::

    intersection[k, c] = sum_x |M_k(x) & L_c(x)|          (x contains c: else the term is 0)
    unit_area[k, c]    = sum_x |M_k(x)| * [c in x]
    label_area[c]      = sum_x |L_c(x)|
    IoU[k, c]          = intersection / (unit_area + label_area - intersection)

Rows are the images in dissection order (0..N-1).  Stored terms:

- ``label_area [N, C]`` -- ``|L_c(x)|`` (dense: ``C`` is small); ``c in x`` is ``label_area > 0``;
- ``mask_*`` ``[P]`` -- one entry per (image, unit) whose mask ``M_k(x)`` is non-empty on an image
  that holds at least one concept: ``mask_image``, ``mask_unit``, ``mask_area = |M_k(x)|``;
- ``inter_*`` ``[Q]`` -- one entry per (image, unit, concept) with a non-empty intersection:
  ``inter_image``, ``inter_unit``, ``inter_concept``, ``inter_value = |M_k(x) & L_c(x)|``;
- ``groups [N]`` -- the resampling unit of each image (a patient index; each image its own group
  when the concept set knows no patients) and ``group_names`` (one string per group).

All integers are int64; summing the terms over every image reproduces
:class:`cxrsem.dissection.tally.IoUTally` exactly (``tally()``).  Saved as one ``.npz`` (no
pickles: ``numpy.load(..., allow_pickle=False)`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrsem.errors import DataError

FORMAT = "cxrsem-imagestats/1"
ARRAYS = ("label_area", "mask_image", "mask_unit", "mask_area", "inter_image", "inter_unit",
          "inter_concept", "inter_value", "groups")


def _int64(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


@dataclass
class ImageStats:
    """The sparse per-image terms of one layer's IoU sums (see the module docstring)."""

    num_units: int
    concepts: list[str]
    label_area: np.ndarray            # [N, C]
    mask_image: np.ndarray            # [P]
    mask_unit: np.ndarray             # [P]
    mask_area: np.ndarray             # [P]
    inter_image: np.ndarray           # [Q]
    inter_unit: np.ndarray            # [Q]
    inter_concept: np.ndarray         # [Q]
    inter_value: np.ndarray           # [Q]
    groups: np.ndarray | None = None  # [N]; None: every image its own group
    group_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ARRAYS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _int64(value))
        if self.groups is None:
            self.groups = np.arange(self.num_images, dtype=np.int64)
        if not self.group_names:
            self.group_names = [str(g) for g in range(int(self.groups.max(initial=-1)) + 1)]
        self._check()

    def _check(self) -> None:
        """Shapes and index ranges agree (a damaged or foreign file fails here, not in tally())."""
        n, c = self.num_images, self.num_concepts
        problems = []
        if self.label_area.ndim != 2 or self.label_area.shape[1] != c:
            problems.append(f"label_area is {self.label_area.shape}, expected [N, {c}]")
        for names in (ARRAYS[1:4], ARRAYS[4:8]):
            if len({getattr(self, name).shape for name in names}) != 1 or getattr(
                    self, names[0]).ndim != 1:
                problems.append(f"{', '.join(names)} differ in shape")
        bounds = [("mask_image", n), ("inter_image", n), ("mask_unit", self.num_units),
                  ("inter_unit", self.num_units), ("inter_concept", c), ("groups", self.num_groups)]
        for name, size in bounds:
            value = getattr(self, name)
            if value.size and (value.min() < 0 or value.max() >= size):
                problems.append(f"{name} outside 0..{size - 1}")
        if self.groups.shape != (n,):
            problems.append(f"groups has {self.groups.shape}, expected ({n},)")
        if problems:
            raise DataError("inconsistent image statistics: " + "; ".join(problems))

    @property
    def num_images(self) -> int:
        return int(self.label_area.shape[0])

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def present(self) -> np.ndarray:
        """``[N, C]`` bool: image x contains concept c."""
        return self.label_area > 0

    def tally(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                np.ndarray]:
        """``(intersection [K, C], unit_area [K, C], label_area [C], images_with [C])`` with each
        image counted ``weights[x]`` times (default once): the sums of Eq. 5."""
        w = np.ones(self.num_images, dtype=np.int64) if weights is None else _int64(weights)
        k, c = self.num_units, self.num_concepts
        intersection = np.zeros(k * c, dtype=np.int64)
        np.add.at(intersection, self.inter_unit * c + self.inter_concept,
                  self.inter_value * w[self.inter_image])
        per_pair = self.present[self.mask_image] * (self.mask_area * w[self.mask_image])[:, None]
        unit_area = np.zeros((k, c), dtype=np.int64)
        np.add.at(unit_area, self.mask_unit, per_pair)
        label_area = (self.label_area * w[:, None]).sum(axis=0)
        images_with = (self.present * w[:, None]).sum(axis=0)
        return intersection.reshape(k, c), unit_area, label_area, images_with

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (one ``.npz``, replaced atomically: a reader never sees half a file)."""
        from cxrsem.outputs import atomic_write

        arrays = {"format": np.array(FORMAT), "num_units": np.array(self.num_units),
                  "concepts": np.array(self.concepts, dtype=str),
                  "group_names": np.array(self.group_names, dtype=str),
                  **{name: getattr(self, name) for name in ARRAYS}}
        # A file handle: savez would append ".npz" to a path without it.
        return atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> ImageStats:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != FORMAT:
                    raise DataError(f"{path} is not a cxrsem image-statistics file "
                                    f"(format {str(data['format'])!r}, expected {FORMAT})")
                return cls(num_units=int(data["num_units"]), concepts=[str(c) for c in data["concepts"]],
                           group_names=[str(g) for g in data["group_names"]],
                           **{name: data[name] for name in ARRAYS})
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read image statistics {path}: {exc}") from None
