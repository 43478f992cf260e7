"""The ``cxrsem`` command: assembles one Typer app from one module per subcommand.

Each command only parses options, calls one library function and renders the result; the error
policy lives here: a :class:`~cxrsem.errors.CxrsemError` or a usage mistake becomes one line on
stderr and a non-zero exit; anything else is a bug, shown with its traceback under
``CXRSEM_DEBUG=1`` (or ``--debug``).
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from cxrsem import __version__
from cxrsem.cli import (
    attribute,
    compare,
    config_cmd,
    dissect,
    plugins_cmd,
    prepare,
    quickstart,
    report,
    study,
    train,
    verify,
)
from cxrsem.errors import CxrsemError, os_error_message

app = typer.Typer(
    name="cxrsem",
    help="Semantic interpretation of chest X-ray models: Network Dissection and semantic attribution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrsem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (same as CXRSEM_DEBUG=1)."),
) -> None:
    """Semantic interpretation of chest X-ray models (Khakzar et al., MICCAI 2021)."""


for module in (prepare, train, dissect, compare, attribute, verify, report, plugins_cmd,
               quickstart, config_cmd, study):
    module.register(app)


def _debug_requested(argv: list[str]) -> bool:
    return os.environ.get("CXRSEM_DEBUG", "") not in ("", "0") or "--debug" in argv


def _fail(message: str, code: int) -> None:
    # One line, whatever the message held: the contract of every error the CLI prints.
    text = " ".join(str(message).split())
    typer.echo(f"Error: {text}", err=True)
    raise SystemExit(code)


def _is_click_error(exc: BaseException) -> bool:
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Warnings are for users here (skipped files, resized masks): one plain line each.
    typer.echo(f"Warning: {' '.join(str(message).split())}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    shown_before = warnings.showwarning
    if not debug:
        warnings.showwarning = _show_warning
    try:
        _run(argv, debug)
    finally:  # main() is also called from tests and notebooks: leave their warnings as they were
        warnings.showwarning = shown_before


def _run(argv: list[str], debug: bool) -> None:
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="cxrsem", standalone_mode=False)
    except CxrsemError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except (typer.Exit, SystemExit):
        raise
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except OSError as exc:  # a read-only --out, a full disk: the environment, not a bug
        if debug:
            raise
        _fail(os_error_message(exc), 1)
    except Exception as exc:
        if _is_click_error(exc):
            # Typer vendors click: its usage errors are recognised by shape, not by private class.
            if type(exc).__name__ == "NoArgsIsHelpError":
                typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else "")
                raise SystemExit(0) from None
            if debug:
                raise
            _fail(exc.format_message(), getattr(exc, "exit_code", 2))
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (run with CXRSEM_DEBUG=1 for the traceback)", 1)
    if result == 130:  # typer turns a KeyboardInterrupt into a silent exit 130
        _fail("interrupted", 130)
    raise SystemExit(result if isinstance(result, int) else 0)
