"""Writing outputs safely: atomic files, output folders, the resolved config and the run manifest.

Every file is written to a temporary sibling and renamed into place, so a crash or a kill mid-write
leaves the previous good file (checkpoint, dissection.json, ...) intact, never a truncated one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import tomli_w

from cxrsem.errors import UsageError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def _atomic_target(path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); outputs get the usual permissions instead.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file, then rename it to ``path``."""
    with _atomic_target(Path(path)) as handle:
        write(handle)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def ensure_output_dir(path: str | Path) -> Path:
    """Create ``path`` as a folder; a clear error when it exists as a file or cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output folder {str(path)!r} exists and is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {str(path)!r}: {exc.strerror}") from None
    return path


def toml_ready(value: Any) -> Any:
    """TOML has no null and no tuples: drop None, turn tuples and paths into lists and strings."""
    if isinstance(value, Mapping):
        return {str(k): toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [toml_ready(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value


def write_config(out_dir: str | Path, config: Mapping[str, Any], name: str = "config.toml") -> Path:
    """Write the resolved configuration (enough to rerun the command) as TOML."""
    return write_text(Path(out_dir) / name, tomli_w.dumps(toml_ready(config)))


def manifest(*, seed: int | None = None, device: str | None = None,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions, seed, device and command line of this run, for reproducibility."""
    import torch
    import torchvision

    from cxrsem import __version__
    from cxrsem.plugins import get_registry

    plugins = [
        {"name": p.plugin, "source": p.source, "version": p.version, "error": p.error}
        for p in get_registry().plugins
    ]
    data = {
        "cxrsem": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "plugins": plugins,
        "seed": seed,
        "device": device,
        "command": sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if extra:
        data.update(extra)
    return data


def write_manifest(out_dir: str | Path, **kwargs: Any) -> Path:
    return write_json(Path(out_dir) / "manifest.json", manifest(**kwargs))
