"""Disk-backed activation and mask cache: one model pass per image, bounded memory.

Raw (un-upsampled) layer outputs are appended to a flat file per layer, image after image, and read
back in batches with plain file I/O (not ``mmap``: pages then live in the OS page cache and do not
count towards the process's resident memory).  Concept masks are stored bit-packed.  A cache
folder is reused only when its key (model weights, layers, concept sets and their options, sizes,
limit) matches and its ``meta.json`` says it is complete, so an interrupted run is never reused.

An entry is written into a hidden sibling folder and renamed into place when complete
(:func:`cxrsem.outputs.staged_folder`), by one process at a time (its :class:`FolderLock`,
``.<key>.lock``).  Before reuse its files are checked against ``meta.json`` (sizes), and while it
is read every batch is checked for NaN: a damaged entry is recomputed with a warning
(:class:`DamagedCache`), never turned into results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cxrsem.outputs import FolderLock, recover_staged, safe_name, staged_folder, write_json

CACHE_VERSION = 1


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class DamagedCache(Exception):
    """A cache entry whose files do not hold what its ``meta.json`` promises."""


class ArrayStore:
    """Fixed-shape records (one per image) appended to a file and read back in batches."""

    def __init__(self, path: Path, record_shape: tuple[int, ...], dtype: str) -> None:
        self.path = path
        self.record_shape = tuple(record_shape)
        self.dtype = np.dtype(dtype)
        self.record_bytes = int(np.prod(self.record_shape)) * self.dtype.itemsize
        self._handle = None

    def append(self, records: np.ndarray) -> None:
        if self._handle is None:
            self._handle = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._handle.write(np.ascontiguousarray(records, dtype=self.dtype).tobytes())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __len__(self) -> int:
        return self.path.stat().st_size // self.record_bytes if self.path.exists() else 0

    def batches(self, batch_size: int, count: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_index, records[B, ...])`` for the first ``count`` records."""
        total = len(self) if count is None else count
        with open(self.path, "rb") as handle:
            for start in range(0, total, batch_size):
                n = min(batch_size, total - start)
                buffer = np.empty((n, *self.record_shape), dtype=self.dtype)
                got = handle.readinto(memoryview(buffer).cast("B"))
                if got != buffer.nbytes:
                    raise DamagedCache(f"{self.path.name} ends after {start + got // self.record_bytes} "
                                       f"of {total} records")
                if buffer.dtype.kind == "f" and np.isnan(buffer).any():
                    raise DamagedCache(f"{self.path.name} holds NaN (records {start}..{start + n - 1})")
                yield start, buffer

    def read(self, index: int) -> np.ndarray:
        with open(self.path, "rb") as handle:
            handle.seek(index * self.record_bytes)
            data = handle.read(self.record_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.record_shape)


class MaskStore(ArrayStore):
    """Boolean ``[C, M, M]`` masks per image, stored bit-packed."""

    def __init__(self, path: Path, mask_shape: tuple[int, ...]) -> None:
        self.mask_shape = tuple(mask_shape)
        packed = (int(np.prod(self.mask_shape)) + 7) // 8
        super().__init__(path, (packed,), "uint8")

    def append(self, records: np.ndarray) -> None:
        flat = records.reshape(records.shape[0], -1)
        super().append(np.packbits(flat, axis=1))

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        size = int(np.prod(self.mask_shape))
        bits = np.unpackbits(packed, axis=-1, count=size)
        return bits.reshape(*packed.shape[:-1], *self.mask_shape).astype(bool)


def sweep(root: Path) -> None:
    """Remove what killed processes left in the cache folder ``root``: half-written entries and
    lock files whose owner is gone (an entry in use by a running process is left alone)."""
    import warnings

    from cxrsem.outputs import LockedError

    if not root.is_dir():
        return
    keys = set()
    for path in root.iterdir():
        name = path.name
        if name.startswith(".") and (name.endswith(".lock") or ".new-" in name or ".old-" in name):
            keys.add(name[1:].split(".", 1)[0])
    for key in sorted(keys):
        lock = FolderLock(root / key)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lock.acquire()
        except LockedError:
            continue
        try:
            recover_staged(root / key)
        finally:
            lock.release()


class DissectionCache:
    """The cache folder of one (model, layers, concept sets, sizes) combination."""

    def __init__(self, root: Path, key: str, description: dict[str, Any]) -> None:
        self.dir = root / key
        self.key = key
        self.description = description

    def is_complete(self) -> bool:
        meta = self.dir / "meta.json"
        if not meta.is_file():
            return False
        try:
            data = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return data.get("complete") is True and data.get("key") == self.key

    def meta(self) -> dict[str, Any]:
        return json.loads((self.dir / "meta.json").read_text())

    def lock(self) -> FolderLock:
        """Ownership of this entry while one process writes or reads it."""
        return FolderLock(self.dir, what=f"activation cache {self.dir}")

    def problem(self, info: dict[str, Any], mask_shape: tuple[int, ...]) -> str | None:
        """What is wrong with the files of a complete entry (None: sizes as ``meta.json`` says)."""
        try:
            count = int(info["count"])
            stores = [self.layer_store(layer, tuple(shape), info["dtype"])
                      for layer, shape in info["shapes"].items()]
        except (KeyError, TypeError, ValueError) as exc:
            return f"meta.json lacks {exc}"
        for store in [*stores, self.mask_store(mask_shape)]:
            if not store.path.is_file():
                return f"{store.path.name} is missing"
            size = store.path.stat().st_size
            if size != count * store.record_bytes:
                return (f"{store.path.name} holds {size} bytes, {count * store.record_bytes} "
                        f"expected for {count} images")
        return None

    def layer_store(self, layer: str, record_shape: tuple[int, ...], dtype: str,
                    folder: Path | None = None) -> ArrayStore:
        name = f"{safe_name(layer)}.{np.dtype(dtype).name}"
        return ArrayStore((folder or self.dir) / name, record_shape, dtype)

    def mask_store(self, mask_shape: tuple[int, ...], folder: Path | None = None) -> MaskStore:
        return MaskStore((folder or self.dir) / "masks.bits", mask_shape)

    def recover(self) -> None:
        """Remove what a process that died while writing this entry left (hold :meth:`lock`)."""
        recover_staged(self.dir)

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """A fresh folder to write the entry into; it replaces the entry when the block ends
        without an error (after :meth:`finish`), and is removed otherwise."""
        with staged_folder(self.dir) as folder:
            yield folder

    def finish(self, info: dict[str, Any], folder: Path | None = None) -> None:
        write_json((folder or self.dir) / "meta.json", {"key": self.key, "complete": True,
                                                        "description": self.description, **info})
