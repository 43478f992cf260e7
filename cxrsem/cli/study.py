"""``cxrsem study``: run a study file (train, dissect every epoch, attribute, report), resumably."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cxrsem.defaults import default_out

study_app = typer.Typer(name="study", help="Run a study file: named training runs, dissected, "
                        "attributed and reported (docs/study.md).", no_args_is_help=True)

FileArgument = typer.Argument(..., help="The study file (TOML).")
SetOption = typer.Option(None, "--set", metavar="TABLE.KEY=VALUE",
                         help="Override a value of the study file (repeatable), e.g. "
                              "--set study.seeds=[0] --set defaults.epochs=1.")
OutOption = typer.Option(None, "--out", help="The study's folder (default: runs/study/<name>); "
                                             "rerunning into it resumes.")
StepOption = typer.Option(None, "--step", metavar="PATTERN",
                          help="Only the steps whose id matches (repeatable; train/*, "
                               "dissect/bce/seed-0, ...); their inputs must be done.")


def _out(study: Any, out: Path | None) -> Path:
    return out if out is not None else default_out("study", study.name, number=False)


class StepLines:
    """One line per step start/finish: ``[k/N] done train/bce/seed-0 (12.3 s)``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: str, step: str, index: int, total: int, **info: Any) -> None:
        width = len(str(total))
        head = f"[{index:>{width}}/{total}]"
        if event == "skip":
            line = f"{head} done already: {step}"
        elif event == "start":
            line = f"{head} start {step}"
        elif event == "finish":
            line = f"{head} done {step} ({info['seconds']:.1f} s)"
        elif event == "fail":
            line = f"{head} FAILED {step}: {info['error']}"
        else:
            line = f"{head} not run {step} (needs {info.get('by')})"
        self.console.print(Text(line), highlight=False)


def run_command(
    file: Path = FileArgument,
    out: Path | None = OutOption,
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Independent steps run in this many "
                             "worker processes (torch threads: cores // N each)."),
    set_: list[str] | None = SetOption,
    step: list[str] | None = StepOption,
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo steps done with other "
                                      "settings (and the steps after them) instead of refusing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the steps and their state."),
) -> None:
    """Train every run of the study, dissect every epoch checkpoint, attribute and report.

    Resumable: a finished step is skipped, a killed one redone."""
    from cxrsem.study import load_study, run_study

    study = load_study(file, set_ or [])
    out = _out(study, out)
    console = Console(stderr=True)
    if dry_run:
        result = run_study(study, out, jobs=jobs, only=step or None, redo_changed=redo_changed,
                           dry_run=True)
        Console().print(_table(study, out, result.states, step or None))
        return
    result = run_study(study, out, jobs=jobs, only=step or None, redo_changed=redo_changed,
                       progress=StepLines(console))
    console.print(Text(f"study {study.name}: {len(result.ran)} step(s) run, {len(result.skipped)} "
                       f"already done; results in {out} (index: {out / 'steps.json'})"),
                  highlight=False)


def show_command(
    file: Path = FileArgument,
    out: Path | None = OutOption,
    set_: list[str] | None = SetOption,
    as_json: bool = typer.Option(False, "--json", help="Print the steps as JSON."),
) -> None:
    """List the steps of a study, their folders and which are done."""
    from cxrsem.study import load_study, plan, statuses

    study = load_study(file, set_ or [], check_data=False)
    out = _out(study, out)
    steps = plan(study)
    found = statuses(out, steps)
    if as_json:
        typer.echo(json.dumps([{"id": s.id, "kind": s.kind, "run": s.run, "seed": s.seed,
                                "folder": s.folder, "deps": s.deps, "state": found[s.id].state}
                               for s in steps], indent=1))
        return
    Console().print(_table(study, out, {s.id: found[s.id].state for s in steps}, None))


def _table(study: Any, out: Path, states: dict[str, str], only: list[str] | None) -> Table:
    from cxrsem.study import plan
    from cxrsem.study.plan import select

    steps = plan(study)
    steps = select(steps, only) if only else steps
    done = sum(states[s.id] == "done" for s in steps)
    table = Table(title=Text(f"study {study.name} in {out}: {done} of {len(steps)} steps done"))
    for column in ("step", "state", "needs"):
        table.add_column(column)
    for s in steps:
        table.add_row(Text(s.id), states[s.id], Text(", ".join(s.deps) if len(s.deps) < 3
                                                     else f"{len(s.deps)} steps"))
    return table


study_app.command("run")(run_command)
study_app.command("show")(show_command)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
