"""Reading chest X-rays from disk into what every cxrsem model sees: one grey channel in ``[0, 1]``.

:func:`read_image` decodes one file to a float32 ``[H, W]`` array in ``[0, 1]``; :func:`to_tensor`
resizes it to the model's ``[1, S, S]`` input.  Datasets, concept sets and ``cxrsem attribute``
(for a user's own images) all go through these two functions, so every image is converted the same
way wherever it comes from.

Conversions
-----------
PNG / JPEG / anything Pillow opens:

- 8-bit grey (``L``) is divided by 255; 16-bit grey (``I;16*``, and ``I`` as older Pillow versions
  report 16-bit PNGs) by 65535 -- the container's range, *not* the image's own min/max, so a 12-bit
  image stored in a 16-bit PNG keeps its true (darker) grey levels; 32-bit float (``F``) is kept
  when it already lies in ``[0, 1]``, otherwise min-max scaled; bilevel (``1``) gives 0 / 1.
- Colour (``RGB``, ``P``, ``CMYK``, ``YCbCr`` ...) becomes luminance ``0.299 R + 0.587 G + 0.114 B``
  (ITU-R BT.601, computed by Pillow's ``convert("L")`` and rounded to 8 bits, the precision of the
  source channels).  An alpha channel (``LA``, ``RGBA``, ``PA``) is dropped, never composited: a few
  published chest X-rays carry stray transparent pixels whose colour values are still the image.
- EXIF orientation is ignored: annotations in the public datasets refer to the stored pixel grid.

DICOM (a ``.dcm`` / ``.dicom`` suffix, or the ``DICM`` magic at byte 128), read with pydicom (the
optional ``cxrsem[dicom]`` extra, imported only when a DICOM is met):

1. pixel values are restricted to ``BitsStored`` (high bits cleared, signed data sign-extended);
2. the modality transform is applied (``RescaleSlope`` / ``RescaleIntercept``, or a Modality LUT);
3. **the first VOI transform present is applied** -- a VOI LUT, else ``WindowCenter`` /
   ``WindowWidth`` with its ``VOILUTFunction`` (LINEAR, LINEAR_EXACT or SIGMOID, DICOM PS3.3
   C.11.2.1.2) -- because that is the contrast the modality intends a reader to see and the one
   published JPEG/PNG exports were made with; without any VOI the full range that ``BitsStored``
   allows (after the modality transform) is mapped linearly to ``[0, 1]``.  ``voi=False`` skips
   step 3 and always uses the ``BitsStored`` range;
4. ``MONOCHROME1`` (white = low values) is inverted so that, as in every PNG, bone is bright;
5. colour DICOMs become luminance as above; of a multi-frame DICOM only the first frame is read.

Size limit
----------
An image may hold at most :data:`MAX_IMAGE_PIXELS` = 100,000,000 pixels (10,000 x 10,000; the
largest published radiographs are about 4,300 px a side).  The limit is checked on the size the
file *declares* -- the PNG/JPEG header, DICOM ``Rows`` x ``Columns`` -- before any pixel is
decoded, so a small file that would decompress to gigabytes (a "decompression bomb") is refused
with a :class:`~cxrsem.errors.DataError` like any unreadable file: a dataset skips it, a folder run
of ``cxrsem attribute`` skips it, a single image is an error.  Pillow's own, lower bomb warning is
replaced by this check.

Geometry
--------
:func:`to_tensor` resizes to ``S x S`` with antialiased bilinear interpolation (a triangle filter
wide enough to average every source pixel when shrinking).  Non-square images are *stretched*, not
padded or cropped: the whole field of view reaches the model, and annotations are mapped with the
same per-axis scale factors (see :mod:`cxrsem.default_plugins._io`), so masks and boxes stay aligned
with the pixels they describe.
"""

from __future__ import annotations

import re
import warnings
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cxrsem.errors import DataError

__all__ = ["read_image", "to_tensor", "load_image", "image_size", "is_dicom", "LUMINANCE",
           "MAX_IMAGE_PIXELS"]

MAX_IMAGE_PIXELS = 10_000 * 10_000

LUMINANCE = (0.299, 0.587, 0.114)
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_INSTALL_HINT = "install the DICOM extra: pip install 'cxrsem[dicom]' (it adds pydicom)"


def is_dicom(path: str | PathLike[str]) -> bool:
    """True for a ``.dcm``/``.dicom`` file or any file with the DICOM magic ``DICM`` at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_image(path: str | PathLike[str], *, voi: bool = True) -> np.ndarray:
    """Decode an image file to a float32 ``[H, W]`` array in ``[0, 1]`` (see the module docstring).

    Raises :class:`~cxrsem.errors.DataError` naming the file when it is missing or cannot be
    decoded, and when a DICOM is met without pydicom installed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    image = _read_dicom(path, voi=voi) if is_dicom(path) else _read_pil(path)
    if image.ndim != 2 or image.size == 0:
        raise DataError(f"cannot read image {path}: decoded to shape {image.shape}, expected 2-D")
    return np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0).astype(np.float32, copy=False)


def image_size(path: str | PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image from its header alone (no pixel decoding)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    if is_dicom(path):
        pydicom = _pydicom()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            size = int(ds.Columns), int(ds.Rows)
        except Exception as exc:
            raise DataError(f"cannot read DICOM header of {path}: {exc}") from None
        return _check_pixels(path, *size)
    try:
        with _open_pil(path) as im:
            return _check_pixels(path, *im.size)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _check_pixels(path: Path, width: int, height: int) -> tuple[int, int]:
    """``(width, height)``, or a DataError when the image is larger than MAX_IMAGE_PIXELS."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"cannot read image {path}: it declares {width:,} x {height:,} = "
                        f"{width * height:,} pixels, above the limit of {MAX_IMAGE_PIXELS:,} pixels "
                        "(10,000 x 10,000); a decompression bomb or not a radiograph")
    return width, height


def _open_pil(path: Path) -> Image.Image:
    """``Image.open`` with Pillow's bomb check replaced by :func:`_check_pixels` (the caller's)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:  # above twice Pillow's limit: it names no size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise DataError(f"cannot read image {path}: it declares {count}, above the limit of "
                        f"{MAX_IMAGE_PIXELS:,} pixels (10,000 x 10,000); a decompression bomb or "
                        "not a radiograph") from None


def to_tensor(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """``[H, W]`` grey image in ``[0, 1]`` -> float32 ``[1, size, size]`` (antialiased bilinear,
    non-square images stretched; see the module docstring)."""
    if int(size) < 1:
        raise DataError(f"image size must be positive, got {size}")
    size = int(size)
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    x = x.to(torch.float32)
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise DataError(f"expected a 2-D grey image, got shape {tuple(x.shape)}")
    if tuple(x.shape) != (size, size):
        antialias = x.shape[0] > size or x.shape[1] > size
        x = F.interpolate(x[None, None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=antialias)[0, 0]
    return x.clamp_(0.0, 1.0).unsqueeze(0).contiguous()


def load_image(path: str | PathLike[str], size: int, *, voi: bool = True) -> torch.Tensor:
    """:func:`read_image` then :func:`to_tensor`: the model input ``[1, size, size]``."""
    return to_tensor(read_image(path, voi=voi), size)


# ---------------------------------------------------------------------------------------------
# Pillow formats


def _luminance(rgb: np.ndarray, scale: float) -> np.ndarray:
    # element-wise rather than a matmul: no BLAS start-up cost, same result
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    return (LUMINANCE[0] * r + LUMINANCE[1] * g + LUMINANCE[2] * b) / np.float32(scale)


def _read_pil(path: Path) -> np.ndarray:
    try:
        with _open_pil(path) as im:
            _check_pixels(path, *im.size)  # before load(): the header's size, not the pixels
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
            return _pil_to_array(im)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":  # 16-bit PNGs in older Pillow; 32-bit integer TIFFs
        arr = np.asarray(im).astype(np.float64)
        return (np.clip(arr, 0, 65535) / 65535.0).astype(np.float32)
    if mode == "F":
        arr = np.asarray(im).astype(np.float32)
        finite = arr[np.isfinite(arr)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
            lo, hi = float(finite.min()), float(finite.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return arr
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im).astype(np.float32) / 255.0
    if mode in ("LA", "La"):
        return np.asarray(im)[..., 0].astype(np.float32) / 255.0
    # Colour (RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV, ...): alpha is dropped by convert("RGB"),
    # then Pillow's BT.601 luma (rounded to 8 bits, the precision of the source channels).
    rgb = im if mode in ("RGB", "RGBA", "RGBX") else im.convert("RGB")
    return np.asarray(rgb.convert("L")).astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# DICOM


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DataError(f"reading DICOM files needs pydicom: {DICOM_INSTALL_HINT}") from None
    return pydicom


def _first(value, default=None):
    """First item of a possibly multi-valued DICOM element (or ``default`` when empty)."""
    if value is None or value == "":
        return default
    try:
        if isinstance(value, str | bytes):
            return value
        return value[0] if len(value) else default
    except TypeError:
        return value


def _read_dicom(path: Path, *, voi: bool) -> np.ndarray:
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, force=True)
        _check_pixels(path, int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
        arr = ds.pixel_array
    except DataError:
        raise
    except Exception as exc:  # missing codec, truncated file, not DICOM at all, ...
        hint = ""
        if "decod" in str(exc).lower() or "plugin" in str(exc).lower():
            hint = " (a compressed transfer syntax may need pylibjpeg or gdcm installed)"
        raise DataError(f"cannot read DICOM {path}: {exc}{hint}") from None
    try:
        return _dicom_to_unit(ds, np.asarray(arr), voi=voi)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot interpret DICOM {path}: {type(exc).__name__}: {exc}") from None


def _dicom_to_unit(ds, arr: np.ndarray, *, voi: bool) -> np.ndarray:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    bits_alloc = int(ds.get("BitsAllocated", 8 * arr.dtype.itemsize) or 8 * arr.dtype.itemsize)
    bits_stored = int(ds.get("BitsStored", bits_alloc) or bits_alloc)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1

    if samples > 1:  # colour: pydicom already converted YBR to RGB
        return _luminance(arr, float(2**bits_stored - 1))

    raw = arr.astype(np.int64)
    if bits_stored < bits_alloc:
        if signed:  # sign-extend from bit (bits_stored - 1)
            shift = 64 - bits_stored
            raw = (raw << shift) >> shift
        else:
            raw = raw & ((1 << bits_stored) - 1)
    if signed:
        lo_stored, hi_stored = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        lo_stored, hi_stored = 0, 2**bits_stored - 1

    values, lo, hi = _modality(ds, raw, lo_stored, hi_stored)
    out = _voi(ds, values) if voi else None
    if out is None:
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _modality(ds, raw: np.ndarray, lo_stored: int, hi_stored: int):
    """Modality LUT or rescale: the values and the range that BitsStored allows after it."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        from pydicom.pixels import apply_modality_lut

        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        ends = np.asarray(apply_modality_lut(np.array([lo_stored, hi_stored]), ds),
                          dtype=np.float64)
        return values, float(ends.min()), float(ends.max())
    slope = float(_first(ds.get("RescaleSlope"), 1.0) or 1.0)
    intercept = float(_first(ds.get("RescaleIntercept"), 0.0) or 0.0)
    values = raw.astype(np.float64) * slope + intercept
    ends = sorted((lo_stored * slope + intercept, hi_stored * slope + intercept))
    return values, ends[0], ends[1]


def _voi(ds, values: np.ndarray) -> np.ndarray | None:
    """The first VOI transform present, mapped to [0, 1]; None when the file has none."""
    seq = ds.get("VOILUTSequence")
    if seq:
        from pydicom.pixels import apply_voi

        item = seq[0]
        n_entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
        table = np.asarray(apply_voi(np.arange(first, first + n_entries), ds, 0), dtype=np.float64)
        out = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, 0), dtype=np.float64)
        lo, hi = float(table.min()), float(table.max())
        return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    c, w = float(center), float(width)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if w <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if function == "LINEAR_EXACT":
        if w <= 0:
            return None
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    # LINEAR (the default): PS3.3 C.11.2.1.2.1, with the output range [0, 1]
    if w < 1:
        return None
    if w == 1:
        return (values > c - 0.5).astype(np.float64)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
