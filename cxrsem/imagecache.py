"""The prepared image cache: images decoded and resized once, then read back memory-mapped.

Real chest X-rays are large (NIH 1024 px PNGs, CheXpert JPEGs, BrixIA 2800 px DICOMs), and decoding
plus resizing them dominates every epoch.  ``cxrsem prepare`` runs a dataset's own decoder once per
image and stores the result; datasets then serve those rows instead of decoding again.

Layout (``CACHE`` = ``--cache-dir``, else ``$CXRSEM_CACHE_DIR``, else ``~/.cache/cxrsem``)::

    CACHE/images/<name>-<size>/images.npy   uint8 [rows, size, size], memory-mapped when read
    CACHE/images/<name>-<size>/index.json   {"format": "cxrsem-image-cache/1", "size", "reader",
                                              "files": [[path, bytes, mtime_ns, row], ...], ...}

A row is used only for the same file (absolute path), unchanged since (size in bytes and
modification time), decoded by the same reader at the same size; anything else is decoded from
the original file as before, so a stale or partial cache can never change what a dataset yields
beyond the storage rounding.  Rows are 8-bit: a cached pixel differs from the decoded one by at
most half a grey level (1/510), the precision the 8-bit sources (NIH, CheXpert, covid-seg) have
anyway; 12-bit DICOM is rounded to 8 bits.  A store is built in a temporary folder and swapped
into place, so an interrupted ``prepare`` leaves the previous store intact.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.errors import DataError, UsageError

FORMAT = "cxrsem-image-cache/1"
DISABLED = ("off", "none", "0")

Progress = Callable[..., None]


class CacheWarning(UserWarning):
    """Images a prepare run could not decode (they are read from their files later, as before)."""


def default_cache_dir() -> Path | None:
    """``$CXRSEM_CACHE_DIR`` (``off`` disables the cache), else ``$XDG_CACHE_HOME/cxrsem`` or
    ``~/.cache/cxrsem``."""
    env = os.environ.get("CXRSEM_CACHE_DIR")
    if env is not None and env.strip():
        return None if env.strip().lower() in DISABLED else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "cxrsem"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path | None:
    """The cache folder to use: ``cache_dir`` when given (``off`` disables), else the default."""
    if cache_dir is None or str(cache_dir).strip() == "":
        return default_cache_dir()
    if str(cache_dir).strip().lower() in DISABLED:
        return None
    return Path(cache_dir).expanduser()


def reader_tag(reader: Callable[..., Any]) -> str:
    """A stable name for a decoding function, with the keyword arguments of a ``functools.partial``
    that differ from the function's defaults (so ``partial(read_image, voi=True)`` is ``read_image``)."""
    if isinstance(reader, functools.partial) and not reader.args:
        try:
            defaults = {name: p.default for name, p in inspect.signature(reader.func).parameters.items()}
        except (TypeError, ValueError):
            defaults = {}
        changed = {k: v for k, v in reader.keywords.items() if k not in defaults or defaults[k] != v}
        base = reader_tag(reader.func)
        if not changed:
            return base
        return f"{base}({','.join(f'{k}={v!r}' for k, v in sorted(changed.items()))})"
    return f"{getattr(reader, '__module__', '?')}.{getattr(reader, '__qualname__', repr(reader))}"


def file_stamp(path: str) -> tuple[int, int] | None:
    """``(bytes, mtime_ns)`` of a file, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class ImageSources:
    """What a dataset hands to ``prepare``: its image files, decoder and size.

    ``decode(i)`` returns image ``i`` as float32 ``[1, size, size]`` in ``[0, 1]`` (exactly what
    the dataset would serve) or raises :class:`~cxrsem.errors.DataError`.
    """

    files: Sequence[str]
    size: int
    reader: str
    decode: Callable[[int], torch.Tensor]


def quantize(image: torch.Tensor) -> np.ndarray:
    """float ``[1, S, S]`` in [0, 1] -> uint8 ``[S, S]`` (round to the nearest grey level)."""
    return image[0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def dequantize(row: np.ndarray) -> torch.Tensor:
    """uint8 ``[S, S]`` -> float32 ``[1, S, S]`` in [0, 1]."""
    return torch.from_numpy(np.array(row, dtype=np.float32)).div_(255.0).unsqueeze(0)


class Store:
    """One prepared store on disk; its array is opened lazily (and not pickled to workers)."""

    def __init__(self, folder: Path, index: dict[str, Any]) -> None:
        self.folder = folder
        self.size = int(index["size"])
        self.reader = str(index["reader"])
        self.name = str(index.get("name", folder.name))
        self.rows = {entry[0]: (int(entry[1]), int(entry[2]), int(entry[3]))
                     for entry in index["files"]}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.folder / "images.npy", mmap_mode="r")
        return self._array

    def image(self, row: int) -> torch.Tensor:
        return dequantize(self.array[row])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers receive the dataset: send the path, never a copy of the mapped array
        state = dict(self.__dict__)
        state["_array"] = None
        return state


class _Damaged(Exception):
    """A store whose index or array does not hold what the format promises."""


@functools.lru_cache(maxsize=64)
def _read_index(path: str, mtime_ns: int) -> dict[str, Any] | None:
    """The index, None when it is not readable as a ``cxrsem-image-cache/1`` index."""
    try:
        return _parse_index(Path(path))
    except _Damaged:
        return None


def _parse_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _Damaged(f"index.json is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _Damaged(f"index.json is not a {FORMAT} index")
    files = index.get("files")
    if (not isinstance(index.get("size"), int) or not isinstance(index.get("reader"), str)
            or not isinstance(files, list)
            or not all(isinstance(e, list) and len(e) == 4 and isinstance(e[0], str)
                       and all(isinstance(v, int) for v in e[1:]) for e in files)):
        raise _Damaged("index.json lacks a size, reader or [path, bytes, mtime, row] file list")
    return index


def _check_array(folder: Path, index: dict[str, Any]) -> None:
    """The memory-mapped array exists, is uint8 [rows, size, size] and covers every listed row."""
    try:
        array = np.load(folder / "images.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:  # truncated: "mmap length is greater ..."
        raise _Damaged(f"images.npy is unreadable ({exc})") from None
    size = int(index["size"])
    rows = max((int(e[3]) for e in index["files"]), default=-1) + 1
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (size, size) \
            or array.shape[0] < rows:
        raise _Damaged(f"images.npy holds {array.dtype} {list(array.shape)}, the index needs uint8 "
                       f"[{rows}, {size}, {size}]")


_warned: set[tuple[str, int]] = set()


def _warn_damaged(folder: Path, reason: str, stamp: int) -> None:
    if (str(folder), stamp) in _warned:  # once per store (each split of a dataset looks it up)
        return
    _warned.add((str(folder), stamp))
    warnings.warn(f"prepared image cache {folder} is damaged ({reason}); its images are decoded from "
                  "their files instead (rebuild it with cxrsem prepare --force)", CacheWarning,
                  stacklevel=3)


def check_cache_folder(cache_dir: Path | None, what: str = "the image cache") -> None:
    """A UsageError when ``cache_dir`` exists but is not a folder."""
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise UsageError(f"{what} {cache_dir} is not a folder (a file is in the way); name a folder, "
                         "or 'off'")


def open_stores(cache_dir: Path, size: int, reader: str) -> list[Store]:
    """Every complete store under ``cache_dir`` for images of ``size`` decoded by ``reader``; a
    damaged one (truncated array, garbage index) is skipped with one :class:`CacheWarning`."""
    check_cache_folder(cache_dir)
    folder = cache_dir / "images"
    try:
        candidates = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    stores = []
    for candidate in candidates:
        index_path = candidate / "index.json"
        stamp = file_stamp(str(index_path))
        if stamp is None or not (candidate / "images.npy").is_file():
            continue
        try:
            index = _read_index(str(index_path), stamp[1]) or _parse_index(index_path)
            if int(index["size"]) != size or index["reader"] != reader:
                continue
            _check_array(candidate, index)
        except _Damaged as exc:
            _warn_damaged(candidate, str(exc), stamp[1])
            continue
        stores.append(Store(candidate, index))
    return stores


@dataclass
class CacheLookup:
    """For each file of a dataset, ``(store, row)`` when a valid prepared row exists, else None."""

    hits: list[tuple[Store, int] | None]
    stale: int = 0  # files the cache holds but that changed since
    folders: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(hit is not None for hit in self.hits)

    def describe(self, total: int) -> str:
        where = ", ".join(self.folders)
        line = f"  prepared image cache: {self.count:,} of {total:,} images from {where}"
        if self.stale:
            line += f" ({self.stale:,} changed since they were prepared: decoded from their files)"
        return line


def lookup(files: Sequence[str], size: int, reader: str, cache_dir: Path | None) -> CacheLookup | None:
    """Match ``files`` against the prepared stores; None when no store applies."""
    if cache_dir is None:
        return None
    stores = open_stores(cache_dir, size, reader)
    if not stores:
        return None
    hits: list[tuple[Store, int] | None] = []
    stale = 0
    used: set[str] = set()
    for file in files:
        path = os.path.abspath(file)
        candidates = [(s, s.rows[path]) for s in stores if path in s.rows]
        found = None
        if candidates:
            stamp = file_stamp(path)
            for store, (nbytes, mtime, row) in candidates:
                if stamp == (nbytes, mtime):
                    found = (store, row)
                    used.add(str(store.folder))
                    break
            stale += found is None
        hits.append(found)
    if not used:
        return None
    return CacheLookup(hits=hits, stale=stale, folders=sorted(used))


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class PrepareResult:
    folder: Path
    size: int
    images: int
    failed: list[str]
    seconds: float
    up_to_date: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


class _Decoder(torch.utils.data.Dataset):
    """(source, index) pairs -> (position, uint8 image or the error text), for DataLoader workers."""

    def __init__(self, items: list[tuple[ImageSources, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, np.ndarray | str]:
        source, index = self.items[position]
        try:
            return position, quantize(source.decode(index))
        except DataError as exc:
            return position, str(exc)


def _unique_items(sources: Iterable[ImageSources]) -> tuple[list[tuple[ImageSources, int]], list[str]]:
    items: list[tuple[ImageSources, int]] = []
    paths: list[str] = []
    seen: set[str] = set()
    for source in sources:
        for i, file in enumerate(source.files):
            path = os.path.abspath(file)
            if path not in seen:
                seen.add(path)
                items.append((source, i))
                paths.append(path)
    return items, paths


def _is_current(folder: Path, size: int, reader: str, paths: list[str]) -> bool:
    stamp = file_stamp(str(folder / "index.json"))
    if stamp is None or not (folder / "images.npy").is_file():
        return False
    index = _read_index(str(folder / "index.json"), stamp[1])
    if not index or int(index.get("size", -1)) != size or index.get("reader") != reader:
        return False
    try:
        _check_array(folder, index)
    except _Damaged:  # rebuilt below
        return False
    store = Store(folder, index)
    return all(path in store.rows and store.rows[path][:2] == file_stamp(path) for path in paths)


def prepare(sources: Sequence[ImageSources], *, name: str, cache_dir: str | Path | None = None,
            workers: int = 0, force: bool = False, progress: Progress | None = None) -> PrepareResult:
    """Decode every image of ``sources`` once and store it under ``CACHE/images/<name>-<size>/``.

    Images that fail to decode are left out (one :class:`CacheWarning` lists them): datasets keep
    decoding those from their files, with their usual handling of unreadable images.
    """
    emit = progress or (lambda *_a, **_k: None)
    root = resolve_cache_dir(cache_dir)
    if root is None:
        raise UsageError("the image cache is disabled (CXRSEM_CACHE_DIR=off); pass --cache-dir DIR")
    check_cache_folder(root, "--cache-dir")
    sources = list(sources)
    if not sources:
        raise UsageError(f"{name}: nothing to prepare")
    sizes = {s.size for s in sources}
    readers = {s.reader for s in sources}
    if len(sizes) != 1 or len(readers) != 1:
        raise UsageError(f"{name}: its parts decode images differently ({', '.join(sorted(readers))}); "
                         "prepare them one by one")
    size, reader = sizes.pop(), readers.pop()
    items, paths = _unique_items(sources)
    folder = root / "images" / f"{name}-{size}"
    started = time.perf_counter()
    if not force and _is_current(folder, size, reader, paths):
        return PrepareResult(folder, size, len(paths), [], time.perf_counter() - started, up_to_date=True)

    (root / "images").mkdir(parents=True, exist_ok=True)
    tmp = root / "images" / f".{name}-{size}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        array = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(items), size, size))
        stamps = [file_stamp(p) for p in paths]
        entries, failed = [], []
        loader = torch.utils.data.DataLoader(_Decoder(items), batch_size=None, shuffle=False,
                                             num_workers=workers, collate_fn=lambda x: x)
        emit("phase", name="prepare", total=len(items))
        for position, image in loader:
            if isinstance(image, str) or stamps[position] is None:
                reason = image if isinstance(image, str) else "gone"
                failed.append(f"{os.path.basename(paths[position])} ({reason})")
            else:
                array[position] = image
                entries.append([paths[position], *stamps[position], position])
            emit("advance", n=1)
        array.flush()
        del array
        from cxrsem import __version__

        index = {"format": FORMAT, "name": name, "size": size, "reader": reader,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cxrsem_version": __version__,
                 "files": entries}
        (tmp / "index.json").write_text(json.dumps(index))
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if failed:
        shown = ", ".join(failed[:20]) + (f", ... and {len(failed) - 20:,} more" if len(failed) > 20 else "")
        warnings.warn(f"{name}: {len(failed):,} images could not be decoded and were not prepared: "
                      f"{shown}", CacheWarning, stacklevel=2)
    return PrepareResult(folder, size, len(entries), failed, time.perf_counter() - started)


def _swap_into_place(new: Path, final: Path) -> None:
    """Replace ``final`` by ``new``; readers see the old store or the new one, never a mix."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


class ServedImages:
    """Mixin for a dataset of image files: ``cxrsem prepare`` can store them, a prepared store
    serves them, and an unreadable file is warned about once and the next readable one served in
    its place.  Built-in loaders and plugins (cxrsem-xrv) share it.

    The class sets ``name``, ``image_size`` and ``files`` (paths as strings, item order), calls
    :meth:`_init_served` with its reader's tag (:func:`reader_tag`: which decoder a stored row
    came from) and implements ``_decode(j)``, which raises :class:`DataError` for a file it cannot
    read.  ``unreadable_warning`` is the warning category of a skipped file.
    """

    name: str
    image_size: int
    files: list[str]
    unreadable_warning: type[Warning] = UserWarning

    def _init_served(self, reader: str) -> None:
        self._reader_tag = reader
        self._bad: set[int] = set()
        self._cache: CacheLookup | None = None

    def _decode(self, j: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[Path]:
        """The image files, in item order."""
        return [Path(f) for f in self.files]

    def _index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        return index

    def image_sources(self) -> ImageSources:
        """The files and decoder ``cxrsem prepare`` stores."""
        return ImageSources(files=self.files, size=self.image_size, reader=self._reader_tag,
                            decode=self._decode)

    def use_image_cache(self, cache_dir: Path | None) -> None:
        """Serve the images prepared under ``cache_dir`` (unchanged files only) instead of decoding."""
        self._cache = lookup(self.files, self.image_size, self._reader_tag, cache_dir)

    @property
    def image_cache_state(self) -> dict[str, Any] | None:
        """Which prepared stores serve how many images (None: every image is decoded)."""
        return None if not self._cache else {"folders": self._cache.folders, "images": self._cache.count}

    def _cache_lines(self) -> list[str]:
        return [self._cache.describe(len(self))] if self._cache else []

    def _load(self, index: int) -> tuple[int, torch.Tensor]:
        """Item ``index``'s image, or the next readable one's: ``(served item, image)``."""
        n = len(self)
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            hit = self._cache.hits[j] if self._cache else None
            if hit is not None:
                return j, hit[0].image(hit[1])
            try:
                return j, self._decode(j)
            except DataError as exc:
                self._bad.add(j)
                warnings.warn(f"{self.name}: unreadable image skipped, the next readable one is "
                              f"served in its place: {exc}", self.unreadable_warning, stacklevel=3)
        raise DataError(f"{self.name}: none of its {n:,} images can be read")
