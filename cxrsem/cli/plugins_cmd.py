"""``cxrsem plugins``: what is installed, who registered it, and each component's options."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from cxrsem.components import KINDS
from cxrsem.plugins import describe_plugins


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    details: bool = typer.Option(False, "--details", help="Also show every component's options."),
) -> None:
    """List installed plugins and the datasets, concept sets, losses, architectures, model sources
    and attribution methods they add."""
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


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
