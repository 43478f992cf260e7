"""TorchXRayVision's dataset classes as cxrsem datasets and concept sets.

Registered names (see :mod:`cxrsem_xrv.plugin`): datasets ``xrv-nih`` (``xrv.datasets.NIH_Dataset``),
``xrv-chexpert`` (``CheX_Dataset``), ``xrv-padchest`` (``PC_Dataset``), ``xrv-rsna``
(``RSNA_Pneumonia_Dataset``); concept sets ``xrv-nih-bbox`` (NIH's boxes, which xrv serves as
``pathology_masks``) and ``xrv-rsna-bbox`` (RSNA's boxes).

What xrv does and what cxrsem adds:

* **xrv reads the files**: the real xrv class is built on the user's files and decides, as it
  does for xrv users, which rows exist (its ``views`` and ``unique_patients`` filters, PadChest's
  exclusions), what the labels are and how an image is decoded.  Every file is passed to it as an
  explicit local path that cxrsem checked first: a missing file is one :class:`DataError` naming it,
  and xrv's own defaults (``USE_INCLUDED_FILE``) are never left for it to resolve.  ``included``
  names the copy shipped inside the torchxrayvision package, resolved and checked here.
* **Labels** are harmonised with ``xrv.datasets.relabel_dataset`` to a fixed list: by default
  ``xrv.datasets.default_pathologies`` (18 names, the order of the head of every xrv DenseNet, so
  the outputs line up with ``--model xrv:densenet121-res224-*``).  A label xrv leaves NaN (not in
  the dataset, CheXpert's uncertain ``-1`` and blank) is target 0 with ``target_masks`` False.
* **Images**: xrv returns ``(2 * v / maxval - 1) * 1024`` (``maxval`` 255, PadChest 65535); cxrsem
  wants ``v / maxval`` in [0, 1], so ``x = (img + 1024) / 2048``, then cxrsem's resize
  (:func:`cxrsem.imageio.to_tensor`: antialiased bilinear, non-square images stretched).
* **Splits** (xrv has none): patient-wise, by ``sha256("<seed>:<patient>")`` alone.
* **Boxes** are rasterised at the requested mask size from xrv's parsed box tables in their
  1024 x 1024 frame, with cxrsem's rule (a cell is set when its centre is inside the box; a box
  that covers no centre still sets the cell of its centre).  At the image's own resolution and for
  whole-pixel boxes this is exactly xrv's ``pathology_masks`` (tested).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cxrsem.components import ConceptSetInfo, DatasetInfo, Option
from cxrsem.errors import DataError, UsageError
from cxrsem.imagecache import ServedImages
from cxrsem.imageio import to_tensor

from cxrsem_xrv.models import import_xrv

__all__ = ["CONCEPT_SETS", "DATASETS", "INCLUDED", "SPECS", "XrvBoxes", "XrvDataWarning", "XrvDataset",
           "box_cells", "from_xrv_pixels", "patient_split"]

SPLITS = ("train", "val", "test")
INCLUDED = "included"
BOX_FRAME = (1024.0, 1024.0)  # NIH's and RSNA's boxes are pixels of the 1024 x 1024 originals
NIH_BOX_CONCEPTS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                    "Pneumonia", "Pneumothorax")
RSNA_BOX_CONCEPTS = ("Lung Opacity",)
NIH_BBOX_HEADER_LINE = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"  # BBox_List_2017.csv's, verbatim


class XrvDataWarning(UserWarning):
    """A recoverable problem in an xrv dataset's files (missing images, bad boxes): items skipped."""


def _warn_listed(name: str, what: str, items: Sequence[str], *, limit: int = 10) -> str | None:
    """One warning for a whole kind of problem, naming the first few items; the message."""
    if not items:
        return None
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... and {len(items) - limit:,} more"
    message = f"{name}: {len(items):,} {what}: {shown}"
    warnings.warn(message, XrvDataWarning, stacklevel=3)
    return message


@contextlib.contextmanager
def _numpy_state_kept() -> Iterator[None]:
    """xrv's constructors call ``np.random.seed(seed)`` and its ``__getitem__`` draws from numpy's
    global generator even without transforms; keep whatever state the caller's generator had."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------------------------------------
# Pure parts: pixels, splits, boxes


def from_xrv_pixels(img: np.ndarray) -> np.ndarray:
    """Undo ``xrv.utils.normalize``: ``[1, H, W]`` (or ``[H, W]``) in [-1024, 1024] -> float32
    ``[H, W]`` in [0, 1], i.e. ``v / maxval`` of the stored pixel ``v``."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[0]
    return np.clip((img + 1024.0) / 2048.0, 0.0, 1.0).astype(np.float32)


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64  # uniform in [0, 1)


def patient_split(patient: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """``train``/``val``/``test`` of one patient from ``u = sha256("<seed>:<patient>")`` alone
    (first 8 bytes as a fraction of 2^64): ``test`` when ``u < test_fraction``, ``val`` when
    ``u < test_fraction + val_fraction``, else ``train``.

    A patient's split depends on nothing else -- not the rows, views or other patients present --
    so datasets built with other ``views`` or ``unique_patients`` never move a patient between
    splits (no train patient leaks into a test set built differently).  The price: the shares are
    the fractions only on average, unlike cxrsem's built-in loaders' exact-count hold-outs."""
    u = _unit(seed, patient)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _centres(extent: float, m: int) -> np.ndarray:
    return (np.arange(m, dtype=np.float64) + 0.5) * float(extent) / m


def box_cells(out: np.ndarray, box: Sequence[float], frame: tuple[float, float] = BOX_FRAME) -> None:
    """OR the box ``(x, y, w, h)`` (top-left and size in the ``frame = (W, H)`` pixel frame) into
    the bool ``[M, M]`` array ``out``: cell ``(i, j)`` stands for the frame point
    ``((j + 0.5) W / M, (i + 0.5) H / M)`` and is set when that point lies in ``[x, x + w) x
    [y, y + h)``.  A box that contains no cell centre sets the cell holding the centre of its part
    inside the frame, so a box is never lost at a small M."""
    m = out.shape[-1]
    x, y, w, h = (float(v) for v in box)
    fw, fh = frame
    cx, cy = _centres(fw, m), _centres(fh, m)
    cols = (cx >= x) & (cx < x + w)
    rows = (cy >= y) & (cy < y + h)
    if cols.any() and rows.any():
        out[np.ix_(rows, cols)] = True
        return
    x0, x1 = max(x, 0.0), min(x + w, fw)
    y0, y1 = max(y, 0.0), min(y + h, fh)
    if x1 > x0 and y1 > y0:
        col = min(int((x0 + x1) / 2 * m / fw), m - 1)
        row = min(int((y0 + y1) / 2 * m / fh), m - 1)
        out[row, col] = True


def _valid_box(box: Sequence[float], frame: tuple[float, float] = BOX_FRAME) -> bool:
    x, y, w, h = (float(v) for v in box)
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        return False
    return x < frame[0] and y < frame[1] and x + w > 0 and y + h > 0


# ---------------------------------------------------------------------------------------------
# The four xrv classes


def _nih_images(ds: Any) -> list[str]:
    return [str(v) for v in ds.csv["Image Index"]]


def _nih_patients(ds: Any) -> list[str]:
    return [str(v) for v in ds.csv["Patient ID"]]


_CHEX_PREFIXES = ("CheXpert-v1.0-small/", "CheXpert-v1.0/")


def _chex_images(ds: Any) -> list[str]:
    out = []
    for path in ds.csv["Path"]:
        for prefix in _CHEX_PREFIXES:  # what xrv's __getitem__ removes before joining imgpath
            path = str(path).replace(prefix, "")
        out.append(path)
    return out


def _chex_patients(ds: Any) -> list[str]:
    # the patient folder of Path; xrv's own patientid column needs 'train' or 'valid' in csvpath
    found = [re.search(r"(patient\d+)", str(p)) for p in ds.csv["Path"]]
    return [m.group(1) if m else str(p) for m, p in zip(found, ds.csv["Path"], strict=True)]


def _pc_images(ds: Any) -> list[str]:
    return [str(v) for v in ds.csv["ImageID"]]


def _pc_patients(ds: Any) -> list[str]:
    return [str(v) for v in ds.csv["PatientID"]]


def _rsna_images(ds: Any) -> list[str]:
    return [f"{v}{ds.extension}" for v in ds.csv["patientId"]]


def _rsna_patients(ds: Any) -> list[str]:
    return [str(v) for v in ds.csv["patientId"]]


@dataclass(frozen=True)
class XrvFile:
    """A file an xrv class reads: its option, default names under ROOT, xrv's shipped copy and the
    columns xrv needs from it (each entry: alternative spellings)."""

    option: str
    names: tuple[str, ...]
    included: str | None
    columns: tuple[tuple[str, ...], ...] = ()
    default: str = ""


@dataclass(frozen=True)
class XrvSpec:
    """One supported xrv dataset class."""

    key: str
    xrv_class: str
    title: str
    csv: XrvFile
    imgpath: str
    images: Callable[[Any], list[str]]
    patients: Callable[[Any], list[str]]
    patient_note: str
    extra_files: tuple[XrvFile, ...] = ()
    unique_patients: bool = True  # the class takes xrv's unique_patients argument


NIH_BBOX_FILE = XrvFile("bbox_list_path", ("BBox_List_2017.csv",), "BBox_List_2017.csv.gz")
RSNA_DICOM_FILE = XrvFile("dicomcsvpath", ("kaggle_stage_2_train_images_dicom_headers.csv",
                                           "kaggle_stage_2_train_images_dicom_headers.csv.gz"),
                          "kaggle_stage_2_train_images_dicom_headers.csv.gz",
                          (("PatientID",), ("ViewPosition",)), default=INCLUDED)

SPECS: dict[str, XrvSpec] = {spec.key: spec for spec in (
    XrvSpec("nih", "NIH_Dataset", "NIH ChestX-ray14",
            XrvFile("csvpath", ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"),
                    "Data_Entry_2017_v2020.csv.gz",
                    (("Image Index",), ("Finding Labels",), ("Patient ID",), ("Patient Age",),
                     ("Patient Gender", "Patient Sex"), ("View Position",))),
            "images", _nih_images, _nih_patients, "Patient ID"),
    XrvSpec("chexpert", "CheX_Dataset", "CheXpert",
            XrvFile("csvpath", ("train.csv",), "chexpert_train.csv.gz",
                    (("Path",), ("Sex",), ("Age",), ("Frontal/Lateral",), ("AP/PA",), ("No Finding",))),
            "", _chex_images, _chex_patients, "the patientNNNNN folder of Path"),
    XrvSpec("padchest", "PC_Dataset", "PadChest",
            XrvFile("csvpath", ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
                                "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"),
                    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
                    (("ImageID",), ("Projection",), ("Labels",), ("PatientID",), ("PatientBirth",),
                     ("StudyDate_DICOM",), ("PatientSex_DICOM",))),
            "images", _pc_images, _pc_patients, "PatientID"),
    XrvSpec("rsna", "RSNA_Pneumonia_Dataset", "RSNA Pneumonia Detection Challenge",
            XrvFile("csvpath", ("stage_2_train_labels.csv",), "kaggle_stage_2_train_labels.csv.zip",
                    (("patientId",), ("x",), ("y",), ("width",), ("height",), ("Target",))),
            "stage_2_train_images_jpg", _rsna_images, _rsna_patients,
            "patientId (RSNA's name for an image: one image each, so the split is image-wise)",
            extra_files=(RSNA_DICOM_FILE,), unique_patients=False),
)}

RSNA_DICOM_FOLDER = "stage_2_train_images"  # Kaggle's DICOMs; the JPEG release has ..._jpg


# ---------------------------------------------------------------------------------------------
# Building the xrv dataset from checked local files


def _xrv_datapath(xrv: Any) -> Path:
    return Path(getattr(xrv.datasets, "datapath", Path(xrv.datasets.__file__).parent / "data"))


def _resolve_file(name: str, root: Path, value: str, spec_file: XrvFile) -> Path:
    option = spec_file.option
    value = value.strip()
    if value == INCLUDED:
        if spec_file.included is None:
            raise UsageError(f"{name}: torchxrayvision ships no copy of {option}; pass {option}=FILE")
        path = _xrv_datapath(import_xrv()) / spec_file.included
        if not path.is_file():
            raise DataError(f"{name}: {option}={INCLUDED} names torchxrayvision's copy {path}, which this "
                            f"installation lacks; pass {option}=FILE")
        return path
    hint = f" (or {option}={INCLUDED}: the copy shipped with torchxrayvision)" if spec_file.included else ""
    if value:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"{name}: {option} file {path} not found; pass {option}=FILE, relative to the "
                            f"data root {root} or absolute{hint}")
        return path
    for candidate in spec_file.names:
        if (root / candidate).is_file():
            return root / candidate
    raise DataError(f"{name}: {' or '.join(spec_file.names)} not found in {root}; pass {option}=FILE, "
                    f"relative to the data root or absolute{hint}")


def _resolve_folder(name: str, root: Path, value: str, default: str) -> Path:
    value = value.strip() or default
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_dir():
        raise DataError(f"{name}: image folder {path} not found; pass imgpath=FOLDER (the folder holding "
                        f"the images, relative to the data root {root} or absolute)")
    return path


def _header(name: str, path: Path) -> list[str]:
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as exc:  # pandas raises many kinds for a file that is not CSV
        raise DataError(f"{name}: cannot read {path} as CSV: {type(exc).__name__}: "
                        f"{_first_line(exc)}") from None


def _check_columns(name: str, path: Path, spec_file: XrvFile, xrv_class: str) -> None:
    header = _header(name, path)
    missing = [alternatives[0] for alternatives in spec_file.columns
               if not any(a in header for a in alternatives)]
    if missing:
        shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
        raise DataError(f"{name}: {path} has no column {', '.join(map(repr, missing))}, which "
                        f"torchxrayvision's {xrv_class} reads; its header is: {shown}")


def _check_bbox_header(name: str, path: Path) -> None:
    header = _header(name, path)
    if header[:2] != ["Image Index", "Finding Label"] or len(header) < 6:
        raise DataError(f"{name}: {path} is not NIH's BBox_List_2017.csv: its header starts "
                        f"{', '.join(header[:3])!s}, expected 'Image Index,Finding Label,Bbox [x,y,w,h]'")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:200]


def _views(value: str, name: str) -> list[str]:
    views = [v.strip() for v in value.split(",") if v.strip()]
    if not views:
        raise UsageError(f"{name}: option 'views' is empty; give e.g. PA, PA,AP or * (all)")
    return ["*"] if "*" in views else views


def _construct(name: str, spec: XrvSpec, kwargs: dict[str, Any]) -> Any:
    xrv = import_xrv()
    cls = getattr(xrv.datasets, spec.xrv_class, None)
    if cls is None:
        raise DataError(f"{name}: the installed torchxrayvision {xrv.__version__} has no "
                        f"datasets.{spec.xrv_class}; upgrade it (pip install -U torchxrayvision)")
    with _numpy_state_kept():
        try:
            return cls(**kwargs)
        except Exception as exc:
            raise DataError(f"{name}: torchxrayvision's {spec.xrv_class} failed on "
                            f"{kwargs.get('csvpath')}: {type(exc).__name__}: {_first_line(exc)}") from None


def _pathologies(value: str, native: Sequence[str], name: str) -> tuple[list[str], str]:
    """The label list and how it was chosen: ``default`` (xrv's 18), ``native`` (the class's own,
    after xrv's renames) or a comma-separated list of names known to either."""
    default = list(import_xrv().datasets.default_pathologies)
    value = value.strip()
    if value in ("", "default"):
        return default, f"xrv default_pathologies ({len(default)})"
    if value == "native":
        return list(native), f"{name}'s own ({len(native)})"
    names = [p.strip() for p in value.split(",") if p.strip()]
    known = list(dict.fromkeys(list(native) + default))
    for label in names:
        if label not in known:
            close = difflib.get_close_matches(label, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{name}: unknown pathology {label!r} in option 'pathologies'{hint} "
                             f"(known: default, native, or names among {', '.join(known)})")
    if len(set(names)) != len(names):
        raise UsageError(f"{name}: option 'pathologies' names a pathology twice: {value}")
    return names, f"the {len(names)} given"


@dataclass
class _Source:
    """An xrv dataset built on checked files, with every row's image file and patient."""

    ds: Any
    imgpath: Path
    csvpath: Path
    files: list[str]
    patients: list[str]
    present: list[int]  # xrv rows whose image file exists
    problems: list[str]
    paths: dict[str, Path]


def _build_source(name: str, spec: XrvSpec, root: Path | None, options: dict[str, Any], *,
                  bbox: bool = False) -> _Source:
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; pass --data-root {name}=FOLDER")
    root = Path(root)
    csvpath = _resolve_file(name, root, options.get("csvpath", ""), spec.csv)
    _check_columns(name, csvpath, spec.csv, spec.xrv_class)
    img_default = spec.imgpath
    kwargs: dict[str, Any] = {"csvpath": str(csvpath), "views": _views(options.get("views", "PA"), name),
                              "seed": 0}
    paths = {"csvpath": csvpath}
    if spec.unique_patients:
        kwargs["unique_patients"] = bool(options.get("unique_patients", True))
    for extra in spec.extra_files:
        path = _resolve_file(name, root, options.get(extra.option, extra.default), extra)
        _check_columns(name, path, extra, spec.xrv_class)
        kwargs[extra.option] = str(path)
        paths[extra.option] = path
    if spec.key == "nih":
        if bbox:
            path = _resolve_file(name, root, options.get("bbox_list_path", ""), NIH_BBOX_FILE)
            _check_bbox_header(name, path)
            kwargs["bbox_list_path"] = str(path)
            paths["bbox_list_path"] = path
        else:  # NIH_Dataset always reads a box list; a training dataset needs none
            kwargs["bbox_list_path"] = io.StringIO(NIH_BBOX_HEADER_LINE)
        kwargs["pathology_masks"] = False  # boxes are rasterised here, at the mask size asked for
    if spec.key == "rsna":
        extension = options.get("extension", ".jpg")
        if extension == ".dcm":
            try:
                import pydicom  # noqa: F401
            except ImportError:
                raise DataError(f"{name}: extension=.dcm needs pydicom (pip install pydicom)") from None
            img_default = RSNA_DICOM_FOLDER
        kwargs["extension"] = extension
        kwargs["pathology_masks"] = False
    imgpath = _resolve_folder(name, root, options.get("imgpath", ""), img_default)
    kwargs["imgpath"] = str(imgpath)
    paths["imgpath"] = imgpath
    ds = _construct(name, spec, kwargs)
    if not isinstance(getattr(ds, "bbox_list_path", ""), str):
        ds.bbox_list_path = "(not read: no boxes needed)"  # a StringIO would not pickle to workers

    base = os.path.normpath(os.path.abspath(imgpath))
    files: list[str] = []
    present: list[int] = []
    missing: list[str] = []
    for i, rel in enumerate(spec.images(ds)):
        full = os.path.normpath(os.path.join(base, rel))
        if not full.startswith(base.rstrip(os.sep) + os.sep):
            raise DataError(f"{name}: {csvpath.name} names {rel!r}, outside the image folder {base}; "
                            "refusing to read files outside it")
        files.append(full)
        if os.path.isfile(full):
            present.append(i)
        else:
            missing.append(rel)
    problems = [p for p in [_warn_listed(name, f"images listed in {csvpath.name} (as torchxrayvision "
                                               f"resolves them) not found in {imgpath}, skipped", missing)]
                if p]
    return _Source(ds=ds, imgpath=imgpath, csvpath=csvpath, files=files, patients=spec.patients(ds),
                   present=present, problems=problems, paths=paths)


def _check_split(name: str, split: str, val_fraction: float, test_fraction: float) -> None:
    if split not in SPLITS:
        raise UsageError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise UsageError(f"{name}: option {option!r} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise UsageError(f"{name}: val_fraction + test_fraction must be below 1 (the rest is train), got "
                         f"{val_fraction} + {test_fraction}")


def _version() -> str:
    return str(getattr(import_xrv(), "__version__", "?"))


def _options_line(spec: XrvSpec, options: dict[str, Any]) -> str:
    parts = [f"views {options.get('views', 'PA')}"]
    if spec.unique_patients:
        parts.append(f"unique_patients {str(bool(options.get('unique_patients', True))).lower()}")
    if spec.key == "rsna":
        parts.append(f"extension {options.get('extension', '.jpg')}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The two cxrsem data contracts


class _XrvImages(ServedImages, torch.utils.data.Dataset):
    """Items of an xrv dataset, decoded by xrv's own ``__getitem__`` and converted to cxrsem's
    images; an image that fails to decode is warned about once and the next one served.

    ``cxrsem prepare`` works on them (:mod:`cxrsem.imagecache`): ``image_sources()`` hands it this
    decoder, ``use_image_cache()`` serves the stored rows of unchanged files.  The decoder is named
    after the xrv class (``cxrsem_xrv:NIH_Dataset``), so a store that cxrsem's own ``nih`` loader
    prepared from the same files is not mixed up with xrv's decoding (xrv reads the first channel
    of a colour image, cxrsem its luminance).
    """

    unreadable_warning = XrvDataWarning

    def __init__(self, *, name: str, image_size: int, source: _Source, rows: Sequence[int]) -> None:
        if int(image_size) < 1:
            raise DataError(f"{name}: image size must be positive, got {image_size}")
        self.name = name
        self.image_size = int(image_size)
        self._xrv = source.ds
        self._rows = [int(r) for r in rows]
        self.files = [source.files[r] for r in self._rows]
        self.ids = [os.path.relpath(f, source.imgpath) for f in self.files]
        self._groups = [source.patients[r] for r in self._rows]
        self.imgpath = source.imgpath
        self.csvpath = source.csvpath
        self.problems: list[str] = list(source.problems)
        self.summary: list[str] = []
        self._init_served(f"cxrsem_xrv:{type(source.ds).__name__}")

    def groups(self) -> list[str]:
        """The patient of every item (see the module docstring of each class's key)."""
        return list(self._groups)

    def decode(self, j: int) -> torch.Tensor:
        """Item ``j``'s image as xrv's ``__getitem__`` reads it, in [0, 1] at the image size."""
        with _numpy_state_kept():
            sample = self._xrv[self._rows[j]]
        return to_tensor(from_xrv_pixels(sample["img"]), self.image_size)

    def _decode(self, j: int) -> torch.Tensor:
        try:
            return self.decode(j)
        except Exception as exc:  # whatever skimage, pydicom or xrv's range check raise
            raise DataError(f"cannot read {self.files[j]}: {type(exc).__name__}: "
                            f"{_first_line(exc)}") from None


class XrvDataset(_XrvImages):
    """The training-dataset contract over an xrv dataset: task ``multilabel``, one output per
    harmonised pathology, ``target_masks`` False where xrv's label is NaN."""

    def __init__(self, *, name: str, split: str, image_size: int, source: _Source, rows: Sequence[int],
                 pathologies: Sequence[str]) -> None:
        super().__init__(name=name, image_size=image_size, source=source, rows=rows)
        self.split = split
        labels = np.asarray(source.ds.labels, dtype=np.float32)[self._rows]
        if labels.ndim != 2:
            labels = labels.reshape(len(self._rows), len(pathologies))
        known = ~np.isnan(labels)
        self.outputs = {"multilabel": list(pathologies)}
        self._targets = torch.from_numpy(np.where(known, labels, 0.0).astype(np.float32))
        self._known = torch.from_numpy(known)

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, image = self._load(self._index(index))
        return {"image": image, "targets": {"multilabel": self._targets[j].clone()},
                "target_masks": {"multilabel": self._known[j].clone()}, "id": self.ids[j]}

    def _task(self, task: str) -> None:
        if task != "multilabel":
            raise UsageError(f"{self.name} has no task {task!r}; it has multilabel")

    def targets(self, task: str) -> torch.Tensor:
        """Every item's target (0 where unknown) without decoding an image."""
        self._task(task)
        return self._targets.clone()

    def target_masks(self, task: str) -> torch.Tensor:
        """Every item's known-label mask (False where xrv's label is NaN)."""
        self._task(task)
        return self._known.clone()

    def describe(self) -> str:
        return "\n".join(self.summary + self._cache_lines() + [f"  warning: {p}" for p in self.problems])


class XrvBoxes(_XrvImages):
    """The concept-set contract over the boxes of an xrv dataset: one channel per concept, boxes
    rasterised at the mask size from their 1024 x 1024 frame (:func:`box_cells`)."""

    def __init__(self, *, name: str, image_size: int, mask_size: int, source: _Source, rows: Sequence[int],
                 concepts: Sequence[str], boxes: Sequence[list[tuple[int, tuple[float, ...]]]]) -> None:
        super().__init__(name=name, image_size=image_size, source=source, rows=rows)
        if int(mask_size) < 1:
            raise DataError(f"{name}: mask size must be positive, got {mask_size}")
        self.mask_size = int(mask_size)
        self.concepts = list(concepts)
        self._boxes = [list(b) for b in boxes]

    def masks(self, j: int) -> np.ndarray:
        out = np.zeros((len(self.concepts), self.mask_size, self.mask_size), dtype=bool)
        for c, box in self._boxes[j]:
            box_cells(out[c], box)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, image = self._load(self._index(index))
        return {"image": image, "masks": torch.from_numpy(self.masks(j)), "id": self.ids[j]}

    def concept_counts(self) -> dict[str, int]:
        """Images per concept, from the box table (no image decoded)."""
        counts = dict.fromkeys(self.concepts, 0)
        for boxes in self._boxes:
            for c in {c for c, _ in boxes}:
                counts[self.concepts[c]] += 1
        return counts

    def describe(self) -> str:
        counts = self.concept_counts()
        lines = self.summary + ["  images per concept: "
                                + ", ".join(f"{c} {counts[c]:,}" for c in self.concepts)]
        return "\n".join(lines + self._cache_lines() + [f"  warning: {p}" for p in self.problems])


# ---------------------------------------------------------------------------------------------
# Factories


def _make_dataset(key: str, *, split: str, image_size: int, root: Path | None, seed: int,
                  val_fraction: float = 0.1, test_fraction: float = 0.2, pathologies: str = "default",
                  **options: Any) -> XrvDataset:
    spec = SPECS[key]
    name = f"xrv-{key}"
    _check_split(name, split, val_fraction, test_fraction)
    options.setdefault("views", "PA")  # xrv's defaults, as registered
    options.setdefault("unique_patients", True)
    source = _build_source(name, spec, root, options)
    labels, how = _pathologies(pathologies, list(source.ds.pathologies), name)
    xrv = import_xrv()
    with _numpy_state_kept():
        xrv.datasets.relabel_dataset(list(labels), source.ds, silent=True)
    rows = [i for i in source.present
            if patient_split(source.patients[i], seed, val_fraction, test_fraction) == split]
    if not rows:
        raise DataError(f"{name}: the {split} split is empty ({len(source.present):,} images of "
                        f"{len({source.patients[i] for i in source.present}):,} patients on disk, split "
                        f"val {val_fraction:g} / test {test_fraction:g} with seed {seed})")
    ds = XrvDataset(name=name, split=split, image_size=image_size, source=source, rows=rows,
                    pathologies=labels)
    positives = ds._targets.sum(0).to(torch.int64).tolist()
    unknown = (~ds._known).sum(0).tolist()
    never = [p for p, u in zip(labels, unknown, strict=True) if u == len(ds)]
    partly = [f"{p} {u:,}" for p, u in zip(labels, unknown, strict=True) if 0 < u < len(ds)]
    ds.summary = [
        f"{name}: torchxrayvision {_version()} {spec.xrv_class} ({spec.title}; "
        f"{_options_line(spec, options)}): "
        f"{len(source.ds):,} rows of {source.csvpath}, {len(source.present):,} with their image in "
        f"{source.imgpath}",
        f"  {split} split: {len(ds):,} images of {len(set(ds._groups)):,} patients (patient-wise by "
        f"{spec.patient_note}: sha256 of seed {seed} and patient; val {val_fraction:g}, "
        f"test {test_fraction:g})",
        f"  labels: {how}; positives: "
        + ", ".join(f"{p} {c:,}" for p, c in zip(labels, positives, strict=True)),
    ]
    if never:
        ds.summary.append(f"  never labelled here (always masked): {', '.join(never)}")
    if partly:
        ds.summary.append(f"  unknown (masked): {', '.join(partly)}")
    return ds


def _subset(ids: Sequence[str], limit: int, seed: int) -> list[int]:
    if limit <= 0 or limit >= len(ids):
        return list(range(len(ids)))
    order = sorted(range(len(ids)), key=lambda i: (_unit(seed, ids[i]), ids[i]))
    return sorted(order[:limit])


def _nih_box_table(ds: Any) -> list[tuple[str, str, tuple[float, ...]]]:
    table = ds.pathology_maskscsv  # xrv already renamed 'Infiltrate' to 'Infiltration'
    return [(str(n), str(label), (x, y, w, h)) for n, label, x, y, w, h in
            zip(table["Image Index"], table["Finding Label"], table["x"], table["y"], table["w"], table["h"],
                strict=True)]


def _rsna_box_table(ds: Any) -> list[tuple[str, str, tuple[float, ...]]]:
    table = ds.raw_csv[ds.raw_csv["Target"] == 1]
    return [(str(p), RSNA_BOX_CONCEPTS[0], (x, y, w, h)) for p, x, y, w, h in
            zip(table["patientId"], table["x"], table["y"], table["width"], table["height"], strict=True)]


def _make_boxes(key: str, *, image_size: int, mask_size: int, root: Path | None, seed: int, limit: int = 0,
                **options: Any) -> XrvBoxes:
    spec = SPECS[key]
    name = f"xrv-{key}-bbox"
    options.setdefault("views", "*")  # every boxed image, as registered
    options.setdefault("unique_patients", False)
    source = _build_source(name, spec, root, options, bbox=True)
    concepts = NIH_BOX_CONCEPTS if key == "nih" else RSNA_BOX_CONCEPTS
    position = {c: i for i, c in enumerate(concepts)}
    table = _nih_box_table(source.ds) if key == "nih" else _rsna_box_table(source.ds)
    by_image: dict[str, list[tuple[int, tuple[float, ...]]]] = {}
    unknown: list[str] = []
    bad: list[str] = []
    for image, label, box in table:
        if label not in position:
            unknown.append(f"{image} ({label})")
        elif not _valid_box(box):
            bad.append(f"{image} ({', '.join(f'{float(v):g}' for v in box)})")
        else:
            by_image.setdefault(image, []).append((position[label], tuple(float(v) for v in box)))
    box_file = source.paths.get("bbox_list_path", source.csvpath).name
    problems = [_warn_listed(name, f"boxes of labels without a concept in {box_file} skipped", unknown),
                _warn_listed(name, f"empty, malformed or out-of-frame boxes in {box_file} skipped", bad)]
    keys = _nih_images(source.ds) if key == "nih" else _rsna_patients(source.ds)
    rows = [i for i in source.present if keys[i] in by_image]
    if not rows:
        raise DataError(f"{name}: none of the {len(by_image):,} images with boxes in {box_file} is among the "
                        f"{len(source.present):,} rows torchxrayvision kept with their image in "
                        f"{source.imgpath} ({_options_line(spec, options)})")
    boxed = len(rows)
    rows = [rows[i] for i in _subset([keys[r] for r in rows], limit, seed)]
    ds = XrvBoxes(name=name, image_size=image_size, mask_size=mask_size, source=source, rows=rows,
                  concepts=concepts, boxes=[by_image[keys[r]] for r in rows])
    ds.problems += [p for p in problems if p]
    n_boxes = sum(len(by_image[keys[r]]) for r in rows)
    ds.summary = [
        f"{name}: torchxrayvision {_version()} {spec.xrv_class} boxes ({spec.title}; "
        f"{_options_line(spec, options)}): {len(ds):,} images with {n_boxes:,} boxes"
        + (f" (a seeded sample of {limit} of {boxed:,})" if len(rows) < boxed else "")
        + f" from {box_file}, rasterised at {mask_size} x {mask_size} from the 1024 x 1024 frame",
        f"  {len(by_image):,} images have boxes in {box_file}; {boxed:,} of them are among the rows "
        f"torchxrayvision kept with their image on disk",
    ]
    return ds


def make_xrv_nih(**kwargs: Any) -> XrvDataset:
    return _make_dataset("nih", **kwargs)


def make_xrv_chexpert(**kwargs: Any) -> XrvDataset:
    return _make_dataset("chexpert", **kwargs)


def make_xrv_padchest(**kwargs: Any) -> XrvDataset:
    return _make_dataset("padchest", **kwargs)


def make_xrv_rsna(**kwargs: Any) -> XrvDataset:
    return _make_dataset("rsna", **kwargs)


def make_xrv_nih_bbox(**kwargs: Any) -> XrvBoxes:
    return _make_boxes("nih", **kwargs)


def make_xrv_rsna_bbox(**kwargs: Any) -> XrvBoxes:
    return _make_boxes("rsna", **kwargs)


# ---------------------------------------------------------------------------------------------
# Registrations


def _file_options(spec: XrvSpec) -> tuple[Option, ...]:
    return (
        Option("imgpath", str, "", f"folder of the images, relative to the data root or absolute "
                                   f"(default: {spec.imgpath or 'the data root itself'})"),
        Option("csvpath", str, "", f"{spec.xrv_class}'s csvpath, relative to the data root or absolute "
                                   f"(default: {' or '.join(spec.csv.names)}; '{INCLUDED}' = xrv's copy)"),
    )


def _rsna_options() -> list[Option]:
    return [Option("dicomcsvpath", str, INCLUDED, "xrv's DICOM-header CSV (views); 'included' = the copy "
                                                  "shipped with torchxrayvision"),
            Option("extension", str, ".jpg", "image file suffix (.dcm: Kaggle's DICOMs, needs pydicom)",
                   choices=(".jpg", ".png", ".dcm"))]


def _dataset_options(spec: XrvSpec) -> tuple[Option, ...]:
    options = list(_file_options(spec))
    options.append(Option("views", str, "PA", "views xrv keeps, comma-separated (xrv's default PA; * = all)"))
    if spec.unique_patients:
        options.append(Option("unique_patients", bool, True, "xrv's unique_patients: one image per patient"))
    if spec.key == "rsna":
        options += _rsna_options()
    options += [
        Option("pathologies", str, "default", "labels after xrv's relabel_dataset: default (xrv's 18 "
                                              "default_pathologies), native, or a comma-separated list"),
        Option("val_fraction", float, 0.1, "expected share of patients in val (sha256 of seed and patient)"),
        Option("test_fraction", float, 0.2, "expected share of patients in test"),
    ]
    return tuple(options)


def _box_options(spec: XrvSpec) -> tuple[Option, ...]:
    options = list(_file_options(spec))
    if spec.key == "nih":
        options.append(Option("bbox_list_path", str, "", "NIH's BBox_List_2017.csv, relative to the data "
                                                         f"root or absolute ('{INCLUDED}' = xrv's copy)"))
    options.append(Option("views", str, "*", "views xrv keeps, comma-separated (* = all: every boxed image)"))
    if spec.unique_patients:
        options.append(Option("unique_patients", bool, False,
                              "xrv's unique_patients (false: every boxed image)"))
    if spec.key == "rsna":
        options += _rsna_options()
    options.append(Option("limit", int, 0, "use a seeded sample of this many images (0 = all)"))
    return tuple(options)


DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo(name="xrv-nih", factory=make_xrv_nih, tasks=("multilabel",), needs_root=True,
                options=_dataset_options(SPECS["nih"]),
                description="NIH ChestX-ray14 read by torchxrayvision's NIH_Dataset, labels relabelled "
                            "to xrv's 18 default pathologies"),
    DatasetInfo(name="xrv-chexpert", factory=make_xrv_chexpert, tasks=("multilabel",), needs_root=True,
                options=_dataset_options(SPECS["chexpert"]),
                description="CheXpert read by torchxrayvision's CheX_Dataset (uncertain labels masked), "
                            "relabelled to xrv's 18 default pathologies"),
    DatasetInfo(name="xrv-padchest", factory=make_xrv_padchest, tasks=("multilabel",), needs_root=True,
                options=_dataset_options(SPECS["padchest"]),
                description="PadChest read by torchxrayvision's PC_Dataset, relabelled to xrv's 18 "
                            "default pathologies"),
    DatasetInfo(name="xrv-rsna", factory=make_xrv_rsna, tasks=("multilabel",), needs_root=True,
                options=_dataset_options(SPECS["rsna"]),
                description="RSNA Pneumonia Challenge read by torchxrayvision's RSNA_Pneumonia_Dataset, "
                            "relabelled to xrv's 18 default pathologies"),
)

CONCEPT_SETS: tuple[ConceptSetInfo, ...] = (
    ConceptSetInfo(name="xrv-nih-bbox", factory=make_xrv_nih_bbox, needs_root=True, annotation="boxes",
                   options=_box_options(SPECS["nih"]),
                   description="NIH ChestX-ray14 boxes as torchxrayvision's NIH_Dataset reads them "
                               "(its pathology_masks): 8 concepts"),
    ConceptSetInfo(name="xrv-rsna-bbox", factory=make_xrv_rsna_bbox, needs_root=True, annotation="boxes",
                   options=_box_options(SPECS["rsna"]),
                   description="RSNA Pneumonia Challenge boxes (concept Lung Opacity) as "
                               "torchxrayvision's RSNA_Pneumonia_Dataset reads them"),
)
