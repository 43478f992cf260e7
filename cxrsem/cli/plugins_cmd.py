"""``cxrsem plugins``: what is installed, who registered it, and each component's options;
``cxrsem plugins new``: a ready plugin package to start from (:mod:`cxrsem.scaffold`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxrsem.components import KINDS
from cxrsem.plugins import describe_plugins
from cxrsem.scaffold import PLUGIN_KINDS, new_plugin

plugins_app = typer.Typer(
    name="plugins",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@plugins_app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    details: bool = typer.Option(False, "--details", help="Also show every component's options."),
) -> None:
    """List installed plugins and the datasets, concept sets, losses, architectures, model sources
    and attribution methods they add (`cxrsem plugins new` writes a new plugin package)."""
    if ctx.invoked_subcommand is not None:
        return
    described = describe_plugins(details=details)
    if as_json:
        typer.echo(json.dumps(described, indent=2, default=str))
        return
    console = Console()
    table = Table(title="cxrsem plugins")
    for column in ("plugin", "source", "version", "registers"):
        table.add_column(column)
    for entry in described:
        registers = "; ".join(
            f"{KINDS[kind].plural}: {', '.join(names)}" for kind, names in entry["components"].items()
        )
        if entry["error"]:
            registers = f"[red]failed: {entry['error']}[/red]" + (f" ({registers})" if registers else "")
        table.add_row(entry["name"], entry["source"], entry["version"] or "-", registers or "-")
    console.print(table)
    if details:
        for entry in described:
            for source, specs in entry.get("specs", {}).items():
                console.print(f"model source {source}: --model {source}:SPEC with SPEC one of "
                              f"{', '.join(specs) or '(any)'}", highlight=False)
            for component, options in entry.get("options", {}).items():
                if not options:
                    continue
                opt_table = Table(title=component, title_justify="left")
                for column in ("option", "type", "default", "help"):
                    opt_table.add_column(column)
                for option in options:
                    help_text = option["help"] + (
                        f" (one of: {', '.join(map(str, option['choices']))})" if option["choices"] else "")
                    opt_table.add_row(option["name"], option["type"], repr(option["default"]), help_text)
                console.print(opt_table)


_NEW_HELP = ("Write a new plugin package to start from: a pyproject.toml with the cxrsem entry point, one "
             "working example component of KIND, a README and contract tests that pass as generated. "
             "Nothing existing is overwritten.")


@plugins_app.command("new", help=_NEW_HELP, short_help="Write a new plugin package to start from.")
def new(
    name: str = typer.Argument(..., help="Distribution name of the package, e.g. cxrsem-my-dataset; "
                                         "the component is named NAME without 'cxrsem-'."),
    kind: str = typer.Option(..., "--kind", help=f"What the plugin adds: {', '.join(PLUGIN_KINDS)}."),
    out: Path | None = typer.Option(None, "--out", help="Folder of the new package (new or empty); "
                                                        "default ./NAME."),
) -> None:
    """``cxrsem plugins new``: one call of :func:`cxrsem.scaffold.new_plugin`, then what it wrote."""
    created = new_plugin(name, kind, out=out)
    names, label = created.names, KINDS[created.kind.replace("-", "_")].label
    lines = [f"wrote {created.path}: the {label} {names.component!r} (module {names.module}, "
             f"entry point {names.component} = {names.module}.plugin)",
             *(f"  {relative}" for relative in created.files),
             "next:",
             f"  cd {created.path} && python -m pytest   # the contract tests, before installing",
             f"  pip install -e {created.path}           # then `cxrsem plugins` lists it"]
    typer.echo("\n".join(lines))  # plain lines: rich would wrap the commands at the terminal width


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app)
