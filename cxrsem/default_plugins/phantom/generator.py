"""The phantom chest X-ray generator: public entry point.

``generate(indices, seed=..., split=..., image_size=...)`` draws every listed sample's random
parameters (:mod:`.params`), renders them in batched torch ops (:mod:`.render`) and derives the
labels of all four tasks from the masks (:mod:`.labels`).  A sample depends only on
``(seed, split, index)``, the image/mask size and the prevalences: generating it alone, in a
batch, or in any order gives identical tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cxrsem.default_plugins.phantom.concepts import CONCEPTS, PATHOLOGIES, parse_prevalence
from cxrsem.default_plugins.phantom.params import BatchSpec, collate, draw_sample
from cxrsem.default_plugins.phantom.render import render
from cxrsem.errors import UsageError

MIN_SIZE = 32  # smallest image: below it the ribs, nodules and devices no longer resolve
MIN_MASK_SIZE = 8  # masks may be coarser (dissection compares them with upsampled activations)


@dataclass
class PhantomBatch:
    """One generated batch.

    - ``images``: float32 ``[B, 1, S, S]`` in [0, 1] (None when not requested);
    - ``masks``: bool ``[B, 13, M, M]`` in :data:`CONCEPTS` order (None when not kept);
    - ``labels``: ``{task: targets}`` for all four task kinds, computed from the ``M``-pixel masks;
    - ``boxes``: when requested, one ``(position, concept, r0, r1, c0, c1)`` per lesion instance
      (and per enlarged heart) on the mask grid, rows and columns half-open.
    """

    indices: list[int]
    images: Tensor | None
    masks: Tensor | None
    labels: dict[str, Tensor]
    mask_size: int
    concepts: tuple[str, ...] = CONCEPTS
    boxes: list[tuple[int, str, int, int, int, int]] = field(default_factory=list)

    def box_masks(self, concepts: tuple[str, ...] = PATHOLOGIES) -> Tensor:
        """Filled boxes ``[B, len(concepts), M, M]`` (bool), like NIH ChestX-ray8 annotations
        (needs ``boxes=True`` at generation)."""
        b, size = len(self.indices), self.mask_size
        out = torch.zeros(b, len(concepts), size, size, dtype=torch.bool)
        channel = {name: i for i, name in enumerate(concepts)}
        for pos, concept, r0, r1, c0, c1 in self.boxes:
            if concept in channel:
                out[pos, channel[concept], r0:r1, c0:c1] = True
        return out


def check_size(size: int, what: str = "image_size", minimum: int = MIN_SIZE) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < minimum:
        raise UsageError(f"phantom {what} must be an integer >= {minimum}, got {size!r}")
    return size


def draw(indices: Iterable[int], *, seed: int, split: str,
         prevalence: str | Mapping[str, float] | None = None) -> BatchSpec:
    """The random parameters of ``indices`` (no pixels): cheap, and enough for :func:`render`."""
    resolved = parse_prevalence(prevalence)
    indices = [int(i) for i in indices]
    if not indices:
        raise UsageError("phantom: no sample indices given")
    if min(indices) < 0:
        raise UsageError(f"phantom sample indices must be >= 0, got {min(indices)}")
    return collate([draw_sample(seed, split, i, resolved) for i in indices])


def generate(indices: Iterable[int], *, seed: int, split: str, image_size: int,
             mask_size: int | None = None, prevalence: str | Mapping[str, float] | None = None,
             images: bool = True, masks: bool = True, boxes: bool = False) -> PhantomBatch:
    """Generate phantom samples ``indices`` of ``split``.

    ``mask_size`` defaults to ``image_size``; masks are rendered on their own grid, never resized,
    and the labels are computed from them.  ``images=False`` skips the pixels and ``masks=False``
    drops the masks after computing the labels (both for speed); ``boxes=True`` also records one
    bounding box per lesion instance (see :class:`PhantomBatch`).
    ``prevalence``: the ``"Name=p,..."`` option string or a mapping; missing names keep defaults.
    """
    check_size(image_size)
    if mask_size is None:
        mask_size = image_size
    check_size(mask_size, "mask_size", MIN_MASK_SIZE)
    spec = draw(indices, seed=seed, split=split, prevalence=prevalence)
    if images and mask_size != image_size:
        pixels = render(spec, image_size, image=True, masks=False, labels=False).images
        shapes = render(spec, mask_size, image=False, masks=masks, boxes=boxes)
    else:
        shapes = render(spec, mask_size, image=images, masks=masks, boxes=boxes)
        pixels = shapes.images
    return PhantomBatch(spec.indices, pixels, shapes.masks, shapes.labels, mask_size,
                        boxes=shapes.boxes)
