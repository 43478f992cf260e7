"""Rendering of library progress events with rich (the only place that knows about the terminal)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """Progress bars (or plain log lines with ``quiet``) for :func:`cxrsem.training.train` events."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet or not self.console.is_terminal
        self.bar: Progress | None = None
        self.task = None

    def __call__(self, event: str, **info: Any) -> None:
        getattr(self, f"on_{event}", lambda **_: None)(**info)

    def on_note(self, message: str) -> None:
        # markup=False everywhere here: messages quote paths and names ("[/b]" is not markup)
        self.console.print(message, style=None if self.quiet else "dim", highlight=False, markup=False)

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if self.quiet:
            return
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                            BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.0f} img/s"),
                            TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("train", total=batches, epoch=epoch, epochs=epochs,
                                      loss=float("nan"), speed=0.0)

    def on_batch(self, loss: float, images_per_s: float, **_: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=loss, speed=images_per_s)

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any], metric: tuple[str, float],
                     best: bool) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        name, value = metric
        star = " (best)" if best else ""
        line = (f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, "
                f"val {name} {value:.4f}{star}")
        if metrics.get("mae_mean_predictor") is not None:
            line += f" (mean predictor {metrics['mae_mean_predictor']:.4f})"
        self.console.print(line, highlight=False, markup=False)
        sys.stderr.flush()


class PhaseProgress:
    """Progress for multi-phase library calls (events: model, phase, advance, note)."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet or not self.console.is_terminal
        self.bar: Progress | None = None
        self.task = None

    def __enter__(self) -> PhaseProgress:
        if not self.quiet:
            self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, event: str, **info: Any) -> None:
        if event == "note" or (event == "model" and self.quiet):
            self.console.print(info.get("message") or f"dissecting {info.get('path')}", highlight=False,
                               markup=False)
        elif self.bar is not None and event in ("phase", "model"):
            name = info.get("name") or f"model {info.get('path')}"
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(name, total=info.get("total"))
        elif self.bar is not None and event == "advance" and self.task is not None:
            self.bar.update(self.task, advance=info.get("amount", 1))
