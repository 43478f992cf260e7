"""``cxrsem config [COMMAND] [OPTIONS...]``: the settings a command would run with, and where each
came from (cli, --config FILE, cxrsem.toml, pyproject.toml, default).

The output is TOML with the source of each value as a comment, so it can be pasted into a
``cxrsem.toml``; ``--json`` gives the same as one JSON object.  The command's own options may follow
``COMMAND`` (``cxrsem config dissect --model m.pt``): they are parsed exactly as the command would
parse them, nothing is run.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
import typer

from cxrsem.cli._options import apply_configs, explicit_config, file_config, option_source
from cxrsem.config import COMPONENT_TABLES, PATH_KEY, SOURCE_KEY, load_project_config
from cxrsem.defaults import (
    default_out,
    images_run_name,
    model_run_name,
    no_model_message,
    train_run_name,
)
from cxrsem.errors import CxrsemError, UsageError

# What a command fills in itself when an option is unset (see the commands' bodies): computed from
# the other settings with the same cxrsem.defaults functions the commands call.
_Derive = Callable[[dict[str, Any]], Any]


def _layer(values: dict[str, Any], many: bool = False) -> Any:
    from cxrsem.defaults import default_layer, first_model

    layer = default_layer(first_model(values["model"]))
    return [layer] if many else layer


# option -> (how the command names the rule, the settings it needs, the rule)
_DERIVED: dict[str, dict[str, tuple[str, tuple[str, ...], _Derive]]] = {
    "train": {"out": ("runs/train/<dataset>-<loss>", ("dataset", "loss"), lambda v: None if v.get(
        "resume_dir") else default_out("train", train_run_name(v["dataset"], v["loss"]),
                                       number=not v.get("overwrite")))},
    "dissect": {"layer": ("the architecture's default layer", ("model",), lambda v: _layer(v, many=True)),
                "out": ("runs/dissect/<model stem>", ("model",),
                        lambda v: default_out("dissect", model_run_name(v["model"])))},
    "attribute": {"layer": ("the architecture's default layer", ("model",), _layer),
                  "out": ("runs/attribute/<image stem>", ("images",),
                          lambda v: default_out("attribute", images_run_name(v["images"])))},
    "verify": {"layer": ("the architecture's default layer", ("model",), _layer),
               "out": ("runs/verify/<model stem>", ("model",),
                       lambda v: default_out("verify", model_run_name(v["model"])))},
}
_NEEDS_MODEL = ("dissect", "attribute", "verify")


def _plain(value: Any) -> Any:
    """A value as TOML/JSON can hold it (None stays None: unset)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _settings(command_ctx: typer.Context, command: str, derive: bool = True) -> list[dict[str, Any]]:
    """One row per option of the command: name (as a config key), value, source, note (``derive``:
    also what the command computes for an unset model-dependent option, loading the model)."""
    rows = []
    values = {name: _plain(value) for name, value in command_ctx.params.items()}
    for param in command_ctx.command.params:
        if param.name in ("config", "help") or param.name is None:
            continue
        value = values.get(param.name)
        source = option_source(command_ctx, param.name)
        note = None
        if derive and value in (None, [], ()) and param.name in _DERIVED.get(command, {}):
            rule, needs, derive = _DERIVED[command][param.name]
            note = rule
            try:
                value = _plain(derive(values)) if all(values.get(n) for n in needs) else None
            except CxrsemError as exc:  # e.g. an architecture without a default layer
                note = f"{rule}: {' '.join(str(exc).split())}"
        if param.name == "model" and command in _NEEDS_MODEL and not value:
            note = no_model_message(command)
        rows.append({"key": param.name.replace("_", "-"), "value": value, "source": source,
                     "note": note})
    return rows


def _component_rows(merged: dict[str, Any], explicit: dict[str, Any],
                    project_label: str | None) -> dict[str, list]:
    """``[dataset]``, ``[concepts.NAME]``, ...: each key of the merged files with its file."""
    def rows(options: dict[str, Any], given: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"key": k, "value": v, "source": explicit[SOURCE_KEY] if k in given else project_label,
                 "note": None} for k, v in options.items()]

    tables: dict[str, list] = {}
    for table in COMPONENT_TABLES:
        if table == "concepts":
            for name, options in merged.get("concepts", {}).items():
                tables[f"concepts.{name}"] = rows(options, explicit.get("concepts", {}).get(name, {}))
        elif merged.get(table):
            tables[table] = rows(merged[table], explicit.get(table, {}))
    return tables


def _resolve(ctx: typer.Context, command: str, args: list[str], config: Path | None,
             derive: bool = True) -> dict[str, Any]:
    root = ctx.find_root()
    target = root.command.get_command(root, command)
    if target is None:
        names = [n for n in root.command.list_commands(root) if _configurable(root, n)]
        raise UsageError(f"unknown command {command!r}; one of: {', '.join(names)}")
    if not any(p.name == "config" for p in target.params):
        raise UsageError(f"`cxrsem {command}` takes no settings from files")
    if config is not None:
        args = [*args, "--config", str(config)]
    # Parsed as the command would parse them; resilient: a missing required argument is no error
    # here (nothing runs).  The files are read again outside it so that a broken one is reported.
    sub = target.make_context(command, list(args), parent=ctx, resilient_parsing=True)
    apply_configs(sub, config)
    project = load_project_config().get(PATH_KEY)
    explicit = explicit_config(sub)
    return {"command": command, "files": {"project": project, "config": explicit.get(PATH_KEY)},
            "settings": _settings(sub, command, derive),
            "tables": _component_rows(file_config(sub), explicit, project)}


def _configurable(root: typer.Context, name: str) -> bool:
    command = root.command.get_command(root, name)
    return command is not None and any(p.name == "config" for p in command.params)


def _toml_line(key: str, value: Any, comment: str, width: int = 44) -> str:
    if value is None or value == []:
        text = f"# {key} = (unset)"
    else:
        text = tomli_w.dumps({key: value}).strip()
        if "\n" in text:  # a table-like value: keep it one line
            text = f"{key} = {json.dumps(value)}"
    return f"{text.ljust(width)}  # {comment}"


def _render(resolved: dict[str, Any], only_files: bool = False) -> list[str]:
    lines = [f"[{resolved['command']}]"]
    for row in resolved["settings"]:
        if only_files and row["source"] == "default":
            continue
        comment = row["source"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(_toml_line(row["key"], row["value"], comment))
    return lines if len(lines) > 1 or not only_files else []


def _render_tables(tables: dict[str, list]) -> list[str]:
    lines = []
    for table, rows in tables.items():
        lines.append(f"[{table}]")
        lines.extend(_toml_line(r["key"], r["value"], r["source"]) for r in rows)
    return lines


def _files_line(files: dict[str, Any]) -> str:
    project = files["project"] or "none (cxrsem.toml, or [tool.cxrsem] in pyproject.toml)"
    explicit = files["config"] or "none"
    return f"# project file: {project}; --config: {explicit}"


def config_command(
    ctx: typer.Context,
    command: str | None = typer.Argument(None, metavar="COMMAND",
                                         help="Command whose settings to show (default: every "
                                              "setting the files give)."),
    config: Path | None = typer.Option(None, "--config", dir_okay=False,
                                       help="Also read this --config FILE, as the command would."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the settings a command would use and where each comes from (cli, --config FILE,
    cxrsem.toml, pyproject.toml, default); options after COMMAND are the command's own."""
    if command is None:
        if ctx.args:
            raise UsageError(f"options {' '.join(ctx.args)} need a COMMAND before them")
        root = ctx.find_root()
        names = [n for n in root.command.list_commands(root) if _configurable(root, n)]
        resolved = [_resolve(ctx, name, [], config, derive=False) for name in names]
        if as_json:
            typer.echo(json.dumps({"files": resolved[0]["files"] if resolved else {},
                                   "commands": {r["command"]: r["settings"] for r in resolved},
                                   "tables": resolved[0]["tables"] if resolved else {}},
                                  indent=2, default=str))
            return
        lines = [_files_line(resolved[0]["files"]) if resolved else ""]
        body = [line for r in resolved for line in _render(r, only_files=True)]
        body += _render_tables(resolved[0]["tables"]) if resolved else []
        lines += body or ["# no settings from files: built-in defaults everywhere"]
        lines.append("# every setting of a command: cxrsem config COMMAND")
        typer.echo("\n".join(lines))
        return
    resolved = _resolve(ctx, command, list(ctx.args), config)
    if as_json:
        typer.echo(json.dumps(resolved, indent=2, default=str))
        return
    typer.echo("\n".join([_files_line(resolved["files"]), *_render(resolved),
                          *_render_tables(resolved["tables"])]))


def register(app: typer.Typer) -> None:
    app.command("config", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True})(config_command)
