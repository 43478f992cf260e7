"""``csv-folder``: any folder of chest X-rays with a ``labels.csv``, as a cxrsem training dataset.

Layout::

    ROOT/labels.csv
    ROOT/<path>          every image the CSV lists (PNG, JPEG, DICOM, ... -- whatever
                         cxrsem.imageio.read_image reads)

``labels.csv`` has a ``path`` column (the image path relative to ROOT), one column per label
holding ``1`` (present), ``0`` (absent) or nothing (unknown), and optionally a ``split`` column
(``train``, ``val`` or ``test``)::

    path,Effusion,Nodule,split
    img/001.png,1,0,train
    img/002.png,0,,val          <- Nodule unknown for this image

Tasks: ``multilabel`` (one output per label column) and ``binary`` (one output, ``unhealthy``: 1
when any label is 1; 0 when every label is known and 0; unknown otherwise).  Unknown labels get
``target_masks`` False, so losses and metrics leave them out.

Without a ``split`` column every image is assigned by a hash of ``(seed, path)``: the split of an
image depends on nothing else -- not the row order, not which other images exist -- so adding
images never moves old ones between splits.  There is no patient column: if several images of one
patient must stay in one split, write the ``split`` column yourself.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import torch
from cxrsem.errors import DataError, UsageError
from cxrsem.imageio import read_image, to_tensor
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
LAYOUT = ("ROOT/labels.csv with a 'path' column (image path relative to ROOT), one column per label "
          "holding 1, 0 or blank (unknown), and optionally a 'split' column (train, val or test)")
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0}


class CsvFolderWarning(UserWarning):
    """Recoverable problem in a csv-folder (e.g. listed images that are missing): rows skipped."""


def hashed_split(path: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """``train``/``val``/``test`` for one image from sha256 of ``seed:path`` alone.

    sha256 rather than Python's ``hash()``: that one is salted per process, this is the same on
    every machine and Python version.
    """
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def read_labels(root: Path) -> tuple[list[str], list[tuple[str, list[float | None], str | None]]]:
    """Label names and ``(path, labels with None = unknown, split or None)`` rows of labels.csv."""
    file = root / "labels.csv"
    if not file.is_file():
        raise DataError(f"csv-folder: {file} not found; expected {LAYOUT}")
    with open(file, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel writes a byte-order mark
        reader = csv.DictReader(fh)
        header = [name.strip() for name in reader.fieldnames or []]
        if "path" not in header:
            raise DataError(f"csv-folder: {file} has no 'path' column (header: {', '.join(header)}); "
                            f"expected {LAYOUT}")
        labels = [name for name in header if name not in ("path", "split")]
        if not labels:
            raise DataError(f"csv-folder: {file} has no label columns; expected {LAYOUT}")
        reader.fieldnames = header
        rows = []
        for line, row in enumerate(reader, start=2):
            values = []
            for label in labels:
                text = (row[label] or "").strip()
                if text and text not in _VALUES:
                    raise DataError(f"csv-folder: {file} line {line}, column {label!r}: {text!r} is "
                                    f"not 1, 0 or blank")
                values.append(_VALUES.get(text))
            split = (row.get("split") or "").strip() if "split" in header else None
            if split is not None and split not in SPLITS:
                raise DataError(f"csv-folder: {file} line {line}: split {split!r} is not one of "
                                f"{', '.join(SPLITS)}")
            rows.append(((row["path"] or "").strip(), values, split))
    return labels, rows


class CsvFolderDataset(Dataset):
    """One split of a csv-folder, honouring cxrsem's training-dataset contract."""

    def __init__(self, root: Path, split: str, image_size: int, labels: list[str],
                 rows: list[tuple[str, list[float | None]]]) -> None:
        self.root, self.split, self.image_size = root, split, int(image_size)
        self.labels = labels
        self.paths = [path for path, _ in rows]
        self.outputs = {"multilabel": list(labels), "binary": ["unhealthy"]}
        known = torch.tensor([[v is not None for v in values] for _, values in rows],
                             dtype=torch.bool).reshape(len(rows), len(labels))
        multi = torch.tensor([[v or 0.0 for v in values] for _, values in rows],
                             dtype=torch.float32).reshape(len(rows), len(labels))
        positive = (multi > 0.5).any(dim=1, keepdim=True)
        self._targets = {"multilabel": multi, "binary": positive.float()}
        self._masks = {"multilabel": known, "binary": positive | known.all(dim=1, keepdim=True)}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = to_tensor(read_image(self.root / self.paths[index]), self.image_size)
        return {
            "image": image,
            "targets": {task: t[index].clone() for task, t in self._targets.items()},
            "target_masks": {task: m[index].clone() for task, m in self._masks.items()},
            "id": self.paths[index],
        }

    def targets(self, task: str) -> torch.Tensor:
        """Every target of ``task`` at once, without decoding images (optional contract part)."""
        return self._targets[task].clone()

    def target_masks(self, task: str) -> torch.Tensor:
        return self._masks[task].clone()

    def describe(self) -> str:
        known = self._masks["multilabel"]
        positives = (self._targets["multilabel"] > 0.5) & known
        counts = ", ".join(f"{name} {int(p)}+/{int(k)} known"
                           for name, p, k in zip(self.labels, positives.sum(0), known.sum(0),
                                                 strict=True))
        return (f"csv-folder {self.split}: {len(self)} images, {len(self.labels)} labels "
                f"({counts}) at {self.image_size} px")


def create_csv_folder(*, split: str, image_size: int, root: Path, seed: int = 0,
                      val_fraction: float = 0.1, test_fraction: float = 0.1) -> CsvFolderDataset:
    """Factory of ``csv-folder`` (the ``DatasetInfo.factory`` signature)."""
    if split not in SPLITS:
        raise UsageError(f"csv-folder: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise UsageError(f"csv-folder: val_fraction and test_fraction must be >= 0 and sum to less "
                         f"than 1, got {val_fraction} and {test_fraction}")
    root = Path(root)
    labels, rows = read_labels(root)
    missing = [path for path, _, _ in rows if not (root / path).is_file()]
    if missing:
        # One warning for the whole problem, naming the files, rather than one per image.
        shown = ", ".join(missing[:10]) + (f", ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        warnings.warn(f"csv-folder: {len(missing)} images listed in {root / 'labels.csv'} are missing "
                      f"and were skipped: {shown}", CsvFolderWarning, stacklevel=2)
    absent = set(missing)
    chosen = [(path, values) for path, values, row_split in rows
              if path not in absent
              and (row_split or hashed_split(path, seed, val_fraction, test_fraction)) == split]
    return CsvFolderDataset(root, split, image_size, labels, chosen)
