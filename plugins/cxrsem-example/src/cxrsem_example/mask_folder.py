"""``mask-folder``: images with one binary mask per concept, as a concept set for Network Dissection.

Layout::

    ROOT/images/<stem>.png            (or .jpg, .jpeg, .bmp, .tif, .tiff, .dcm, .dicom)
    ROOT/masks/<concept>/<stem>.png   nonzero pixels = the concept; one folder per concept

The concepts are the sub-folders of ``masks/``, sorted by name.  Every image is an item; an image
without a mask for a concept simply lacks that concept (an empty channel), so unannotated images
still count for the dissection thresholds.  A mask whose stem has no image is reported in one
warning and ignored.

Geometry: cxrsem stretches every image to a square (:func:`cxrsem.imageio.to_tensor`), so mask
cell ``(i, j)`` of the ``M x M`` grid stands for the source point ``((j + 0.5) W / M,
(i + 0.5) H / M)`` and is read there (nearest sampling at cell centres, in the mask's own pixel
frame: a mask of another size than its image is taken to cover the same field of view).  An
annotation too thin to cover any cell centre still marks the cells it lies in, so a concept is
present in an item exactly when its mask file has a nonzero pixel.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from cxrsem.errors import DataError
from cxrsem.imageio import read_image, to_tensor
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
LAYOUT = "ROOT/images/<stem>.png and binary masks ROOT/masks/<concept>/<stem>.png (one folder per concept)"


class MaskFolderWarning(UserWarning):
    """Recoverable problem in a mask-folder (e.g. masks without an image): files ignored."""


def sample_mask(mask: np.ndarray, m: int) -> np.ndarray:
    """Bool ``[H, W]`` mask -> bool ``[m, m]``: nearest sampling at the cell centres (see module)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(m) + 0.5) * h / m).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(m) + 0.5) * w / m).astype(np.int64), w - 1)
    out = mask[np.ix_(rows, cols)]
    if not out.any() and mask.any():
        # Thinner than a cell: keep the concept present in the cells its pixels fall into.
        ys, xs = np.nonzero(mask)
        out = out.copy()
        out[((ys + 0.5) * m / h).astype(np.int64), ((xs + 0.5) * m / w).astype(np.int64)] = True
    return out


class MaskFolder(Dataset):
    """A mask-folder, honouring cxrsem's concept-set contract."""

    def __init__(self, root: Path, image_size: int, mask_size: int) -> None:
        self.root, self.image_size, self.mask_size = Path(root), int(image_size), int(mask_size)
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"mask-folder: {folder} not found; expected {LAYOUT}")
        self.images: dict[str, Path] = {}
        for path in sorted(images_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in self.images:
                raise DataError(f"mask-folder: two images with the stem {path.stem!r}: "
                                f"{self.images[path.stem].name} and {path.name}; masks are matched by stem")
            self.images[path.stem] = path
        self.concepts = sorted(p.name for p in masks_dir.iterdir() if p.is_dir())
        if not self.images or not self.concepts:
            raise DataError(f"mask-folder: no {'images' if not self.images else 'concept folders'} in "
                            f"{self.root}; expected {LAYOUT}")
        self.stems = list(self.images)
        self.masks: dict[str, dict[str, Path]] = {c: {} for c in self.concepts}
        orphans = []
        for concept in self.concepts:
            for path in sorted((masks_dir / concept).glob("*.png")):
                if path.stem in self.images:
                    self.masks[concept][path.stem] = path
                else:
                    orphans.append(f"{concept}/{path.name}")
        if orphans:
            warnings.warn(f"mask-folder: {len(orphans)} masks in {masks_dir} have no image in "
                          f"{images_dir} and were ignored: {', '.join(orphans[:10])}"
                          + (" ..." if len(orphans) > 10 else ""), MaskFolderWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self.stems)

    def read_masks(self, index: int) -> torch.Tensor:
        """Bool ``[C, M, M]`` masks of item ``index`` (no image decoding)."""
        stem = self.stems[index]
        out = np.zeros((len(self.concepts), self.mask_size, self.mask_size), dtype=bool)
        for c, concept in enumerate(self.concepts):
            path = self.masks[concept].get(stem)
            if path is not None:
                # read_image turns any PNG mode (8/16-bit, palette, RGB) into grey in [0, 1].
                out[c] = sample_mask(read_image(path) > 0, self.mask_size)
        return torch.from_numpy(out)

    def __getitem__(self, index: int) -> dict:
        image = to_tensor(read_image(self.images[self.stems[index]]), self.image_size)
        return {"image": image, "masks": self.read_masks(index), "id": self.stems[index]}

    def concept_counts(self) -> dict[str, int]:
        """Images in which each concept is present (reads every mask once)."""
        counts = torch.zeros(len(self.concepts), dtype=torch.long)
        for i in range(len(self)):
            counts += self.read_masks(i).flatten(1).any(dim=1)
        return dict(zip(self.concepts, counts.tolist(), strict=True))

    def describe(self) -> str:
        files = ", ".join(f"{c}: {len(self.masks[c])}" for c in self.concepts)
        return (f"mask-folder: {len(self)} images, {len(self.concepts)} concepts\n"
                f"  mask files per concept: {files}")


def create_mask_folder(*, image_size: int, mask_size: int, root: Path, seed: int = 0) -> MaskFolder:
    """Factory of ``mask-folder`` (the ``ConceptSetInfo.factory`` signature; nothing is random)."""
    return MaskFolder(root, image_size, mask_size)
