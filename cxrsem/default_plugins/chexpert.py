"""CheXpert (Irvin et al., AAAI 2019): the ``chexpert`` dataset, 14 labels including No Finding.

Layout on disk -- either way the archive was unpacked (``ROOT`` = ``--data-root chexpert=ROOT``)::

    ROOT/train.csv, ROOT/valid.csv, ROOT/train/patient00001/study1/view1_frontal.jpg ...
        (ROOT is the unpacked CheXpert-v1.0-small/ or CheXpert-v1.0/ folder itself), or
    ROOT/CheXpert-v1.0-small/train.csv, ROOT/CheXpert-v1.0-small/train/... (ROOT is its parent)

``Path`` in the CSVs starts with ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``); it is resolved
against the CSV's folder with that prefix removed, or against ROOT as written, whichever matches the
files on disk (decided once from the first rows).  The JPEGs come in varying sizes.

What is read: ``Path``, ``Frontal/Lateral``, ``AP/PA`` and the 14 label columns, by name.  Labels
are ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, blank not mentioned (= negative, as in
the CheXpert paper).  ``uncertainty`` chooses what an uncertain label becomes:

- ``zeros`` (default; U-Zeros, what the paper's code does): negative;
- ``ones`` (U-Ones): positive;
- ``ignore`` (U-Ignore): masked out of the loss through ``"target_masks"`` (False there).

Tasks: ``multilabel`` (the 14 labels) and ``binary`` (1 = unhealthy: any label other than No Finding
and Support Devices positive; under U-Ignore an image with an uncertain finding and no positive one
has an unknown binary label, masked).

Splits: ``test`` = ``valid.csv`` (the public expert-labelled set; the official test set is not
distributed); ``train``/``val`` split ``train.csv`` by patient (``patientNNNNN`` in the path), a
seeded ``val_fraction`` of the patients going to ``val``.  CheXpert's valid patients are disjoint
from its train patients, so no patient is in two splits.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cxrsem.components import DatasetInfo, Option
from cxrsem.errors import DataError
from cxrsem.hookspecs import hookimpl

from ._io import TrainingDataset, check_split, fmt, holdout, inside, read_table, warn_listed

CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]
NOT_PATHOLOGY = ("No Finding", "Support Devices")
PATHOLOGIES = [c for c in CHEXPERT_LABELS if c not in NOT_PATHOLOGY]
META_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
LAYOUT = ("ROOT/train.csv, ROOT/valid.csv and ROOT/train/patientNNNNN/studyN/viewN_*.jpg "
          "(ROOT = the unpacked CheXpert-v1.0-small/ or CheXpert-v1.0/ folder), or the same inside "
          "ROOT/CheXpert-v1.0-small/")
_PREFIX = re.compile(r"^CheXpert-v1\.0[^/\\]*[/\\]", re.IGNORECASE)
_PATIENT = re.compile(r"patient(\d+)", re.IGNORECASE)
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": np.nan}


def find_csv_dir(root: Path, dataset: str = "chexpert") -> Path:
    """The folder holding train.csv and valid.csv: ROOT itself or ROOT/CheXpert-v1.0*/."""
    candidates = [root] + sorted(p for p in root.glob("CheXpert-v1.0*") if p.is_dir())
    for folder in candidates:
        if (folder / "train.csv").is_file() and (folder / "valid.csv").is_file():
            return folder
    for folder in candidates:
        for name in ("train.csv", "valid.csv"):
            partner = "valid.csv" if name == "train.csv" else "train.csv"
            if (folder / name).is_file():
                raise DataError(f"{dataset}: {partner} not found in {folder} (next to {name}); "
                                f"expected layout: {LAYOUT}")
    raise DataError(f"{dataset}: train.csv and valid.csv not found in {root} or "
                    f"{root}/CheXpert-v1.0-small/; expected layout: {LAYOUT}")


class _Rows:
    """One CheXpert CSV: paths, patients, views, projections, label matrix (NaN = blank)."""

    def __init__(self, path: Path, dataset: str) -> None:
        self.path = path
        table = read_table(path, dataset=dataset, delimiter=",")
        c_path = table.column("Path")
        c_view = table.column("Frontal/Lateral")
        c_proj = table.find("AP/PA")
        c_labels = [table.column(label) for label in CHEXPERT_LABELS]
        unknown_cols = table.unknown(META_COLUMNS + CHEXPERT_LABELS)
        rows = [row for row in table.rows if row[c_path].strip()]
        self.paths: list[str] = [row[c_path].strip() for row in rows]
        self.patients: list[str] = []
        for rel in self.paths:
            match = _PATIENT.search(rel)
            self.patients.append((match.group(1).lstrip("0") or "0") if match
                                 else Path(rel).parent.parent.name)
        self.views = [row[c_view].strip().lower() for row in rows]
        self.projections = [row[c_proj].strip().upper() if c_proj is not None else ""
                            for row in rows]
        # 223,414 x 14 cells: compare as a numpy string array instead of cell by cell
        raw = np.array([[row[c] for c in c_labels] for row in rows], dtype=str)
        raw = raw.reshape(len(rows), len(CHEXPERT_LABELS))
        if raw.size and any(" " in v for v in np.unique(raw)):
            raw = np.char.strip(raw)
        labels = np.full(raw.shape, np.nan, dtype=np.float32)
        for text, value in _VALUES.items():
            labels[raw == text] = value
        odd: Counter[str] = Counter()
        unusual = ~np.isin(raw, list(_VALUES))
        for r, k in zip(*np.nonzero(unusual), strict=True):
            try:
                value = float(raw[r, k])
            except ValueError:
                value = np.nan
            if value in (1.0, 0.0, -1.0):
                labels[r, k] = value
            else:
                odd[f"{CHEXPERT_LABELS[k]}={str(raw[r, k])!r}"] += 1
        self.labels = labels
        self.problems = [
            warn_listed(dataset, f"unknown columns in {path.name} ignored", unknown_cols),
            warn_listed(dataset, f"unknown label values in {path.name} read as blank",
                        [f"{k} ({v})" for k, v in odd.most_common()]),
        ]


def _strip_prefix(rel: str) -> str:
    return _PREFIX.sub("", rel, count=1)


def _resolver(root: Path, csv_dir: Path, rels: list[str]):
    """Pick how CSV paths map to files (as str) from the first rows that exist on disk."""
    layouts = [(str(csv_dir), True), (str(root), False), (str(csv_dir.parent), False),
               (str(root), True)]

    def make(base: str, strip: bool):
        return lambda r: os.path.join(base, _strip_prefix(r) if strip else r)

    for rel in rels[:50]:
        for base, strip in layouts:
            if os.path.isfile(make(base, strip)(rel)):
                return make(base, strip)
    return make(*layouts[0])


def targets_for(labels: np.ndarray, uncertainty: str):
    """(multilabel, its mask or None, binary, its mask or None) from the raw label matrix."""
    known = ~np.isnan(labels)
    raw = np.where(known, labels, 0.0)  # blank = not mentioned = negative
    uncertain = raw == -1.0
    multi = np.where(uncertain, 1.0 if uncertainty == "ones" else 0.0, raw)
    pathology = np.array([c not in NOT_PATHOLOGY for c in CHEXPERT_LABELS])
    positive = (multi[:, pathology] == 1.0).any(axis=1)
    binary = positive.astype(np.float32)[:, None]
    if uncertainty != "ignore":
        return multi.astype(np.float32), None, binary, None
    multi_mask = ~uncertain
    binary_mask = (positive | ~uncertain[:, pathology].any(axis=1))[:, None]
    return multi.astype(np.float32), multi_mask, binary, binary_mask


class CheXpertDataset(TrainingDataset):
    """CheXpert for the ``multilabel`` (14 labels) and ``binary`` tasks (see the module doc)."""


def make_chexpert(*, split: str, image_size: int, root: Path, seed: int,
                  uncertainty: str = "zeros", views: str = "frontal", projection: str = "all",
                  val_fraction: float = 0.1) -> CheXpertDataset:
    name = "chexpert"
    check_split(split, name)
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; expected layout: {LAYOUT}")
    root = Path(root)
    csv_dir = find_csv_dir(root, name)
    source = _Rows(csv_dir / ("valid.csv" if split == "test" else "train.csv"), name)
    problems = list(source.problems)
    rows = list(range(len(source.paths)))
    if split != "test":
        val_patients = holdout(source.patients, val_fraction, seed)
        keep_val = split == "val"
        rows = [i for i in rows if (source.patients[i] in val_patients) == keep_val]
    if views != "all":
        rows = [i for i in rows if source.views[i] == views]
    if projection != "all":
        rows = [i for i in rows if source.projections[i] == projection.upper()]
    resolve = _resolver(root, csv_dir, [source.paths[i] for i in rows])
    paths = [inside(root, resolve(source.paths[i]), dataset=name, source=source.path,
                    row=f"data row {i + 1}") for i in rows]
    present = [os.path.isfile(p) for p in paths]
    problems.append(warn_listed(
        name, f"images listed in {source.path.name} not found on disk, skipped",
        [source.paths[i] for i, ok in zip(rows, present, strict=True) if not ok]))
    rows = [i for i, ok in zip(rows, present, strict=True) if ok]
    paths = [p for p, ok in zip(paths, present, strict=True) if ok]
    if not rows:
        raise DataError(f"{name}: the {split} split is empty ({views} views, projection "
                        f"{projection}; no listed image found under {root}); "
                        f"expected layout: {LAYOUT}")

    multi, multi_mask, binary, binary_mask = targets_for(source.labels[rows], uncertainty)
    masks = None
    if multi_mask is not None:
        masks = {"multilabel": torch.from_numpy(multi_mask),
                 "binary": torch.from_numpy(binary_mask)}
    ds = CheXpertDataset(
        name=name, split=split, image_size=image_size, paths=paths,
        ids=[_strip_prefix(source.paths[i]) for i in rows],
        targets={"multilabel": torch.from_numpy(multi), "binary": torch.from_numpy(binary)},
        target_masks=masks,
        outputs={"multilabel": list(CHEXPERT_LABELS), "binary": ["unhealthy"]},
    )
    ds.problems = [p for p in problems if p]
    raw = source.labels[rows]
    n_train = len(source.paths) if split != "test" else _count_rows(csv_dir / "train.csv")
    n_valid = len(source.paths) if split == "test" else _count_rows(csv_dir / "valid.csv")
    how = ("valid.csv" if split == "test" else
           f"train.csv, {'held-out' if split == 'val' else 'remaining'} patients "
           f"(val = {val_fraction:.0%} of patients, seed {seed})")
    ds.summary = [
        f"CheXpert: {fmt(n_train)} images in train.csv, {fmt(n_valid)} in valid.csv, "
        f"{len(CHEXPERT_LABELS)} labels",
        f"  {split} split: {fmt(len(rows))} images of "
        f"{fmt(len({source.patients[i] for i in rows}))} patients from {how}; views {views}, "
        f"projection {projection}, uncertainty {uncertainty} (U-{uncertainty.capitalize()})",
        "  positive / uncertain: " + ", ".join(
            f"{c} {fmt(int((raw[:, k] == 1).sum()))}/{fmt(int((raw[:, k] == -1).sum()))}"
            for k, c in enumerate(CHEXPERT_LABELS)),
        f"  binary: {fmt(int(binary.sum()))} unhealthy, "
        f"{fmt(int(len(rows) - binary.sum()))} healthy",
    ]
    return ds


def _count_rows(path: Path) -> int:
    with open(path, "rb") as fh:  # counting lines needs no decoding (read_table warns about that)
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name="chexpert",
        factory=make_chexpert,
        tasks=("multilabel", "binary"),
        needs_root=True,
        description="CheXpert: 14 labels incl. No Finding (multi-label) or healthy/unhealthy",
        options=(
            Option("uncertainty", str, "zeros",
                   "uncertain (-1) labels: ignore (masked out of the loss), zeros or ones",
                   choices=("ignore", "zeros", "ones")),
            Option("views", str, "frontal", "which views to use (Frontal/Lateral column)",
                   choices=("frontal", "lateral", "all")),
            Option("projection", str, "all", "AP/PA column filter", choices=("all", "ap", "pa")),
            Option("val_fraction", float, 0.1,
                   "share of train.csv patients held out as the val split"),
        ),
    ))
