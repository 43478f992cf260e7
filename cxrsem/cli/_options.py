"""Options shared by several commands, and the config-file merge (CLI > --config file > project
file > defaults)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from cxrsem.config import (
    SOURCE_KEY,
    load_config,
    load_project_config,
    merge_configs,
    table_label,
)
from cxrsem.errors import ConfigError, UsageError
from cxrsem.options import parse_assignments

_CONFIG_KEY = "cxrsem.config"             # the project file and the --config file, merged
_EXPLICIT_KEY = "cxrsem.config.explicit"  # the --config file alone
_SOURCES_KEY = "cxrsem.config.sources"    # option name -> the file its default_map value came from
PROJECT_SOURCES = ("cxrsem.toml", "pyproject.toml")


def command_table_defaults(ctx: typer.Context, config: dict[str, Any]) -> dict[str, Any]:
    """The ``[COMMAND]`` table of ``config`` as the command's typed option values.

    Keys are named like the command's options (``batch-size`` or ``batch_size``); unknown keys and
    values of the wrong type are errors that name the key and the file.
    """
    command = ctx.command.name or ""
    where = table_label(config, command)
    by_name = {p.name: p for p in ctx.command.params if p.name not in ("config", "help")}
    defaults: dict[str, Any] = {}
    for key, raw in config.get(command, {}).items():
        name = key.replace("-", "_")
        param = by_name.get(name)
        if param is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in by_name))
            raise ConfigError(f"unknown key {key!r} in {where}; known: {known}")
        wrong = _type_mismatch(param, raw)
        if wrong:
            raise ConfigError(f"bad value for {key!r} in {where}: {wrong}")
        try:
            defaults[name] = param.process_value(ctx, raw)
        except Exception as exc:  # typer's (vendored click) BadParameter, or a TypeError
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise ConfigError(f"bad value for {key!r} in {where}: {message}") from None
    return defaults


def apply_configs(ctx: typer.Context, path: Path | None) -> None:
    """The project file's and the ``--config`` file's ``[COMMAND]`` tables become click's
    ``default_map`` (the file's values winning), and both files stay available to the command
    (:func:`file_config`) for their component tables; :func:`option_source` tells where each
    value came from."""
    project = load_project_config()
    explicit = load_config(path)
    ctx.meta[_CONFIG_KEY] = merge_configs(project, explicit)
    ctx.meta[_EXPLICIT_KEY] = explicit
    defaults: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for config in (project, explicit):
        if config:
            found = command_table_defaults(ctx, config)
            defaults.update(found)
            sources.update(dict.fromkeys(found, config[SOURCE_KEY]))
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_SOURCES_KEY] = sources


def _apply_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config`` (eager, so it runs before every other option, given or not): see
    :func:`apply_configs`.  Each option then arrives in the command's own typed argument with the
    precedence CLI > --config file > project file > default."""
    apply_configs(ctx, value)
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
    None, "--config", help="TOML file whose [COMMAND] table gives defaults (over cxrsem.toml's); "
                           "CLI options win.",
    dir_okay=False, is_eager=True, callback=_apply_config,
)


def file_config(ctx: typer.Context) -> dict[str, Any]:
    """The project file and the ``--config`` file merged (the latter winning key by key; empty
    without either), for component and data-root tables."""
    return ctx.meta.get(_CONFIG_KEY, {})


def explicit_config(ctx: typer.Context) -> dict[str, Any]:
    """The ``--config`` file alone (empty without one)."""
    return ctx.meta.get(_EXPLICIT_KEY, {})


def option_source(ctx: typer.Context, name: str) -> str:
    """Where option ``name``'s value came from: ``cli``, ``environment``, ``--config FILE``,
    ``cxrsem.toml``, ``pyproject.toml`` or ``default``."""
    source = ctx.get_parameter_source(name)
    if source is None or source.name == "DEFAULT":
        return "default"
    if source.name == "DEFAULT_MAP":
        return ctx.meta.get(_SOURCES_KEY, {}).get(name, "default")
    return "environment" if source.name == "ENVIRONMENT" else "cli"


def option_was_given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line or in the ``--config`` file (the
    project file only gives defaults: it never counts as asking for something)."""
    return option_source(ctx, name) not in ("default", *PROJECT_SOURCES)


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


def precision_option(target: Any) -> Any:
    return library_option(target, "precision", "Forward pass: fp32 (exact), or bf16 / fp16 under "
                          "torch.autocast (faster on GPUs; thresholds move slightly).")


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



# --- the model a command works on, its layer, and where results go ------------------------------
# dissect, attribute and verify share these (with the same defaults from cxrsem.defaults), so an
# option of how a model is found or built is added once, here, and reaches all three.

ModelOption = typer.Option(None, "--model", metavar="CKPT",
                           help="Checkpoint or SOURCE:NAME (or `model` in cxrsem.toml).")
ModelsOption = typer.Option(None, "--model", metavar="CKPT",
                            help="Checkpoint(s) or SOURCE:NAME; a glob like RUN/epoch-*.pt "
                                 "(repeatable; or `model` in cxrsem.toml).")
LayerOption = typer.Option(None, "--layer", help="Layer name or unambiguous suffix (default: the "
                                                 "architecture's default layer).")
LayersOption = typer.Option(None, "--layer", help="Layer name or unambiguous suffix (repeatable; "
                                                  "default: the architecture's default layer).")


def out_option(command: str, named_by: str, help: str = "Output folder") -> Any:  # noqa: A002
    """``--out``, defaulting to ``runs/<command>/<named_by>`` (numbered when taken)."""
    return typer.Option(None, "--out", help=f"{help} (default: runs/{command}/<{named_by}>, "
                                            f"numbered when taken).")


def require_model(command: str, model: str | Sequence[str] | None) -> None:
    """One line when no model came from anywhere (it names the quickstart's model if any)."""
    from cxrsem.defaults import no_model_message

    if not model:
        raise UsageError(no_model_message(command))


# Options of a model source (--model torchvision:NAME, timm:NAME): the source's own option names.
WeightsOption = typer.Option(None, "--weights", metavar="FILE",
                             help="Weights for a model source (torchvision:NAME, timm:NAME): a "
                                  "state dict or checkpoint dict, read with weights_only.")
NumOutputsOption = typer.Option(None, "--num-outputs", help="Outputs of a model-source model "
                                "(default: from --outputs or the weights).")
OutputsOption = typer.Option(None, "--outputs", metavar="NAME,...",
                             help="Output names of a model-source model.")
InputSizeOption = typer.Option(None, "--input-size", help="Input size of a model-source model "
                               "(default 224).")
ChannelsOption = typer.Option(None, "--channels", help="Input channels of a model-source model "
                              "(default 3; the grey image is repeated).")
NormalizationOption = typer.Option(None, "--normalization", metavar="imagenet|xrv|none|MEAN,STD",
                                   help="Input normalisation of a model-source model "
                                        "(default imagenet).")


def model_source_options(*, weights: str | None = None, num_outputs: int | None = None,
                         outputs: str | None = None, input_size: int | None = None,
                         channels: int | None = None,
                         normalization: str | None = None) -> dict[str, Any]:
    """The model-source options the user gave (``--weights`` ... ``--normalization``)."""
    given = {"weights": weights, "num_outputs": num_outputs, "outputs": outputs,
             "input_size": input_size, "channels": channels, "normalization": normalization}
    return {k: v for k, v in given.items() if v is not None}
