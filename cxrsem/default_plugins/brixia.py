"""BrixIA COVID-19 severity scores (Signoroni et al., MedIA 2021): ``brixia`` and ``brixia-cohen``.

Both feed the tasks ``zones`` (six lung zones A-F, each 0-3: long ``[6]``), ``global-score`` (their
sum 0-18: float ``[1]``) and ``binary`` (1 = unhealthy; healthy when all six zones are 0, as in the
paper's section 3.3).  Zones A/B/C are the patient's right lung (image left), D/E/F the left; A/D
upper, B/E middle, C/F lower.

``brixia`` -- the full dataset (4,707 CXRs; registration required).  ``ROOT``::

    ROOT/metadata_global_v2.csv        ;-separated, read by column name
    ROOT/metadata_consensus_v1.csv     optional: consensus labels of the test images
    ROOT/dicom_clean/<Filename>        the DICOMs (needs the ``cxrsem[dicom]`` extra), or
    ROOT/{dicom_clean,images,png,jpg}/<stem>.png|.jpg   pre-converted copies with the same stem

``metadata_global_v2.csv`` columns used: ``Filename``, ``BrixiaScore`` (six digits for zones A-F;
spreadsheets and pandas read it as a number and drop leading zeros, so ``1`` means ``000001`` and
``1.0`` is tolerated too), ``BrixiaScoreGlobal`` (checked against the zone sum),
``ConsensusTestset`` and ``Subject``.  DICOMs are decoded by :mod:`cxrsem.imageio` (modality
rescale, VOI window when present -- ``dicom_window=bits`` uses the BitsStored range instead -- and
MONOCHROME1 inverted). Splits: ``test`` = the rows with ``ConsensusTestset == 1``; the other rows
are split by ``Subject``, a seeded ``val_fraction`` of the subjects going to ``val``.
``test_labels=consensus`` replaces the test targets with the consensus file's ``ModeA``..``ModeF``
(global score = their sum); ``exclude_test_patients=true`` also drops from train/val every subject
that has a test image.

``brixia-cohen`` -- the public subset of Cohen's images scored by the BrixIA radiologists.  ``ROOT``
is the repository folder (``ROOT/data/public-annotations.csv`` and
``ROOT/data/public-cohen-subset/``; ``ROOT`` may also be ``data/`` itself).  The CSV is UTF-8 with a
byte-order mark, with columns ``filename, S-A..S-F, S-Global, J-A..J-F, J-Global`` (S = senior, J =
junior radiologist). ``rater=senior|junior`` takes that reader's zones; ``rater=mean`` averages the
two per zone and rounds half up (``(S + J + 1) // 2``, so 1 and 2 give 2), the global score being
the sum of those rounded zones.  Listed images that are missing (6 in the published folder) are
skipped with one warning naming them.  The set has no patient ids, so the split is patient-agnostic:
the listed file names are put in a seeded order (sha256 of seed and name) and cut 70/15/15 into
train/val/test -- the cut is made over all listed names, so an image's split does not depend on
which files are present. Some patients contribute several images (e.g. ``...-day0`` / ``...-day6``):
they may fall in different splits.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from cxrsem.components import DatasetInfo, Option
from cxrsem.errors import DataError
from cxrsem.hookspecs import hookimpl
from cxrsem.imageio import read_image
from cxrsem.tasks import ZONE_NAMES

from ._io import (
    TrainingDataset,
    check_split,
    fmt,
    holdout,
    index_images,
    inside,
    read_table,
    require_file,
    split_three,
    warn_listed,
)

TASKS = ("zones", "global-score", "binary")
OUTPUTS = {"zones": list(ZONE_NAMES), "global-score": ["Brixia score"], "binary": ["unhealthy"]}
GLOBAL_FILES = ("metadata_global_v2.csv", "metadata_global_v1.csv")
CONSENSUS_FILE = "metadata_consensus_v1.csv"
IMAGE_DIRS = ("dicom_clean", "images", "png", "jpg")
LAYOUT = ("ROOT/metadata_global_v2.csv (;-separated), optional ROOT/metadata_consensus_v1.csv, and "
          "the DICOMs in ROOT/dicom_clean/ (or converted .png/.jpg with the same stem in "
          "ROOT/dicom_clean/, ROOT/images/, ROOT/png/ or ROOT/jpg/)")
COHEN_LAYOUT = ("ROOT/data/public-annotations.csv and the images in ROOT/data/public-cohen-subset/ "
                "(ROOT = the Brixia-score-COVID-19 repository folder)")
COHEN_SPLIT = (0.70, 0.15, 0.15)
_PREFERENCE = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def parse_brixia_score(raw: str) -> list[int] | None:
    """``"010230"`` / ``"10230"`` / ``"10230.0"`` -> ``[0, 1, 0, 2, 3, 0]``; None when invalid."""
    text = raw.strip()
    if not text.isdigit():
        try:
            value = float(text)
        except ValueError:
            return None
        if not value.is_integer() or value < 0:
            return None
        text = str(int(value))
    if len(text) > len(ZONE_NAMES):
        return None
    digits = [int(c) for c in text.zfill(len(ZONE_NAMES))]
    return digits if all(0 <= d <= 3 for d in digits) else None


def _truthy(raw: str) -> bool:
    return raw.strip().lower() in {"1", "1.0", "true", "yes"}


def zone_targets(zones: np.ndarray) -> dict[str, torch.Tensor]:
    """The three task targets from an ``[N, 6]`` integer zone matrix."""
    zones_t = torch.as_tensor(np.asarray(zones, dtype=np.int64))
    total = zones_t.sum(dim=1, keepdim=True).to(torch.float32)
    return {"zones": zones_t, "global-score": total, "binary": (total > 0).to(torch.float32)}


class BrixiaDataset(TrainingDataset):
    """BrixIA severity scores for the ``zones``, ``global-score`` and ``binary`` tasks."""


def _summary_counts(zones: np.ndarray) -> str:
    total = zones.sum(axis=1)
    healthy = int((total == 0).sum())
    return (f"  global score mean {total.mean():.2f} (0-18), {fmt(healthy)} healthy (all zones 0), "
            f"{fmt(len(total) - healthy)} unhealthy; zone means "
            + ", ".join(f"{z} {m:.2f}"
                        for z, m in zip(ZONE_NAMES, zones.mean(axis=0), strict=True)))


# ---------------------------------------------------------------------------------------------
# Full BrixIA


def _image_lookup(root: Path, image_dir: str, dataset: str):
    dirs = [Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir] if image_dir \
        else [root / d for d in IMAGE_DIRS]
    existing = [d for d in dirs if d.is_dir()]
    if not existing:
        where = ", ".join(f"{d}/" for d in dirs)
        raise DataError(f"{dataset}: no image folder found ({where}); expected layout: {LAYOUT}")
    # a converted copy is found by stem: <stem>.png for <stem>.dcm; DICOMs first, then PNG, JPEG
    by_stem: dict[str, str] = {}
    for folder in existing:
        found = index_images([folder], _PREFERENCE)
        ranked = sorted(found.items(),
                        key=lambda kv: _PREFERENCE.index(os.path.splitext(kv[0])[1].lower()))
        for fname, path in ranked:
            by_stem.setdefault(os.path.splitext(fname)[0], path)

    def lookup(filename: str) -> str | None:
        for folder in existing:
            exact = inside(folder, os.path.join(folder, filename), dataset=dataset,
                           source="its metadata", row=f"Filename {filename!r}")
            if os.path.isfile(exact):
                return exact
        return by_stem.get(os.path.splitext(filename)[0])

    return lookup, existing


def make_brixia(*, split: str, image_size: int, root: Path, seed: int, val_fraction: float = 0.1,
                test_labels: str = "original", exclude_test_patients: bool = False,
                image_dir: str = "", dicom_window: str = "voi") -> BrixiaDataset:
    name = "brixia"
    check_split(split, name)
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; expected layout: {LAYOUT}")
    root = Path(root)
    meta = require_file(root, GLOBAL_FILES, dataset=name, layout=LAYOUT)
    table = read_table(meta, dataset=name)  # ';' in the published file, detected from the header
    c_file = table.column("Filename")
    c_score = table.column("BrixiaScore")
    c_global = table.find("BrixiaScoreGlobal")
    c_test = table.column("ConsensusTestset")
    c_subject = table.column("Subject")

    files: list[str] = []
    subjects: list[str] = []
    is_test: list[bool] = []
    zones: list[list[int]] = []
    bad: list[str] = []
    mismatch: list[str] = []
    for row in table.rows:
        filename = row[c_file].strip()
        score = parse_brixia_score(row[c_score])
        if not filename or score is None:
            bad.append(f"{filename or '?'} (BrixiaScore {row[c_score].strip()!r})")
            continue
        if c_global is not None and row[c_global].strip():
            try:
                if float(row[c_global]) != sum(score):
                    mismatch.append(f"{filename} ({row[c_global].strip()} vs {sum(score)})")
            except ValueError:
                mismatch.append(f"{filename} ({row[c_global].strip()!r})")
        files.append(filename)
        subjects.append(row[c_subject].strip() or filename)
        is_test.append(_truthy(row[c_test]))
        zones.append(score)
    problems = [
        warn_listed(name, f"rows of {meta.name} with an invalid BrixiaScore skipped", bad),
        warn_listed(name, f"rows of {meta.name} whose BrixiaScoreGlobal is not the sum of the "
                          "zones (the zones are used)", mismatch),
    ]
    if not files:
        raise DataError(f"{name}: {meta} has no usable rows; expected layout: {LAYOUT}")

    test_subjects = {s for s, t in zip(subjects, is_test, strict=True) if t}
    if split == "test":
        rows = [i for i, t in enumerate(is_test) if t]
        how = "ConsensusTestset == 1"
    else:
        pool = [i for i, t in enumerate(is_test) if not t]
        if exclude_test_patients:
            pool = [i for i in pool if subjects[i] not in test_subjects]
        val_subjects = holdout((subjects[i] for i in pool), val_fraction, seed)
        rows = [i for i in pool if (subjects[i] in val_subjects) == (split == "val")]
        excluded = "; subjects with test images excluded" if exclude_test_patients else ""
        how = (f"ConsensusTestset == 0 split by Subject (val = {val_fraction:.0%} of subjects, "
               f"seed {seed}{excluded})")

    zone_matrix = np.asarray(zones, dtype=np.int64)
    if split == "test" and test_labels == "consensus":
        consensus = _read_consensus(root, name)
        lacking = [files[i] for i in rows if files[i] not in consensus]
        problems.append(warn_listed(name, f"test images without labels in {CONSENSUS_FILE} skipped",
                                    lacking))
        rows = [i for i in rows if files[i] in consensus]
        for i in rows:
            zone_matrix[i] = consensus[files[i]]
        how += f"; consensus labels (ModeA-F of {CONSENSUS_FILE})"

    lookup, folders = _image_lookup(root, image_dir, name)
    paths = [lookup(files[i]) for i in rows]
    problems.append(warn_listed(name, f"{split} images listed in {meta.name} not found, skipped",
                                [files[i] for i, p in zip(rows, paths, strict=True) if p is None]))
    keep = [k for k, p in enumerate(paths) if p is not None]
    rows, paths = [rows[k] for k in keep], [paths[k] for k in keep]
    if not rows:
        raise DataError(f"{name}: the {split} split is empty (no listed image found in "
                        f"{', '.join(map(str, folders))}); expected layout: {LAYOUT}")

    selected = zone_matrix[rows]
    reader = functools.partial(read_image, voi=dicom_window == "voi")
    ds = BrixiaDataset(name=name, split=split, image_size=image_size, paths=paths,
                       ids=[files[i] for i in rows], targets=zone_targets(selected),
                       outputs=OUTPUTS, reader=reader)
    ds.problems = [p for p in problems if p]
    split_subjects = {subjects[i] for i in rows}
    n_test = sum(is_test)
    ds.summary = [
        f"BrixIA: {fmt(len(files))} images of {fmt(len(set(subjects)))} subjects in {meta.name}, "
        f"{fmt(n_test)} in the consensus test set",
        f"  {split} split: {fmt(len(rows))} images of {fmt(len(split_subjects))} subjects ({how})"
        + (f"; {fmt(len(split_subjects & test_subjects))} of these subjects also have test images"
           if split != "test" and not exclude_test_patients else ""),
        _summary_counts(selected),
    ]
    return ds


def _read_consensus(root: Path, dataset: str) -> dict[str, list[int]]:
    path = require_file(root, (CONSENSUS_FILE,), dataset=dataset, layout=LAYOUT)
    table = read_table(path, dataset=dataset)
    c_file = table.column("Filename")
    c_modes = [table.column(f"Mode{z}") for z in ZONE_NAMES]
    out: dict[str, list[int]] = {}
    bad = []
    for row in table.rows:
        try:
            modes = [int(float(row[c])) for c in c_modes]
        except ValueError:
            bad.append(row[c_file].strip())
            continue
        if all(0 <= m <= 3 for m in modes):
            out[row[c_file].strip()] = modes
        else:
            bad.append(row[c_file].strip())
    warn_listed(dataset, f"rows of {CONSENSUS_FILE} with invalid modes skipped", bad)
    return out


# ---------------------------------------------------------------------------------------------
# Cohen subset


def _cohen_files(root: Path, dataset: str) -> tuple[Path, Path]:
    for base in (root / "data", root):
        if (base / "public-annotations.csv").is_file():
            images = base / "public-cohen-subset"
            if not images.is_dir():
                raise DataError(f"{dataset}: {images}/ not found next to "
                                f"{base / 'public-annotations.csv'}; "
                                f"expected layout: {COHEN_LAYOUT}")
            return base / "public-annotations.csv", images
    raise DataError(f"{dataset}: data/public-annotations.csv not found in {root}; "
                    f"expected layout: {COHEN_LAYOUT}")


def read_cohen(root: Path, rater: str, dataset: str = "brixia-cohen"):
    """(csv path, image folder, [filename], zones [N, 6], problems) for the chosen rater."""
    csv_path, folder = _cohen_files(root, dataset)
    table = read_table(csv_path, dataset=dataset, delimiter=",")
    c_file = table.column("filename")
    cols = {r: [table.column(f"{r}-{z}") for z in ZONE_NAMES] for r in ("S", "J")}
    c_glob = {r: table.find(f"{r}-Global") for r in ("S", "J")}
    names: list[str] = []
    zones: list[list[int]] = []
    bad: list[str] = []
    mismatch: list[str] = []
    for row in table.rows:
        filename = row[c_file].strip()
        try:
            scores = {r: [int(float(row[c])) for c in cols[r]] for r in ("S", "J")}
        except ValueError:
            bad.append(filename or "?")
            continue
        if not filename or any(not 0 <= v <= 3 for r in scores for v in scores[r]):
            bad.append(filename or "?")
            continue
        for r in ("S", "J"):
            if c_glob[r] is not None and row[c_glob[r]].strip():
                try:
                    if int(float(row[c_glob[r]])) != sum(scores[r]):
                        mismatch.append(f"{filename} ({r}-Global)")
                except ValueError:
                    mismatch.append(f"{filename} ({r}-Global)")
        if rater == "senior":
            zones.append(scores["S"])
        elif rater == "junior":
            zones.append(scores["J"])
        else:  # mean, rounded half up
            zones.append([(s + j + 1) // 2 for s, j in zip(scores["S"], scores["J"], strict=True)])
        names.append(filename)
    problems = [
        warn_listed(dataset, f"rows of {csv_path.name} with invalid scores skipped", bad),
        warn_listed(dataset, f"rows of {csv_path.name} whose global score is not the sum of the "
                             "zones (the zones are used)", mismatch),
    ]
    return csv_path, folder, names, np.asarray(zones, dtype=np.int64).reshape(-1, 6), problems


def make_brixia_cohen(*, split: str, image_size: int, root: Path, seed: int,
                      rater: str = "senior") -> BrixiaDataset:
    name = "brixia-cohen"
    check_split(split, name)
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; "
                        f"expected layout: {COHEN_LAYOUT}")
    root = Path(root)
    csv_path, folder, names, zones, problems = read_cohen(root, rater, name)
    suffixes = {Path(n).suffix.lower() for n in names if Path(n).suffix}
    suffixes = tuple(suffixes | {".png", ".jpg", ".jpeg"})
    present = index_images([folder], suffixes)
    missing = [n for n in names if n not in present]
    problems.append(warn_listed(name, f"images listed in {csv_path.name} missing from "
                                      f"{folder.name}/, skipped", missing))
    assign = split_three(names, COHEN_SPLIT, seed)
    rows = [i for i, n in enumerate(names) if assign[n] == split and n in present]
    if not rows:
        raise DataError(f"{name}: the {split} split is empty (no listed image found in {folder}); "
                        f"expected layout: {COHEN_LAYOUT}")
    selected = zones[rows]
    ds = BrixiaDataset(name=name, split=split, image_size=image_size,
                       paths=[present[names[i]] for i in rows], ids=[names[i] for i in rows],
                       targets=zone_targets(selected), outputs=OUTPUTS)
    ds.problems = [p for p in problems if p]
    per_split = defaultdict(int)
    for n in names:
        if n in present:
            per_split[assign[n]] += 1
    ds.summary = [
        f"BrixIA (Cohen subset): {fmt(len(names))} scored images in {csv_path.name}, "
        f"{fmt(len(names) - len(missing))} found ({fmt(len(missing))} missing); rater {rater}",
        f"  {split} split: {fmt(len(rows))} images (patient-agnostic seeded 70/15/15 split of the "
        f"listed names, seed {seed}: train {per_split['train']}, val {per_split['val']}, "
        f"test {per_split['test']})",
        _summary_counts(selected),
    ]
    return ds


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name="brixia",
        factory=make_brixia,
        tasks=TASKS,
        needs_root=True,
        description="BrixIA COVID-19 severity: 6 zone scores 0-3, global score 0-18, healthy/not",
        options=(
            Option("val_fraction", float, 0.1, "share of non-test subjects held out as val"),
            Option("test_labels", str, "original",
                   "test targets: the original score or the consensus mode (metadata_consensus_v1)",
                   choices=("original", "consensus")),
            Option("exclude_test_patients", bool, False,
                   "drop from train/val every subject that has a consensus-test image"),
            Option("image_dir", str, "",
                   "folder with the images (default: dicom_clean/, images/, png/ or jpg/)"),
            Option("dicom_window", str, "voi",
                   "DICOM grey levels: the file's VOI window, or the full BitsStored range",
                   choices=("voi", "bits")),
        ),
    ))
    register(DatasetInfo(
        name="brixia-cohen",
        factory=make_brixia_cohen,
        tasks=TASKS,
        needs_root=True,
        description="BrixIA scores of 192 public images from Cohen's COVID-19 collection",
        options=(
            Option("rater", str, "senior",
                   "whose scores: senior, junior, or their per-zone mean rounded half up",
                   choices=("senior", "junior", "mean")),
        ),
    ))
