"""TOML configuration files: loading and validation.  Precedence: CLI > file > defaults.

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

Command tables are checked against the command's options by the CLI (unknown keys and wrong types
name the key and the file); component tables are checked against the component's declared options.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from cxrsem.errors import ConfigError

COMMAND_TABLES = ("train", "dissect", "compare", "attribute", "report", "quickstart")
COMPONENT_TABLES = ("dataset", "loss", "arch", "concepts", "data_roots")


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read and structurally validate a config file; ``None`` gives an empty config."""
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {str(path)!r}: {exc}") from None

    for key, value in data.items():
        if key not in COMMAND_TABLES + COMPONENT_TABLES:
            allowed = ", ".join(f"[{t}]" for t in COMMAND_TABLES + COMPONENT_TABLES)
            raise ConfigError(f"unknown key {key!r} in {str(path)!r}; expected tables: {allowed}")
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} in {str(path)!r} must be a table ([{key}])")
    for name, table in data.get("concepts", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"concepts.{name} in {str(path)!r} must be a table ([concepts.{name}])")
    for name, root in data.get("data_roots", {}).items():
        if not isinstance(root, str):
            raise ConfigError(f"data_roots.{name} in {str(path)!r} must be a path string")
        # Relative roots are relative to the config file, not to wherever the command runs.
        data["data_roots"][name] = str((path.parent / root).expanduser()) if not Path(
            root).expanduser().is_absolute() else root
    data["__path__"] = str(path)
    return data
