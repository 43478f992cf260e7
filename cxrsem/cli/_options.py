"""Options shared by several commands, and the config-file merge (CLI > file > defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cxrsem.config import load_config
from cxrsem.errors import ConfigError
from cxrsem.options import parse_assignments

ConfigOption = typer.Option(
    None, "--config", help="TOML file whose [COMMAND] table gives defaults; CLI options win.",
    dir_okay=False,
)
DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
SeedOption = typer.Option(0, "--seed", help="Random seed.")
DataRootOption = typer.Option(
    None, "--data-root", metavar="NAME=PATH",
    help="Where dataset/concept set NAME lives (repeatable). Also \\[data_roots] or CXRSEM_DATA_<NAME>.",
)
ImageCacheOption = typer.Option(
    None, "--image-cache", metavar="DIR",
    help="Where `cxrsem prepare` stored resized images (default $CXRSEM_CACHE_DIR, else "
         "~/.cache/cxrsem); 'off' decodes every image.",
)
BatchSizeOption = typer.Option(32, "--batch-size", min=1, help="Images per batch.")
QuietOption = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars.")


def resolve_params(ctx: typer.Context, command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command's parameters with config-file values filling what the user did not give.

    Returns ``(params, config)``.  Keys of the file's ``[command]`` table are named like the
    command's options (``batch-size`` or ``batch_size``); unknown keys and values of the wrong type
    are errors that name the key and the file.
    """
    params = dict(ctx.params)
    config = load_config(params.get("config"))
    source_file = config.get("__path__", "")
    by_name = {p.name: p for p in ctx.command.params if p.name not in ("config", "help")}
    for key, value in config.get(command, {}).items():
        name = key.replace("-", "_")
        param = by_name.get(name)
        if param is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in by_name))
            raise ConfigError(f"unknown key {key!r} in [{command}] of {source_file!r}; known: {known}")
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            continue  # given on the command line: the CLI wins
        try:
            params[name] = param.process_value(ctx, value)
        except Exception as exc:  # typer's (vendored click) BadParameter, or a TypeError
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise ConfigError(f"bad value for {key!r} in [{command}] of {source_file!r}: {message}") from None
    return params, config


def data_roots(config: dict[str, Any], given: list[str] | None) -> dict[str, str]:
    """``[data_roots]`` from the config, overridden by ``--data-root NAME=PATH``."""
    roots = dict(config.get("data_roots", {}))
    roots.update(parse_assignments(given or [], "--data-root"))
    return roots


def component_options(config: dict[str, Any], table: str, given: list[str] | None,
                      flag: str) -> dict[str, Any]:
    """Options of one component: its config table, overridden by ``--<flag> key=value``."""
    options: dict[str, Any] = dict(config.get(table, {}))
    options.update(parse_assignments(given or [], flag))
    return options


def concept_options(config: dict[str, Any], given: list[str] | None) -> dict[str, dict[str, Any]]:
    """Per-concept-set options from ``[concepts.NAME]`` and ``--concept-opt NAME.key=value``."""
    options = {name: dict(table) for name, table in config.get("concepts", {}).items()}
    for key, value in parse_assignments(given or [], "--concept-opt").items():
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise ConfigError(f"--concept-opt expects NAME.OPTION=VALUE, got {key}={value}")
        options.setdefault(name, {})[option] = value
    return options


def as_path(value: Any) -> Path | None:
    return None if value is None else Path(value)
