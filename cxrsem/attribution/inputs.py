"""The images of an attribution run: files and folders (or a tensor), read batch after batch.

Images become grey ``[B, 1, S, S]`` in [0, 1] at the model's size here; the model's own input
preparation (channels, normalisation) is :meth:`cxrsem.engine.preprocess.InputSpec.prepare`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrsem.errors import CxrsemError, DataError, UsageError
from cxrsem.imageio import is_dicom, read_image, to_tensor
from cxrsem.outputs import safe_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".gif",
                  ".webp", ".pgm", ".ppm")


def collect_images(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Path], bool]:
    """Image files from files and folders (a folder: its image files, sorted, not recursive).

    Returns ``(paths, batch)``; ``batch`` is False for exactly one file given as a file -- then an
    unreadable image is an error instead of a skipped entry.
    """
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise UsageError("no input images given")
    paths: list[Path] = []
    batch = len(items) > 1
    for item in items:
        item = Path(item)
        if item.is_dir():
            batch = True
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p)))
            if not found:
                raise DataError(f"no images (PNG, JPEG, DICOM, ...) in folder {item}")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"image not found: {item}")
    return paths, batch


@dataclass
class Inputs:
    """The images of the run: files (``paths``) or a tensor, and whether it is a batch run (an
    unreadable image is then skipped, not an error)."""

    paths: list[Path]
    tensor: torch.Tensor | None
    batch_mode: bool
    preloaded: dict[int, np.ndarray]

    def __len__(self) -> int:
        return self.tensor.shape[0] if self.tensor is not None else len(self.paths)


def find_inputs(images: str | Path | Sequence[str | Path] | torch.Tensor) -> Inputs:
    if isinstance(images, torch.Tensor):
        return Inputs([], images, images.shape[0] > 1, {})
    paths, batch_mode = collect_images(images)
    preloaded = {} if batch_mode else {0: read_image(paths[0])}  # one unreadable image: an error
    return Inputs(paths, None, batch_mode, preloaded)


def input_names(inputs: Inputs) -> list[str]:
    """The name of every input, in input order: its path, or ``image-NNN`` for a tensor's rows."""
    if inputs.tensor is not None:
        return [f"image-{i:03d}" for i in range(len(inputs))]
    return [str(path) for path in inputs.paths]


def read_batch(inputs: Inputs, positions: range, size: int,
               skip: Callable[[int, str, str], None]
               ) -> tuple[list[int], list[str], torch.Tensor | None]:
    """The inputs at ``positions`` as ``(positions read, names, images [B, 1, S, S] in [0, 1])``
    (``None`` when none could be read); an unreadable file of a batch run goes to
    ``skip(position, path, reason)``, of a single-image run it raises."""
    kept: list[int] = []
    names: list[str] = []
    pictures: list[torch.Tensor] = []
    for i in positions:
        if inputs.tensor is not None:
            kept.append(i)
            names.append(f"image-{i:03d}")
            pictures.append(to_tensor(inputs.tensor[i].detach().to(torch.float32).cpu(), size))
            continue
        path = inputs.paths[i]
        try:
            array = inputs.preloaded.pop(i) if i in inputs.preloaded else read_image(path)
            pictures.append(to_tensor(array, size))
        except CxrsemError as exc:
            if not inputs.batch_mode:
                raise
            skip(i, str(path), str(exc))
            continue
        kept.append(i)
        names.append(str(path))
    return kept, names, torch.stack(pictures) if pictures else None


def batch_ranges(positions: range, batch_size: int) -> list[range]:
    """``positions`` cut into batches of ``batch_size`` from its start (a shard of whole batches
    starts on a multiple of the batch size, so its batches are those of one process)."""
    return [range(start, min(start + batch_size, positions.stop))
            for start in range(positions.start, positions.stop, batch_size)]


def batches(inputs: Inputs, size: int, batch_size: int, skip: Callable[[str, str], None]
            ) -> Iterator[tuple[list[str], torch.Tensor]]:
    """``(names, images [B, 1, S, S] in [0, 1])`` batch after batch; unreadable files of a batch
    run go to ``skip(path, reason)``."""
    for block in batch_ranges(range(len(inputs)), batch_size):
        _, names, pictures = read_batch(inputs, block, size,
                                        lambda _i, image, reason: skip(image, reason))
        if pictures is not None:
            yield names, pictures


# The files of the run itself: an image's outputs must never take these names.
RUN_FILES = ("config.toml", "manifest.json", "summary.csv", "concepts.csv")
RESERVED_STEMS = frozenset(Path(name).stem for name in RUN_FILES)
RESERVED_SUFFIX = "-image"


def unique_stems(tensor_input: bool) -> Callable[[str], str]:
    """The output stem of each image (``<stem>.json``, ``<stem>.png``): its file stem made a safe
    name (:func:`~cxrsem.outputs.safe_name`), ``-image`` added to a run file's stem
    (``manifest.png`` -> ``manifest-image.json``), ``-2``, ``-3``, ... to one already used (compared
    without case: a case-insensitive file system would merge them)."""
    used: set[str] = set()

    def stem(name: str) -> str:
        base = safe_name(name if tensor_input else Path(name).stem)
        if base.lower() in RESERVED_STEMS:
            base += RESERVED_SUFFIX
        unique, n = base, 1
        while unique.lower() in used:
            n += 1
            unique = f"{base}-{n}"
        used.add(unique.lower())
        return unique

    return stem


def stems_of(names: Sequence[str], tensor_input: bool) -> list[str]:
    """Every input's output stem (:func:`unique_stems`), in input order, unreadable inputs
    included: an image's file names depend on the inputs before it, never on whether they could be
    read, so every rank of a sharded run computes the same stems for all inputs."""
    stem = unique_stems(tensor_input)
    return [stem(name) for name in names]
