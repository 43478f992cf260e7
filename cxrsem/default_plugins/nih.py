"""NIH ChestX-ray14 (Wang et al., CVPR 2017): the ``nih`` dataset and the ``nih-bbox`` concept set.

Layout on disk, exactly as NIH distributes it (``ROOT`` = ``--data-root nih=ROOT``)::

    ROOT/Data_Entry_2017_v2020.csv    (or the older Data_Entry_2017.csv)
    ROOT/BBox_List_2017.csv           (nih-bbox only)
    ROOT/train_val_list.txt           official patient-wise split, one file name per line
    ROOT/test_list.txt
    ROOT/images/00000001_000.png ...  one flat folder, or the unpacked archives:
    ROOT/images_001/images/00000001_000.png ... ROOT/images_012/images/...

What is read:

- ``Data_Entry``: ``Image Index`` (the file name -- never rebuilt from ``Patient ID``/``Follow-up
  #``), ``Finding Labels`` (``|``-joined; ``No Finding`` alone means none of the 14), ``Patient ID``
  (for the validation split) and ``View Position``.  Columns are found by name; the bracketed names
  ``OriginalImage[Width,Height]`` that CSV splits into two columns, ``Patient Sex`` (v2020) for
  ``Patient Gender`` and a trailing comma in the header are all tolerated.  Unknown labels are
  warned about and ignored.
- ``BBox_List_2017.csv``: header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (9 header fields, 6
  per row), boxes as float pixels (top-left, width, height) of the distributed 1024 x 1024 PNGs.
  Boxes are rasterised at whatever mask size the caller asks for, from that 1024 x 1024 frame (so a
  user's down-scaled copy of the PNGs still lines up).  The box label ``Infiltrate`` and the image
  label ``Infiltration`` are one concept, named ``Infiltration``; either spelling is accepted.

Splits: ``test`` = ``test_list.txt``; ``train``/``val`` split ``train_val_list.txt`` by patient, a
seeded ``val_fraction`` of its patients going to ``val``; images of a patient that also appears in
``test_list.txt`` are dropped from train/val so that no patient is in two splits.  Without both list
files the whole of ``Data_Entry`` is split 70/10/20 by patient (with a warning).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from cxrsem.components import ConceptSetInfo, DatasetInfo, Option
from cxrsem.errors import DataError
from cxrsem.hookspecs import hookimpl

from ._io import (
    ConceptSet,
    TrainingDataset,
    check_split,
    fmt,
    holdout,
    index_images,
    read_table,
    readable_sizes,
    require_file,
    split_three,
    subset,
    warn_listed,
)

NIH_LABELS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]
BOX_CONCEPTS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax"]
NO_FINDING = "No Finding"
BOX_FRAME = (1024.0, 1024.0)  # the boxes' pixel frame: the distributed 1024 x 1024 PNGs
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_FILE = "BBox_List_2017.csv"
LAYOUT = ("ROOT/Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv), ROOT/BBox_List_2017.csv, "
          "ROOT/train_val_list.txt, ROOT/test_list.txt and the PNGs in ROOT/images/ or "
          "ROOT/images_001/images/ ... ROOT/images_012/images/")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


_CANONICAL = {_key(n): n for n in NIH_LABELS}
_CANONICAL[_key("Infiltrate")] = "Infiltration"
_SEEN: dict[str, str | None] = {}


def canonical_label(name: str) -> str | None:
    """The canonical NIH label for ``name`` (case, space and ``_`` insensitive; ``Infiltrate`` ->
    ``Infiltration``), or None if unknown."""
    if name not in _SEEN:  # 10^5 rows use a dozen spellings
        _SEEN[name] = _CANONICAL.get(_key(name))
    return _SEEN[name]


def image_index(root: Path, dataset: str) -> dict[str, str]:
    """File name -> path over ``images/`` and ``images_NNN/images/`` (both layouts tolerated)."""
    folders = [root / "images"]
    folders += sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())
    folders += sorted(p for p in root.glob("images_*") if p.is_dir())
    index = index_images(folders, (".png", ".jpg", ".jpeg"))
    if not index:
        raise DataError(f"{dataset}: no images found in {root}/images/ or {root}/images_*/images/; "
                        f"expected layout: {LAYOUT}")
    return index


class _Entries:
    """The rows of Data_Entry that matter: names, 14-label matrix, patients, views."""

    def __init__(self, root: Path, dataset: str) -> None:
        self.path = require_file(root, ENTRY_FILES, dataset=dataset, layout=LAYOUT)
        table = read_table(self.path, dataset=dataset, delimiter=",")
        c_name = table.column("Image Index")
        c_labels = table.column("Finding Labels")
        c_patient = table.column("Patient ID")
        c_view = table.find("View Position")
        self.names: list[str] = []
        self.patients: list[str] = []
        self.views: list[str] = []
        combos: list[int] = []  # per row: index of its distinct Finding Labels string
        combo_index: dict[str, int] = {}
        unknown: Counter[str] = Counter()
        bad_rows = []
        for row in table.rows:
            name = row[c_name].strip()
            if not name:
                bad_rows.append(",".join(row)[:60])
                continue
            self.names.append(name)
            combos.append(combo_index.setdefault(row[c_labels], len(combo_index)))
            patient = row[c_patient].strip()
            self.patients.append(str(int(patient)) if patient.isdigit() else patient)
            self.views.append(row[c_view].strip().upper() if c_view is not None else "")
        # ~800 distinct label strings among 112,120 rows: parse each once
        vectors = np.zeros((len(combo_index) + 1, len(NIH_LABELS)), dtype=np.float32)
        healthy = np.zeros(len(combo_index) + 1, dtype=bool)
        position = {n: i for i, n in enumerate(NIH_LABELS)}
        for text, k in combo_index.items():
            findings = [f.strip() for f in text.split("|") if f.strip()]
            for finding in findings:
                label = None if finding == NO_FINDING else canonical_label(finding)
                if label is not None:
                    vectors[k, position[label]] = 1.0
                elif finding != NO_FINDING:
                    unknown[finding] += 1
            healthy[k] = bool(findings) and all(f == NO_FINDING for f in findings)
        rows = np.asarray(combos, dtype=np.int64)
        self.labels = vectors[rows]
        self.healthy = healthy[rows]
        self.problems = [
            warn_listed(dataset, f"rows without an Image Index in {self.path.name} skipped",
                        bad_rows),
            warn_listed(dataset, f"unknown labels in {self.path.name} ignored",
                        [f"{k!r}" for k, _ in unknown.most_common()]),
        ]


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"nih: cannot read {path}: {exc}") from None
    return [line.strip() for line in lines if line.strip()]


def _box_rows(root: Path, dataset: str):
    """(image name, canonical concept, (x, y, w, h)) for every valid row of BBox_List_2017.csv."""
    path = require_file(root, (BBOX_FILE,), dataset=dataset, layout=LAYOUT)
    table = read_table(path, dataset=dataset, delimiter=",")
    c_name = table.column("Image Index")
    c_label = table.column("Finding Label")
    c_box = table.column("Bbox [x,y,w,h]", "Bbox")
    boxes = []
    unknown: Counter[str] = Counter()
    bad: list[str] = []
    for row in table.rows:
        name = row[c_name].strip()
        label = canonical_label(row[c_label].strip())
        if label is None:
            unknown[row[c_label].strip()] += 1
            continue
        try:
            x, y, w, h = (float(v) for v in row[c_box:c_box + 4])
        except ValueError:
            bad.append(f"{name} ({','.join(row[c_box:c_box + 4])})")
            continue
        if not (w > 0 and h > 0) or not all(np.isfinite([x, y, w, h])):
            bad.append(f"{name} (w={w}, h={h})")
            continue
        boxes.append((name, label, (x, y, w, h)))
    problems = [
        warn_listed(dataset, f"box rows with unknown labels in {path.name} skipped",
                    [f"{k!r} ({v})" for k, v in unknown.most_common()]),
        warn_listed(dataset, f"box rows with malformed or empty boxes in {path.name} skipped", bad),
    ]
    return path, boxes, problems


def _headline(root: Path, n_entries: int | None) -> str:
    """``NIH: 112,120 images, 984 boxes on 880 images, 8 box concepts``."""
    parts = [f"{fmt(n_entries)} images" if n_entries is not None else "images"]
    if (root / BBOX_FILE).is_file():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, boxes, _ = _box_rows(root, "nih")
        parts.append(f"{fmt(len(boxes))} boxes on {fmt(len({b[0] for b in boxes}))} images, "
                     f"{len({b[1] for b in boxes})} box concepts")
    return "NIH: " + ", ".join(parts)


class NIHDataset(TrainingDataset):
    """NIH ChestX-ray14 for the ``multilabel`` (14 findings) and ``binary`` (1 = not No Finding)
    tasks; see the module docstring for layout and splits."""


def make_nih(*, split: str, image_size: int, root: Path, seed: int, val_fraction: float = 0.1,
             view: str = "all") -> NIHDataset:
    name = "nih"
    check_split(split, name)
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; expected layout: {LAYOUT}")
    root = Path(root)
    entries = _Entries(root, name)
    problems = [p for p in entries.problems if p]
    tv_path, test_path = root / "train_val_list.txt", root / "test_list.txt"
    row_of = {n: i for i, n in enumerate(entries.names)}

    if tv_path.is_file() and test_path.is_file():
        train_val, test = _read_list(tv_path), _read_list(test_path)
        unlisted = [n for n in train_val + test if n not in row_of]
        problems.append(warn_listed(
            name, f"images named in the split lists but absent from {entries.path.name} skipped",
            unlisted))
        test_patients = {entries.patients[row_of[n]] for n in test if n in row_of}
        tv_rows = [row_of[n] for n in train_val if n in row_of]
        leaking = [entries.names[i] for i in tv_rows if entries.patients[i] in test_patients]
        problems.append(warn_listed(
            name, "train_val_list.txt images of patients who are also in test_list.txt dropped "
                  "(no patient may be in two splits)", leaking))
        tv_rows = [i for i in tv_rows if entries.patients[i] not in test_patients]
        val_patients = holdout((entries.patients[i] for i in tv_rows), val_fraction, seed)
        rows = {
            "train": [i for i in tv_rows if entries.patients[i] not in val_patients],
            "val": [i for i in tv_rows if entries.patients[i] in val_patients],
            "test": [row_of[n] for n in test if n in row_of],
        }[split]
        how = (f"official train_val_list.txt / test_list.txt; val = {val_fraction:.0%} of the "
               f"train_val patients (seed {seed})")
    elif tv_path.is_file() or test_path.is_file():
        missing = test_path if tv_path.is_file() else tv_path
        raise DataError(f"{name}: {missing.name} not found in {root} (its partner is there); "
                        f"expected layout: {LAYOUT}")
    else:
        problems.append(warn_listed(
            name, "official split files missing, so the images are split 70/10/20 by patient",
            ["train_val_list.txt", "test_list.txt"]))
        assign = split_three(entries.patients, (0.7, 0.1, 0.2), seed)
        rows = [i for i, p in enumerate(entries.patients) if assign[p] == split]
        how = f"70/10/20 by patient (seed {seed}); official list files absent"

    if view != "all":
        rows = [i for i in rows if entries.views[i] == view.upper()]
    images = image_index(root, name)
    missing = [entries.names[i] for i in rows if entries.names[i] not in images]
    problems.append(warn_listed(name, f"listed {split} images not found on disk, skipped", missing))
    rows = [i for i in rows if entries.names[i] in images]
    if not rows:
        raise DataError(f"{name}: the {split} split is empty (no listed image found on disk under "
                        f"{root}); expected layout: {LAYOUT}")

    labels = torch.from_numpy(entries.labels[rows])
    binary = torch.from_numpy((~entries.healthy[rows]).astype(np.float32)[:, None])
    ds = NIHDataset(
        name=name, split=split, image_size=image_size,
        paths=[images[entries.names[i]] for i in rows],
        ids=[entries.names[i] for i in rows],
        targets={"multilabel": labels, "binary": binary},
        outputs={"multilabel": list(NIH_LABELS), "binary": ["unhealthy"]},
    )
    ds.problems = [p for p in problems if p]
    patients = {entries.patients[i] for i in rows}
    positives = labels.sum(0).to(torch.int64).tolist()
    ds.summary = [
        _headline(root, len(entries.names)),
        f"  {split} split: {fmt(len(rows))} images of {fmt(len(patients))} patients ({how}"
        f"{'' if view == 'all' else f'; view {view.upper()} only'})",
        f"  No Finding {fmt(int((binary == 0).sum()))}; positives: "
        + ", ".join(f"{n} {fmt(c)}" for n, c in zip(NIH_LABELS, positives, strict=True)),
    ]
    return ds


class NIHBoxes(ConceptSet):
    """The 984 NIH boxes (880 images, 8 concepts) rasterised at the requested mask size."""

    def __init__(self, *, boxes: list[list[tuple[int, tuple[float, float, float, float]]]],
                 root: Path | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._boxes = boxes
        self._root = root
        self._groups: list[str] | None = None

    def groups(self) -> list[str]:
        """The patient of every item (optional concept-set contract): Data_Entry's ``Patient ID``
        of the image (read once, on first call); an image without a Data_Entry row (or a root
        without Data_Entry) is its own group, ``image:<file name>``."""
        if self._groups is None:
            patients: dict[str, str] = {}
            entry = next((self._root / n for n in ENTRY_FILES
                          if self._root is not None and (self._root / n).is_file()), None)
            if entry is not None:
                table = read_table(entry, dataset=self.name, delimiter=",")
                c_name, c_patient = table.column("Image Index"), table.column("Patient ID")
                wanted = set(self.ids)
                for row in table.rows:
                    name, patient = row[c_name].strip(), row[c_patient].strip()
                    if name in wanted and patient:
                        patients[name] = str(int(patient)) if patient.isdigit() else patient
            self._groups = [patients.get(n, f"image:{n}") for n in self.ids]
        return list(self._groups)

    def _masks(self, index: int) -> np.ndarray:
        from ._io import box_mask

        masks = np.zeros((len(self.concepts), self.mask_size, self.mask_size), dtype=bool)
        for c, box in self._boxes[index]:
            box_mask(masks[c], box, BOX_FRAME)
        return masks

    def concept_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.concepts, 0)
        for boxes in self._boxes:
            for c in {c for c, _ in boxes}:
                counts[self.concepts[c]] += 1
        return counts


def make_nih_bbox(*, image_size: int, mask_size: int, root: Path, seed: int,
                  limit: int = 0) -> NIHBoxes:
    name = "nih-bbox"
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; expected layout: {LAYOUT}")
    root = Path(root)
    _, rows, problems = _box_rows(root, name)
    by_image: dict[str, list[tuple[int, tuple[float, float, float, float]]]] = defaultdict(list)
    position = {c: i for i, c in enumerate(BOX_CONCEPTS)}
    for image, label, box in rows:
        if label not in position:  # a valid NIH label without boxes in the official list
            continue
        by_image[image].append((position[label], box))
    names = sorted(by_image)
    images = image_index(root, name)
    missing = [n for n in names if n not in images]
    problems.append(warn_listed(name, "boxed images not found on disk, skipped", missing))
    names = [n for n in names if n in images]
    ok, _, unreadable = readable_sizes(name, [images[n] for n in names])
    problems.append(warn_listed(name, "boxed images that cannot be opened, skipped", unreadable))
    names = [names[i] for i in ok]
    if not names:
        raise DataError(f"{name}: none of the boxed images of {BBOX_FILE} could be found and "
                        f"opened under {root}; expected layout: {LAYOUT}")
    names = [names[i] for i in subset(len(names), limit, seed)]
    ds = NIHBoxes(name=name, image_size=image_size, mask_size=mask_size,
                  paths=[images[n] for n in names], ids=names, concepts=BOX_CONCEPTS,
                  boxes=[by_image[n] for n in names], root=root)
    ds.problems = [p for p in problems if p]
    entries = None
    for candidate in ENTRY_FILES:
        if (root / candidate).is_file():
            with open(root / candidate, "rb") as fh:  # counting lines needs no decoding
                entries = max(sum(1 for line in fh if line.strip()) - 1, 0)
            break
    n_boxes = sum(len(by_image[n]) for n in names)
    ds.summary = [
        _headline(root, entries if entries is not None else len(images)),
        f"  concept set: {fmt(len(names))} images with {fmt(n_boxes)} boxes"
        + (f" (a seeded sample of {limit})" if 0 < limit < len(by_image) else "")
        + f", rasterised at {mask_size} x {mask_size} from the 1024 x 1024 frame",
    ]
    return ds


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name="nih",
        factory=make_nih,
        tasks=("multilabel", "binary"),
        needs_root=True,
        description="NIH ChestX-ray14: 14 findings (multi-label) or No Finding vs. any (binary)",
        options=(
            Option("val_fraction", float, 0.1,
                   "share of train_val_list.txt patients held out as the val split"),
            Option("view", str, "all", "View Position to keep", choices=("all", "pa", "ap")),
        ),
    ))


@hookimpl
def register_concept_sets(register) -> None:
    register(ConceptSetInfo(
        name="nih-bbox",
        factory=make_nih_bbox,
        needs_root=True,
        annotation="boxes",
        description="NIH ChestX-ray14 bounding boxes: 984 boxes on 880 images, 8 concepts",
        options=(Option("limit", int, 0, "use a seeded sample of this many images (0 = all)"),),
    ))
