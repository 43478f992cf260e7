"""Errors a user can act on.  The CLI prints ``Error: <message>`` and exits non-zero for these;
any other exception is a bug and keeps its traceback under ``CXRSEM_DEBUG=1``."""

from __future__ import annotations


class CxrsemError(Exception):
    """Base class: the message is shown to the user as one line."""

    exit_code = 1


class UsageError(CxrsemError):
    """Bad command-line or config input."""

    exit_code = 2


class ConfigError(UsageError):
    """Unreadable, invalid or inconsistent configuration file."""


class PluginError(CxrsemError):
    """A plugin failed to load, registered a duplicate name, or a name is unknown."""


class UnknownComponentError(PluginError, UsageError):
    exit_code = 2


class DataError(CxrsemError):
    """Missing or malformed dataset files, or a dataset that yields nothing."""


class CheckpointError(CxrsemError):
    """A checkpoint that cannot be read or does not fit the request."""


class TrainingError(CxrsemError):
    """Training stopped (non-finite loss, out of memory, ...)."""


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error on a file (permission denied, disk full, a file
    where a folder must be, ...): the user's environment, not a bug, so no traceback."""
    what = exc.strerror or type(exc).__name__
    where = ""
    if exc.filename is not None:
        where = f": {str(exc.filename)!r}"
        if getattr(exc, "filename2", None) is not None:
            where += f" -> {str(exc.filename2)!r}"
    return f"{what}{where} (check that the path is right, writable and its disk not full)"
