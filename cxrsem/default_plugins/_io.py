"""Shared machinery of the built-in dataset and concept-set plugins.

- :class:`DataWarning` and :func:`warn_listed`: every recoverable data problem (a listed image that
  is missing or unreadable, an unknown label, a malformed row) is reported as *one*
  ``warnings.warn(..., DataWarning)`` per kind of problem, naming the files concerned, and the item
  is skipped.  Unrecoverable problems (a root without the expected files, a split left empty) raise
  :class:`~cxrsem.errors.DataError` with the file that is missing and the layout expected.
- :func:`read_table`: CSV reading that copes with the published files' quirks (UTF-8 byte-order
  marks, ``;`` separators, bracketed header names such as ``OriginalImage[Width,Height]`` that the
  CSV syntax splits into extra columns, trailing commas) and finds columns by name.  A file that is
  not UTF-8 (a spreadsheet's Latin-1 export) is read as Latin-1 -- every byte decodes, so no row is
  lost -- with one :class:`DataWarning` naming the file and the first byte that is not UTF-8.  A
  header naming one column twice is refused (which of the two to read would be a guess).
- :func:`inside`: a path read from a dataset file must stay inside the dataset's folder; ``../``
  or an absolute path is refused with a DataError naming the file and row, so a downloaded CSV
  cannot make cxrsem read (and train on, or copy into a cache) files elsewhere on the machine.
- :func:`seeded_order` / :func:`holdout`: deterministic, platform-independent splits.  Each key (a
  patient, or an image where no patient is known) is ordered by ``sha256(f"{seed}:{key}")``, so a
  split depends only on the set of keys and the seed -- never on numpy's RNG, the file order or
  which images happen to be present.
- :func:`box_mask` / :func:`paste_mask`: annotations rasterised at the requested mask size ``M``.
  The image is stretched to a square (see :mod:`cxrsem.imageio`), so the mask grid covers the
  original image with per-axis scale ``W / M`` and ``H / M``; cell ``(i, j)`` stands for the
  continuous source point ``((j + 0.5) W / M, (i + 0.5) H / M)``.  A box covers the cells whose
  centre lies inside it (half-open ``[x, x + w)``); a pixel mask is sampled at the cell centres
  (nearest). An annotation too small to cover any cell centre still marks the cell(s) it falls in,
  so a concept is present in the mask exactly when the annotation file says it is.
- :class:`TrainingDataset` / :class:`ConceptSet`: the two data contracts of
  :mod:`cxrsem.components`, with image decoding through :mod:`cxrsem.imageio`.  A file that fails to
  decode at training time is warned about once and replaced by the next readable item, so an epoch
  never stops on one corrupt file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrsem.errors import DataError
from cxrsem.imagecache import ServedImages, reader_tag
from cxrsem.imageio import image_size, read_image, to_tensor

__all__ = [
    "DataWarning",
    "warn_listed",
    "require_file",
    "inside",
    "read_table",
    "Table",
    "seeded_order",
    "holdout",
    "split_three",
    "subset",
    "box_mask",
    "paste_mask",
    "TrainingDataset",
    "ConceptSet",
    "index_images",
    "readable_sizes",
    "check_split",
    "percent",
    "fmt",
]

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp", ".webp")


class DataWarning(UserWarning):
    """A recoverable problem in a dataset's files: the items concerned were skipped."""


def fmt(n: int | float) -> str:
    """``112120 -> '112,120'``."""
    return f"{n:,}"


def warn_listed(dataset: str, what: str, names: Iterable[str], *, limit: int = 20) -> str | None:
    """One :class:`DataWarning` for a whole kind of problem: ``"<dataset>: <n> <what>: a, b, ..."``.

    Returns the message (or None when ``names`` is empty) so callers can also list it in describe().
    """
    names = list(names)
    if not names:
        return None
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... and {fmt(len(names) - limit)} more"
    message = f"{dataset}: {fmt(len(names))} {what}: {shown}"
    warnings.warn(message, DataWarning, stacklevel=3)
    return message


def check_split(split: str, dataset: str) -> str:
    from cxrsem.errors import UsageError

    if split not in SPLITS:
        raise UsageError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def require_file(root: Path, candidates: Sequence[str], *, dataset: str, layout: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``) that exists, else one DataError."""
    for rel in candidates:
        path = root / rel
        if path.is_file():
            return path
    wanted = " or ".join(candidates)
    raise DataError(f"{dataset}: {wanted} not found in {root}; expected layout: {layout}")


# ---------------------------------------------------------------------------------------------
# CSV


def _norm(name: str) -> str:
    return "".join(name.split()).lower()


@dataclass
class Table:
    """A CSV file's header (with bracketed names re-joined) and rows, columns found by name."""

    path: Path
    names: list[str]  # logical column names, in file order
    starts: list[int]  # raw column index where each logical column starts
    widths: list[int]  # how many raw columns each logical column spans
    rows: list[list[str]] = field(repr=False)
    dataset: str = ""

    def find(self, *names: str) -> int | None:
        """Raw index of the first of ``names`` present (case/space-insensitive), else None."""
        wanted = [_norm(n) for n in names]
        normed = [_norm(n) for n in self.names]
        for w in wanted:
            if w in normed:
                return self.starts[normed.index(w)]
        return None

    def column(self, *names: str) -> int:
        """Like :meth:`find` but a missing column is a DataError naming the file and the header."""
        index = self.find(*names)
        if index is None:
            raise DataError(
                f"{self.dataset}: {self.path.name} has no column {' or '.join(map(repr, names))}; "
                f"its header is: {', '.join(self.names)}"
            )
        return index

    def unknown(self, known: Iterable[str]) -> list[str]:
        """Header names not in ``known`` (compared case/space-insensitively)."""
        known_n = {_norm(k) for k in known}
        return [n for n in self.names if _norm(n) not in known_n]


def _join_brackets(header: list[str]) -> tuple[list[str], list[int], list[int]]:
    names: list[str] = []
    starts: list[int] = []
    widths: list[int] = []
    i = 0
    while i < len(header):
        field_ = header[i].strip()
        j = i
        if "[" in field_ and "]" not in field_:
            parts = [field_]
            while j + 1 < len(header) and "]" not in parts[-1]:
                j += 1
                parts.append(header[j].strip())
            field_ = ",".join(parts)
        if field_:  # a trailing comma leaves an empty name: not a column
            names.append(field_)
            starts.append(i)
            widths.append(j - i + 1)
        i = j + 1
    return names, starts, widths


_WARNED_ENCODING: set[tuple[str, int]] = set()


def read_table(path: Path, *, dataset: str, delimiter: str | None = None) -> Table:
    """Read a whole CSV (UTF-8, BOM tolerated); ``delimiter`` None picks ``;`` or ``,`` from the
    header line.  Blank lines are dropped; short rows are padded with empty strings."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{dataset}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        if (str(path), len(raw)) not in _WARNED_ENCODING:  # once, however many splits read it
            _WARNED_ENCODING.add((str(path), len(raw)))
            warnings.warn(f"{dataset}: {path} is not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); "
                          "read as Latin-1 (ISO-8859-1) -- re-save it as UTF-8 if names look "
                          "wrong", DataWarning, stacklevel=2)
        text = raw.decode("latin-1")
    first = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = ";" if first.count(";") > first.count(",") else ","
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{dataset}: {path} is empty; expected a header line")
        names, starts, widths = _join_brackets(header)
        seen: dict[str, str] = {}
        for column in names:
            if _norm(column) in seen:
                raise DataError(f"{dataset}: {path} names the column {column!r} twice; which one to "
                                "read is ambiguous: rename or remove one")
            seen[_norm(column)] = column
        rows = []
        for row in reader:
            if not "".join(row).strip():  # blank line, or nothing but separators
                continue
            if len(row) < len(header):
                row = row + [""] * (len(header) - len(row))
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{dataset}: {path} is not valid CSV: {exc}") from None
    return Table(path=path, names=names, starts=starts, widths=widths, rows=rows, dataset=dataset)


def inside(base: str | Path, path: str | Path, *, dataset: str, source: str | Path, row: str) -> str:
    """``path`` (a file named by a dataset's own CSV/JSON, already joined to ``base``) as a str,
    or a DataError when it leaves ``base`` through ``..`` or an absolute path.  The check is on
    the path as written (normalised, symlinks not resolved: an images/ folder linked to another
    disk stays inside)."""
    base_n = os.path.normpath(os.path.abspath(base))
    path_n = os.path.normpath(os.path.abspath(path))
    if path_n != base_n and not path_n.startswith(base_n.rstrip(os.sep) + os.sep):
        raise DataError(f"{dataset}: {source} {row} names {os.fspath(path)!r}, outside the dataset "
                        f"folder {base_n}; refusing to read files outside it")
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------
# Splits


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def seeded_order(keys: Iterable[str], seed: int) -> list[str]:
    """The unique ``keys`` in a seeded pseudo-random order that depends on nothing else."""
    return sorted(set(keys), key=lambda k: (_rank(seed, k), k))


def holdout(keys: Iterable[str], fraction: float, seed: int) -> set[str]:
    """``round(fraction * n)`` of the unique keys (at least one when 0 < fraction and n > 1)."""
    order = seeded_order(keys, seed)
    if fraction <= 0 or not order:
        return set()
    count = round(fraction * len(order))
    count = min(max(count, 1 if len(order) > 1 else 0), len(order) - 1 if len(order) > 1 else 0)
    return set(order[:count])


def split_three(keys: Iterable[str], fractions: tuple[float, float, float],
                seed: int) -> dict[str, str]:
    """Assign each unique key to train/val/test by cutting the seeded order at the fractions."""
    order = seeded_order(keys, seed)
    n = len(order)
    total = sum(fractions)
    cut1 = round(n * fractions[0] / total)
    cut2 = round(n * (fractions[0] + fractions[1]) / total)
    out = {}
    for i, key in enumerate(order):
        out[key] = "train" if i < cut1 else "val" if i < cut2 else "test"
    return out


def subset(n: int, limit: int, seed: int) -> list[int]:
    """Indices of a seeded sample of ``limit`` of ``n`` items (all when limit <= 0), in order."""
    if limit <= 0 or limit >= n:
        return list(range(n))
    chosen = seeded_order([str(i) for i in range(n)], seed)[:limit]
    return sorted(int(i) for i in chosen)


# ---------------------------------------------------------------------------------------------
# Rasterisation


def _centres(extent: float, m: int) -> np.ndarray:
    # Multiply, then divide once: (i + 0.5) * extent is exact, so a centre that falls exactly on a
    # pixel edge stays on it (extent / m first rounds, and 5.5 * (30 / 11) is 14.999...).
    return (np.arange(m, dtype=np.float64) + 0.5) * float(extent) / m


def _cell(coord: np.ndarray | float, extent: float, m: int) -> np.ndarray:
    scaled = np.floor(np.asarray(coord, dtype=np.float64) * m / float(extent))
    return np.clip(scaled, 0, m - 1).astype(np.int64)


def box_mask(out: np.ndarray, box: Sequence[float], frame: tuple[float, float]) -> None:
    """OR the box ``(x, y, w, h)`` (top-left + size, in a ``frame = (W, H)`` pixel frame) into the
    ``[M, M]`` bool array ``out``: the cells whose centre lies in ``[x, x+w) x [y, y+h)``."""
    m = out.shape[-1]
    x, y, w, h = (float(v) for v in box)
    fw, fh = frame
    cx, cy = _centres(fw, m), _centres(fh, m)
    cols = (cx >= x) & (cx < x + w)
    rows = (cy >= y) & (cy < y + h)
    if cols.any() and rows.any():
        out[np.ix_(rows, cols)] = True
    elif w > 0 and h > 0:  # smaller than a cell: keep the concept present at its centre
        xc, yc = x + w / 2, y + h / 2
        if 0 <= xc < fw and 0 <= yc < fh:
            out[_cell(yc, fh, m), _cell(xc, fw, m)] = True


def paste_mask(out: np.ndarray, crop: np.ndarray, left: int, top: int,
               size: tuple[int, int]) -> None:
    """OR the bool ``crop`` ``[h, w]`` pasted at ``(left, top)`` of an image of ``size = (W, H)``
    into the ``[M, M]`` array ``out`` (nearest sampling at the cell centres)."""
    m = out.shape[-1]
    width, height = size
    src_rows = np.minimum(np.floor(_centres(height, m)).astype(np.int64), height - 1) - int(top)
    src_cols = np.minimum(np.floor(_centres(width, m)).astype(np.int64), width - 1) - int(left)
    h, w = crop.shape
    vr = (src_rows >= 0) & (src_rows < h)
    vc = (src_cols >= 0) & (src_cols < w)
    hit = False
    if vr.any() and vc.any():
        sampled = crop[np.ix_(src_rows[vr], src_cols[vc])]
        if sampled.any():
            out[np.ix_(vr, vc)] |= sampled
            hit = True
    if not hit and crop.any():  # too thin to meet a cell centre: mark the cells it falls in
        ys, xs = np.nonzero(crop)
        ys, xs = ys + int(top), xs + int(left)
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        if inside.any():
            out[_cell(ys[inside] + 0.5, height, m), _cell(xs[inside] + 0.5, width, m)] = True


# ---------------------------------------------------------------------------------------------
# Image folders


def index_images(folders: Iterable[Path],
                 suffixes: Sequence[str] = IMAGE_SUFFIXES) -> dict[str, str]:
    """File name -> path (a str: a dataset may list 10^5 files) of the image files directly inside
    ``folders`` (the first folder wins)."""
    found: dict[str, str] = {}
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:  # names are unique within a folder
            if entry.name.lower().endswith(tuple(suffixes)) and entry.name not in found:
                found[entry.name] = entry.path
    return found


# ---------------------------------------------------------------------------------------------
# The two data contracts


class _Images(ServedImages, Dataset):
    """Image paths + ids, decoding with replacement of unreadable files (warned once each)."""

    name = "dataset"
    unreadable_warning = DataWarning

    def __init__(self, *, name: str, image_size: int, paths: Sequence[str | Path],
                 ids: Sequence[str], reader: Callable[[Path], np.ndarray] = read_image) -> None:
        if int(image_size) < 1:
            raise DataError(f"{name}: image size must be positive, got {image_size}")
        self.name = name
        self.image_size = int(image_size)
        # plain strings: building 10^5 Path objects would dominate the start-up time
        self.files = [os.fspath(p) for p in paths]
        self.ids = list(ids)
        self._reader = reader
        self._init_served(reader_tag(reader))
        self.problems: list[str] = []  # the DataWarning messages raised while building

    def _decode(self, j: int) -> torch.Tensor:
        return to_tensor(self._reader(self.files[j]), self.image_size)


class TrainingDataset(_Images):
    """The training-dataset contract of :mod:`cxrsem.components` over image files on disk.

    ``targets`` maps each task kind to a tensor with one row per image; ``target_masks`` (optional)
    to bool tensors of the same shapes, False where a label is unknown.
    """

    def __init__(self, *, name: str, split: str, image_size: int, paths: Sequence[str | Path],
                 ids: Sequence[str], targets: Mapping[str, torch.Tensor],
                 outputs: Mapping[str, list[str]],
                 target_masks: Mapping[str, torch.Tensor] | None = None,
                 reader: Callable[[Path], np.ndarray] = read_image) -> None:
        super().__init__(name=name, image_size=image_size, paths=paths, ids=ids, reader=reader)
        self.split = split
        self.outputs = {task: list(names) for task, names in outputs.items()}
        self._targets = dict(targets)
        self._target_masks = dict(target_masks or {})
        for task, tensor in self._targets.items():
            if tensor.shape[0] != len(self.files):
                raise AssertionError(f"{name}: {task} targets for {tensor.shape[0]} of "
                                     f"{len(self.files)} images")
        self.summary: list[str] = []

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, image = self._load(self._index(index))
        # clone(): a view would drag the whole target storage through DataLoader worker pipes
        item: dict[str, Any] = {
            "image": image,
            "targets": {task: t[j].clone() for task, t in self._targets.items()},
            "id": self.ids[j],
        }
        if self._target_masks:
            item["target_masks"] = {task: m[j].clone() for task, m in self._target_masks.items()}
        return item

    def targets(self, task: str) -> torch.Tensor:
        """Every sample's target for ``task`` at once (no image is decoded)."""
        if task not in self._targets:
            from cxrsem.errors import UsageError

            raise UsageError(f"{self.name} has no task {task!r}; it has {', '.join(self._targets)}")
        return self._targets[task].clone()

    def target_masks(self, task: str) -> torch.Tensor | None:
        """Known-label mask for ``task`` (None when every label is known)."""
        mask = self._target_masks.get(task)
        return None if mask is None else mask.clone()

    def describe(self) -> str:
        lines = list(self.summary) + self._cache_lines()
        lines += [f"  warning: {p}" for p in self.problems]
        return "\n".join(lines)


class ConceptSet(_Images):
    """The concept-set contract: ``{"image", "masks": bool [C, M, M], "id"}`` per item.

    Subclasses fill ``self.concepts``, ``self._counts`` and implement :meth:`_masks`.
    """

    def __init__(self, *, name: str, image_size: int, mask_size: int,
                 paths: Sequence[str | Path],
                 ids: Sequence[str], concepts: Sequence[str],
                 reader: Callable[[Path], np.ndarray] = read_image) -> None:
        super().__init__(name=name, image_size=image_size, paths=paths, ids=ids, reader=reader)
        if int(mask_size) < 1:
            raise DataError(f"{name}: mask size must be positive, got {mask_size}")
        self.mask_size = int(mask_size)
        self.concepts = list(concepts)
        self.summary: list[str] = []

    def _masks(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def concept_counts(self) -> dict[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, image = self._load(self._index(index))
        return {"image": image, "masks": torch.from_numpy(self._masks(j)), "id": self.ids[j]}

    def describe(self) -> str:
        counts = self.concept_counts()
        lines = list(self.summary)
        per_concept = ", ".join(f"{c} {fmt(counts[c])}" for c in self.concepts)
        lines.append("  images per concept: " + per_concept)
        lines += self._cache_lines()
        lines += [f"  warning: {p}" for p in self.problems]
        return "\n".join(lines)


def readable_sizes(name: str, paths: Sequence[str | Path],
                   ) -> tuple[list[int], list[tuple[int, int]], list[str]]:
    """Header-check ``paths``: (indices that open, their (W, H), 'name (reason)' for the others)."""
    ok: list[int] = []
    sizes: list[tuple[int, int]] = []
    bad: list[str] = []
    for i, path in enumerate(paths):
        try:
            sizes.append(image_size(path))
            ok.append(i)
        except DataError as exc:
            reason = str(exc).split(": ", 1)[0]
            bad.append(f"{os.path.basename(path)} ({reason})")
    return ok, sizes, bad


def percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"
