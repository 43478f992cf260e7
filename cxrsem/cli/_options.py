"""Options shared by several commands, and the config-file merge (CLI > file > defaults)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer

from cxrsem.config import load_config
from cxrsem.errors import ConfigError
from cxrsem.options import parse_assignments

_CONFIG_KEY = "cxrsem.config"


def _apply_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config`` (eager, so it runs before every other option): the file's ``[COMMAND]`` table
    becomes click's ``default_map``, so each option arrives in the command's own typed argument
    with the precedence CLI > file > default, and the whole file stays available to the command
    (``file_config``) for its component tables.

    Keys are named like the command's options (``batch-size`` or ``batch_size``); unknown keys and
    values of the wrong type are errors that name the key and the file.
    """
    config = load_config(value)
    ctx.meta[_CONFIG_KEY] = config
    command = ctx.command.name or ""
    source_file = config.get("__path__", "")
    by_name = {p.name: p for p in ctx.command.params if p.name not in ("config", "help")}
    defaults: dict[str, Any] = {}
    for key, raw in config.get(command, {}).items():
        name = key.replace("-", "_")
        param = by_name.get(name)
        if param is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in by_name))
            raise ConfigError(f"unknown key {key!r} in [{command}] of {source_file!r}; known: {known}")
        wrong = _type_mismatch(param, raw)
        if wrong:
            raise ConfigError(f"bad value for {key!r} in [{command}] of {source_file!r}: {wrong}")
        try:
            defaults[name] = param.process_value(ctx, raw)
        except Exception as exc:  # typer's (vendored click) BadParameter, or a TypeError
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise ConfigError(f"bad value for {key!r} in [{command}] of {source_file!r}: {message}") from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _kind(annotation: Any) -> tuple[str, tuple[type, ...]] | None:
    """(what the option takes, the TOML value types that fit it); None: not checked here."""
    if annotation is bool:
        return "true or false", (bool,)
    if annotation is int:
        return "an integer", (int,)
    if annotation is float:
        return "a number", (int, float)
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, Path | enum.Enum)):
        return "a string", (str,)
    return None


def _type_mismatch(param: Any, raw: Any) -> str | None:
    """Why a TOML value cannot be this option's value, or None.  TOML values are typed, so no
    coercion across types: ``epochs = true`` is not 1 and ``epochs = 2.5`` is not 2 (click's
    converters would accept both)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return None
    annotation = _strip_optional(descriptor.annotation)
    if typing.get_origin(annotation) is list:
        if not isinstance(raw, list):
            return f"expected a list, got {raw!r}"
        element = typing.get_args(annotation)
        kind = _kind(element[0]) if element else None
        values = raw
    else:
        if isinstance(raw, list) and not getattr(param, "multiple", False):
            return f"expected a single value, got the list {raw!r}"
        kind, values = _kind(annotation), [raw]
    if kind is None:
        return None
    label, accepted = kind
    for value in values:
        if isinstance(value, bool) and bool not in accepted:
            return f"expected {label}, got the boolean {str(value).lower()}"
        if not isinstance(value, accepted):
            return f"expected {label}, got {value!r}"
    return None


ConfigOption = typer.Option(
    None, "--config", help="TOML file whose [COMMAND] table gives defaults; CLI options win.",
    dir_okay=False, is_eager=True, callback=_apply_config,
)


def file_config(ctx: typer.Context) -> dict[str, Any]:
    """The whole ``--config`` file (empty without one), for component and data-root tables."""
    return ctx.meta.get(_CONFIG_KEY, {})


def option_was_given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line or in the config file."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT",)


def library_default(target: Any, name: str) -> Any:
    """The default of field/parameter ``name`` of a settings dataclass or a library function, so a
    CLI option never re-declares what the library already decides."""
    if dataclasses.is_dataclass(target):
        found = {f.name: f for f in dataclasses.fields(target)}[name]
        if found.default is not dataclasses.MISSING:
            return found.default
        return found.default_factory()  # type: ignore[misc]
    return inspect.signature(target).parameters[name].default


def library_option(target: Any, name: str, help: str, *, flag: str | None = None,  # noqa: A002
                   **kwargs: Any) -> Any:
    """``--name`` (or ``flag``) whose default is the library's (:func:`library_default`)."""
    return typer.Option(library_default(target, name), flag or "--" + name.replace("_", "-"),
                        help=help, **kwargs)


def seed_option(target: Any) -> Any:
    return library_option(target, "seed", "Random seed.")


def device_option(target: Any) -> Any:
    return library_option(target, "device", "auto, cpu, cuda or cuda:N.")


def batch_size_option(target: Any) -> Any:
    return library_option(target, "batch_size", "Images per batch.", min=1)


DataRootOption = typer.Option(
    None, "--data-root", metavar="NAME=PATH",
    help="Where dataset/concept set NAME lives (repeatable). Also \\[data_roots] or CXRSEM_DATA_<NAME>.",
)
ImageCacheOption = typer.Option(
    None, "--image-cache", metavar="DIR",
    help="Where `cxrsem prepare` stored resized images (default $CXRSEM_CACHE_DIR, else "
         "~/.cache/cxrsem); 'off' decodes every image.",
)
QuietOption = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars.")


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

