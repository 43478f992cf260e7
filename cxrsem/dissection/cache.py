"""Disk-backed activation and mask cache: one model pass per image, bounded memory.

Raw (un-upsampled) layer outputs are appended to a flat file per layer, image after image, and read
back in batches with plain file I/O (not ``mmap``: pages then live in the OS page cache and do not
count towards the process's resident memory).  Concept masks are stored bit-packed.  A cache
folder is reused only when its key (model weights, layers, concept sets and their options, sizes,
limit) matches and its ``meta.json`` says it is complete, so an interrupted run is never reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxrsem.outputs import write_json

CACHE_VERSION = 1


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


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
        total = len(self) if count is None else min(count, len(self))
        with open(self.path, "rb") as handle:
            for start in range(0, total, batch_size):
                n = min(batch_size, total - start)
                buffer = np.empty((n, *self.record_shape), dtype=self.dtype)
                handle.readinto(memoryview(buffer).cast("B"))
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

    def reset(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)

    def layer_store(self, layer: str, record_shape: tuple[int, ...], dtype: str) -> ArrayStore:
        return ArrayStore(self.dir / f"{layer}.{np.dtype(dtype).name}", record_shape, dtype)

    def mask_store(self, mask_shape: tuple[int, ...]) -> MaskStore:
        return MaskStore(self.dir / "masks.bits", mask_shape)

    def finish(self, info: dict[str, Any]) -> None:
        write_json(self.dir / "meta.json", {"key": self.key, "complete": True,
                                            "description": self.description, **info})
