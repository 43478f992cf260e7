"""Writing outputs safely: atomic files, output folders, the resolved config and the run manifest.

Every file is written to a temporary sibling and renamed into place, so a crash or a kill mid-write
leaves the previous good file (checkpoint, dissection.json, ...) intact, never a truncated one.
A set of files that belongs together (one layer's dissection) is written into a hidden sibling
folder and swapped in as a whole (:func:`staged_folder`).  A folder that one process writes has
an owner (:class:`FolderLock`), and every output name taken from user data (model stems, image
stems, concept names) goes through :func:`safe_name`, so nothing is written outside ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import tomli_w

from cxrsem.errors import CxrsemError, UsageError


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


def _holds_files(folder: Path, ignored: Collection[str] = ()) -> bool:
    return any((not p.is_dir() or p.is_symlink()) and p.relative_to(folder).as_posix() not in ignored
               for p in folder.rglob("*"))


@contextmanager
def output_dir(path: str | Path, scaffolding: Collection[str] = ()) -> Iterator[Path]:
    """:func:`ensure_output_dir`, and on a failure inside the block the folders it created itself
    are removed again when nothing was written into them but ``scaffolding`` (files relative to
    ``path`` that say how the run was started, such as ``config.toml``); a folder that existed
    before is never removed."""
    path = Path(path)
    created = None  # the topmost folder this call creates
    for folder in (path, *path.parents):
        if folder.exists() or folder == folder.parent:
            break
        created = folder
    path = ensure_output_dir(path)
    try:
        yield path
    except BaseException:
        ignored = {(path / name).relative_to(created).as_posix() for name in scaffolding} \
            if created is not None else set()
        if created is not None and created.is_dir() and not _holds_files(created, ignored):
            shutil.rmtree(created, ignore_errors=True)
        raise


# --- names from user data ---------------------------------------------------------------------------

NAME_MAX_BYTES = 120  # a file name is at most 255 bytes; suffixes and staging prefixes need room
_UNSAFE = set('/\\') | {chr(c) for c in range(32)} | {chr(127)}


def safe_name(text: str, max_bytes: int = NAME_MAX_BYTES) -> str:
    """``text`` as one safe path component for an output name (stable: the same text gives the
    same name).

    Path separators (``/``, ``\\``), NUL, other control characters and undecodable bytes become
    ``-``; surrounding spaces are dropped and leading dots become ``_`` (so ``.``, ``..`` and
    hidden names cannot occur); an empty result is ``_``.  A name longer than ``max_bytes`` UTF-8
    bytes is cut and ends in ``-`` and 8 hex digits of the SHA-256 of ``text``, so two long names
    sharing a prefix stay apart.
    """
    text = str(text)
    # Cs: lone surrogates, how Python spells file-name bytes that are not UTF-8.
    name = "".join("-" if ch in _UNSAFE or unicodedata.category(ch) in ("Cc", "Cs") else ch
                   for ch in text).strip(" ")
    stripped = name.lstrip(".")
    name = ("_" * (len(name) - len(stripped)) + stripped) or "_"
    if len(name.encode("utf-8")) > max_bytes:
        suffix = "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        budget = max_bytes - len(suffix)
        cut = name.encode("utf-8")[:budget].decode("utf-8", "ignore")
        name = cut + suffix
    return name


# --- ownership of an output folder ------------------------------------------------------------------


class LockedError(CxrsemError):
    """Another process writes the same result folder or cache entry."""


STALE_EMPTY_LOCK_S = 10.0  # a lock file still empty after this long lost its writer mid-creation


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class FolderLock:
    """Exclusive ownership of ``target`` (a folder or cache entry) for one process: the lock file
    ``path`` (default: the hidden sibling ``.<name>.lock``), created with ``O_CREAT | O_EXCL``
    and holding the owner's pid, host and start time.

    A second owner fails at once with :class:`LockedError` naming the first (pid, host, since
    when).  A lock left by a process that is gone (same host, pid not running) is taken over with
    a warning.  Use as a context manager; the lock file is removed on exit.
    """

    def __init__(self, target: str | Path, what: str | None = None,
                 path: str | Path | None = None) -> None:
        self.target = Path(target)
        self.path = Path(path) if path is not None else (
            self.target.parent / f".{self.target.name}.lock")
        self.what = what or str(self.target)
        self.held = False

    def _owner(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": sys.argv}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self._owner(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _stale(self, owner: dict[str, Any] | None) -> str | None:
        """Why the present lock is stale, or None when its owner may still be running."""
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "gone"
            return "empty" if age > STALE_EMPTY_LOCK_S else None
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() \
                and not _pid_alive(pid):
            return f"process {pid} on {host} (since {owner.get('since')}) is not running"
        return None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            owner = _read_lock(self.path)
            reason = self._stale(owner)
            if reason is None:
                who = ("an unknown process (its lock file is being written)" if owner is None else
                       f"process {owner.get('pid')} on {owner.get('host')} since "
                       f"{owner.get('since')}")
                raise LockedError(f"{self.what} is being written by {who}; wait for it, or remove "
                                  f"{self.path} if that process is gone")
            if reason != "gone":
                self._take_over(owner, reason)
        raise LockedError(f"could not lock {self.what}: {self.path} keeps changing")

    def _take_over(self, owner: dict[str, Any] | None, reason: str) -> None:
        # Rename, then check what was renamed: two processes that both saw the stale lock must not
        # both remove it (the second would remove the first one's fresh lock).
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) != owner and owner is not None:
            with suppress(FileExistsError):  # a fresh lock appeared meanwhile: give it back
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        warnings.warn(f"taking over the stale lock of {self.what} ({reason})", stacklevel=3)

    def release(self) -> None:
        if self.held:
            owner = _read_lock(self.path)
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --- a set of files swapped in as a whole -----------------------------------------------------------


def _staging_names(final: Path) -> tuple[str, str]:
    return f".{final.name}.new-", f".{final.name}.old-"


def recover_staged(final: str | Path) -> None:
    """Clean up after a process that died while swapping ``final`` (call while holding its lock):
    leftover new sets are removed; when ``final`` is missing and a previous set was moved aside,
    it is put back."""
    final = Path(final)
    new_prefix, old_prefix = _staging_names(final)
    if not final.parent.is_dir():
        return
    olds = sorted(p for p in final.parent.iterdir() if p.name.startswith(old_prefix))
    for path in final.parent.iterdir():
        if path.name.startswith(new_prefix):
            shutil.rmtree(path, ignore_errors=True)
    if olds and not final.exists():
        os.replace(olds[-1], final)
        warnings.warn(f"restored the previous results in {final} (an earlier run stopped while "
                      f"replacing them)", stacklevel=2)
        olds = olds[:-1]
    for path in olds:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_folder(final: str | Path) -> Iterator[Path]:
    """Write a folder's whole content elsewhere and swap it in at the end.

    Yields an empty hidden sibling folder; when the block ends without an error, ``final`` (if it
    exists) is renamed aside, the new folder renamed to ``final`` and the old one deleted.  On any
    failure the new folder is removed and ``final`` is left as it was.  Hold the folder's
    :class:`FolderLock` around it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    new_prefix, old_prefix = _staging_names(final)
    staging = Path(tempfile.mkdtemp(prefix=new_prefix, dir=final.parent))
    os.chmod(staging, 0o777 & ~_UMASK)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f"{old_prefix}{os.getpid()}-{staging.name[len(new_prefix):]}"
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_files(folder: str | Path) -> list[str]:
    """Every file below ``folder`` as a sorted POSIX path relative to it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


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


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")  # _atomic_target's mkstemp names


def atomic_temp_target(name: str) -> str | None:
    """The file name that the atomic-write temporary ``name`` (``.NAME.XXXXXXXX.tmp``, left behind
    when a writer was killed) was going to replace; None when ``name`` is no such temporary."""
    found = _TEMP_NAME.match(name)
    return found.group("target") if found else None


def stale_temporaries(folder: str | Path, owned: Callable[[str], bool]) -> list[Path]:
    """The temporaries of killed atomic writes in ``folder`` (not recursive) whose target file
    name ``owned`` accepts: what a command may delete as its own leftovers, and nothing else."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        target = atomic_temp_target(path.name)
        if target is not None and owned(target) and path.is_file() and not path.is_symlink():
            found.append(path)
    return found
