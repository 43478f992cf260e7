"""TOML configuration files: loading and validation.  Precedence: CLI > --config file > project
file > defaults.

One file can configure every command::

    [train]                 # options of `cxrsem train`, named like its flags
    dataset = "phantom"
    epochs = 3
    [dataset]               # options of the chosen dataset component (--dataset-opt)
    n_train = 500
    [loss]                  # --loss-opt
    alpha = 0.7
    [arch]                  # --arch-opt
    [concepts.phantom]      # options of a concept set (--concept-opt phantom.n_images=300)
    n_images = 300
    [data_roots]            # --data-root NAME=PATH
    covid-seg = "../shared/data/covid-19-chest-xray-segmentations-dataset"

Such a file is read from ``--config FILE``, and from the **project file** of the working directory:
``cxrsem.toml``, or else the ``[tool.cxrsem]`` table of ``pyproject.toml`` (same schema, tables
``[tool.cxrsem.dissect]``, ...).  Both may be present: the ``--config`` file's values win, table by
table and key by key (:func:`merge_configs`).

Command tables are checked against the command's options by the CLI (unknown keys and wrong types
name the key and the file); component tables are checked against the component's declared options.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrsem.errors import ConfigError, CxrsemError

COMMAND_TABLES = ("train", "dissect", "compare", "attribute", "verify", "report", "quickstart",
                  "prepare")
COMPONENT_TABLES = ("dataset", "loss", "arch", "concepts", "data_roots")
PROJECT_FILE = "cxrsem.toml"
PYPROJECT_FILE = "pyproject.toml"
PYPROJECT_TABLE = "tool.cxrsem"

# Keys of a loaded config that are not tables of the file: where it came from.
PATH_KEY = "__path__"      # the file, as found or given
SOURCE_KEY = "__source__"  # how `cxrsem config` names it: "--config FILE", "cxrsem.toml", "pyproject.toml"
PREFIX_KEY = "__prefix__"  # what precedes a table's name in the file: "" or "tool.cxrsem."
META_KEYS = (PATH_KEY, SOURCE_KEY, PREFIX_KEY)


def read_toml(path: Path, what: str = "config",
              error: type[CxrsemError] | None = None) -> dict[str, Any]:
    """The TOML document in ``path``; an unreadable file, bad text or bad TOML is one line of
    ``error`` (default :class:`ConfigError`) naming ``what`` the file is."""
    error = error or ConfigError
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {str(path)!r} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"invalid TOML in {str(path)!r}: {exc}") from None


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read and structurally validate a config file; ``None`` gives an empty config."""
    if path is None:
        return {}
    path = Path(path)
    return validate_config(read_toml(path), path, source=f"--config {path}")


def validate_config(data: dict[str, Any], path: Path, *, source: str, prefix: str = "") -> dict[str, Any]:
    """``data`` (the parsed tables of ``path``) checked for known tables; relative data roots made
    relative to the file; the meta keys added."""
    where = f"[{prefix.rstrip('.')}] of {str(path)!r}" if prefix else repr(str(path))
    for key, value in data.items():
        if key not in COMMAND_TABLES + COMPONENT_TABLES:
            allowed = ", ".join(f"[{prefix}{t}]" for t in COMMAND_TABLES + COMPONENT_TABLES)
            raise ConfigError(f"unknown key {key!r} in {where}; expected tables: {allowed}")
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} in {where} must be a table ([{prefix}{key}])")
    for name, table in data.get("concepts", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"concepts.{name} in {where} must be a table ([{prefix}concepts.{name}])")
    for name, root in data.get("data_roots", {}).items():
        if not isinstance(root, str):
            raise ConfigError(f"data_roots.{name} in {where} must be a path string")
        # Relative roots are relative to the config file, not to wherever the command runs.
        data["data_roots"][name] = str((path.parent / root).expanduser()) if not Path(
            root).expanduser().is_absolute() else root
    data[PATH_KEY] = str(path)
    data[SOURCE_KEY] = source
    data[PREFIX_KEY] = prefix
    return data


def load_project_config(directory: str | Path = ".") -> dict[str, Any]:
    """The project file of ``directory`` (not its parents): ``cxrsem.toml``, else the
    ``[tool.cxrsem]`` table of ``pyproject.toml``; empty when there is neither.

    A broken ``cxrsem.toml`` is an error.  A ``pyproject.toml`` is read only when it mentions
    cxrsem at all, so another project's file (even an invalid one) never stops a command.
    """
    directory = Path(directory)
    project = directory / PROJECT_FILE  # Path(".") / NAME is NAME: messages name it as the user sees it
    if project.is_file():
        return validate_config(read_toml(project), project, source=PROJECT_FILE)
    pyproject = directory / PYPROJECT_FILE
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if "cxrsem" not in text:
        return {}
    tool = read_toml(pyproject).get("tool", {})
    table = tool.get("cxrsem") if isinstance(tool, dict) else None
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"'tool.cxrsem' in {str(pyproject)!r} must be a table ([tool.cxrsem])")
    return validate_config(table, pyproject, source=PYPROJECT_FILE, prefix=PYPROJECT_TABLE + ".")


def table_label(config: Mapping[str, Any], table: str) -> str:
    """How error messages name ``table`` of ``config``: ``[dissect] of 'c.toml'`` or
    ``[tool.cxrsem.dissect] of 'pyproject.toml'``."""
    return f"[{config.get(PREFIX_KEY, '')}{table}] of {config.get(PATH_KEY, '')!r}"


def merge_configs(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """One config from several, later ones winning key by key within each table (and within each
    ``[concepts.NAME]``).  The meta keys are those of the last non-empty config."""
    merged: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if key in META_KEYS:
                merged[key] = value
            elif key == "concepts":
                into = merged.setdefault("concepts", {})
                for name, options in value.items():
                    into[name] = {**into.get(name, {}), **options}
            else:
                merged[key] = {**merged.get(key, {}), **value}
    return merged
