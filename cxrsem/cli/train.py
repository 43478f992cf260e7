"""``cxrsem train``: train a chest X-ray model (classification, severity regression, weak labels)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from cxrsem.cli._options import (
    ConfigOption,
    DataRootOption,
    ImageCacheOption,
    QuietOption,
    component_options,
    data_roots,
    device_option,
    explicit_config,
    file_config,
    library_option,
    option_was_given,
    seed_option,
)
from cxrsem.cli._progress import TrainingProgress
from cxrsem.defaults import default_out, train_run_name
from cxrsem.engine import distributed
from cxrsem.errors import CxrsemError, UsageError
from cxrsem.training import DEFAULT_TENSORBOARD_DIR, TrainConfig, TrainingInterrupted, resume, train

_D = TrainConfig  # option defaults come from the library's TrainConfig, never re-declared here

# What --resume may change: the number of epochs (never fewer than already run), where it runs and
# how it is shown.  Anything else would make the result differ from the run that config.toml records.
_RESUMABLE = {"epochs", "device", "quiet", "resume_dir", "config"}


class _Interrupted(CxrsemError):
    """Ctrl-C, as a plain error: typer turns any KeyboardInterrupt into a silent exit 130."""

    exit_code = 130


def train_command(
    ctx: typer.Context,
    dataset: str = library_option(_D, "dataset", "Registered dataset (cxrsem plugins)."),
    loss: str = library_option(_D, "loss", "bce, weighted-bce, mse, weighted-mse, mae-scce, weak-bce, ..."),
    arch: str = library_option(_D, "arch", "Registered architecture."),
    epochs: int = library_option(_D, "epochs", "Epochs to train."),
    batch_size: int = library_option(_D, "batch_size", "Images per optimisation step; under "
                                     "torchrun the global batch, split evenly over the processes.",
                                     min=1),
    lr: float = library_option(_D, "lr", "Adam learning rate (no weight decay, as in the paper)."),
    image_size: int = library_option(_D, "image_size", "Input size in pixels."),
    patience: int = library_option(_D, "patience", "Early-stopping patience in epochs."),
    seed: int = seed_option(_D),
    device: str = device_option(_D),
    workers: int = library_option(_D, "workers", "DataLoader worker processes."),
    save_every: int = library_option(_D, "save_every", "Write epoch-NNN.pt every N epochs."),
    init: str = library_option(_D, "init", "random, imagenet, or a cxrsem checkpoint to start from."),
    weights: Path | None = typer.Option(None, "--weights",
                                        help="Local ImageNet weight file for --init imagenet."),
    resume_dir: Path | None = typer.Option(None, "--resume",
                                           help="Continue the run in RUN_DIR from last.pt."),
    out: Path | None = typer.Option(None, "--out", help="Run folder for checkpoints and metrics "
                                    "(new or empty; an earlier run there needs --resume or --overwrite; "
                                    "default: runs/train/<dataset>-<loss>, numbered when taken)."),
    overwrite: bool = library_option(_D, "overwrite", "Replace the earlier run in --out (only its "
                                     "files; a folder holding anything else is refused; without "
                                     "--out: runs/train/<dataset>-<loss> itself)."),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Write TensorBoard scalars (batch loss, lr, every validation "
        "metric; detector counts with --dissect-every) into RUN_DIR/tensorboard; needs "
        "pip install 'cxrsem[tensorboard]'."),
    tensorboard_dir: str | None = typer.Option(
        None, "--tensorboard-dir", metavar="NAME", help="Folder name inside the run folder for the "
        "TensorBoard events (implies --tensorboard; default tensorboard)."),
    dissect_every: int = library_option(_D, "dissect_every", "Quick dissection of epoch-000, every "
                                        "N-th and the last epoch's checkpoint into "
                                        "RUN_DIR/quick-dissect (0: off).", min=0),
    dissect_layer: str | None = library_option(_D, "dissect_layer", "Layer for --dissect-every "
                                               "(default: the architecture's default layer)."),
    dissect_concept: list[str] = library_option(_D, "dissect_concepts", "Concept set for "
                                                "--dissect-every (repeatable).",
                                                flag="--dissect-concept"),
    dissect_images: int = library_option(_D, "dissect_images", "Images of the concept sets per "
                                         "quick dissection.", min=1),
    shuffle: str = library_option(_D, "shuffle", "Training order: generator (one process, as "
                                  "before), seeded (per-epoch permutation from the seed, the same "
                                  "for any number of processes; whole batches only), auto (seeded "
                                  "under torchrun, else generator)."),
    dataset_opt: list[str] | None = typer.Option(None, "--dataset-opt", metavar="NAME=VALUE"),
    loss_opt: list[str] | None = typer.Option(None, "--loss-opt", metavar="NAME=VALUE"),
    arch_opt: list[str] | None = typer.Option(None, "--arch-opt", metavar="NAME=VALUE"),
    data_root: list[str] | None = DataRootOption,
    image_cache: str | None = ImageCacheOption,
    quiet: bool = QuietOption,
    config: Path | None = ConfigOption,
) -> None:
    """Train a model; writes epoch-NNN.pt (epoch-000 = initial), best.pt, last.pt, metrics.jsonl.

    Under torchrun (torchrun --nproc-per-node N -m cxrsem train ...) every process trains a
    DistributedDataParallel replica; only rank 0 shows progress and writes."""
    # Under torchrun only rank 0 shows progress and the summary (the others run silently).
    main_rank = distributed.launched_rank() == 0
    progress = TrainingProgress(quiet=quiet) if main_rank else None
    try:
        if resume_dir is not None:
            _refuse_changes_on_resume(ctx, resume_dir, out)
            result = resume(resume_dir, epochs=epochs if option_was_given(ctx, "epochs") else None,
                            device=device if option_was_given(ctx, "device") else None,
                            progress=progress)
        else:
            if out is None:  # --overwrite without --out: replace the default folder itself
                out = default_out("train", train_run_name(dataset, loss), number=not overwrite)
            from_file = file_config(ctx)
            train_config = TrainConfig(
                out=str(out), dataset=dataset, loss=loss, arch=arch, epochs=epochs,
                batch_size=batch_size, lr=lr, image_size=image_size, patience=patience, seed=seed,
                device=device, workers=workers, save_every=save_every, init=init,
                weights=str(weights) if weights else None,
                dataset_options=component_options(from_file, "dataset", dataset_opt, "--dataset-opt"),
                loss_options=component_options(from_file, "loss", loss_opt, "--loss-opt"),
                arch_options=component_options(from_file, "arch", arch_opt, "--arch-opt"),
                data_roots=data_roots(from_file, data_root), image_cache=image_cache,
                overwrite=overwrite,
                tensorboard=tensorboard_dir or (DEFAULT_TENSORBOARD_DIR if tensorboard else None),
                dissect_every=dissect_every, dissect_layer=dissect_layer,
                dissect_concepts=list(dissect_concept), dissect_images=dissect_images,
                shuffle=shuffle,
            )
            result = train(train_config, progress=progress)
    except TrainingInterrupted as exc:
        raise _Interrupted(str(exc)) from None
    finally:  # an error or Ctrl-C mid-epoch: leave the terminal clean for the one-line message
        if progress is not None and progress.bar is not None:
            progress.bar.stop()
    if not main_rank:
        return
    name, value = result.best_metric
    console = Console()
    console.print(f"trained {result.epochs_run} epoch(s); best {name} {value:.4f} at epoch "
                  f"{result.best_epoch}; checkpoints in {result.run_dir}", highlight=False, markup=False)
    console.print(f"results in {result.run_dir}", highlight=False, markup=False)


def _refuse_changes_on_resume(ctx: typer.Context, resume_dir: Path, out: Path | None) -> None:
    """--resume continues the run its config.toml records; an option that would change it is an
    error rather than silently ignored."""
    given = []
    for param in ctx.command.params:
        if param.name in _RESUMABLE or not option_was_given(ctx, param.name):
            continue
        if param.name == "out" and out is not None and out.resolve() == resume_dir.resolve():
            continue  # --out naming the resumed folder changes nothing
        given.append(param.opts[0] if param.opts else param.name)
    # The project file (cxrsem.toml) only gives defaults: its tables never block a resume.
    given += [f"[{table}] of --config" for table in ("dataset", "loss", "arch", "data_roots")
              if explicit_config(ctx).get(table)]
    if given:
        raise UsageError(f"{', '.join(given)} cannot change on --resume (only --epochs, to extend "
                         f"the run, and --device); start a new run with --out instead")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
