"""Defaults that depend on the run: the output folder of a command, the layer of a model, and the
model to suggest when none is given.

Output folders (``docs/formats.md``, *Output folders*): a command given no ``--out`` writes into
``runs/<command>/<name>``; the name comes from what the command works on (:func:`train_run_name`,
:func:`model_run_name`, :func:`images_run_name`).  An earlier result is never overwritten: when the
folder exists and is not empty, the first free of ``<name>2``, ``<name>3``, ... is taken
(:func:`numbered`; ``<name>-2`` when the name ends in a digit).  Nothing here creates a folder: the
command's library call does, when it is about to write, and removes it again when it fails before
writing anything (:func:`cxrsem.outputs.output_dir`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrsem.errors import UnknownComponentError, UsageError
from cxrsem.outputs import safe_name

RUNS_ROOT = Path("runs")
# Where `cxrsem quickstart` (default --out) puts its trained model: QuickstartSettings.out, the
# run folder run_quickstart trains into, and the training's best checkpoint.
QUICKSTART_MODEL = Path("runs/quickstart/severity/best.pt")


def _free(path: Path) -> bool:
    """Missing, or an empty folder: a place a new result may go."""
    if not path.exists() and not path.is_symlink():
        return True
    return path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None


def numbered(path: str | Path) -> Path:
    """``path`` when it is free (missing or an empty folder), else the first free of ``path2``,
    ``path3``, ... (``path-2``, ``path-3``, ... when the name ends in a digit: ``epoch-006-2``,
    not ``epoch-0062``).  Creates nothing."""
    path = Path(path)
    if _free(path):
        return path
    separator = "-" if path.name[-1:].isdigit() else ""
    n = 2
    while not _free(candidate := path.with_name(f"{path.name}{separator}{n}")):
        n += 1
    return candidate


def default_out(command: str, name: str, *, root: str | Path = RUNS_ROOT, number: bool = True) -> Path:
    """``root/<command>/<name>`` (``name`` made a safe path component), numbered when taken
    (``number=False``: the folder itself, for a command told to replace what is there)."""
    path = Path(root) / command / safe_name(name)
    return numbered(path) if number else path


def train_run_name(dataset: str, loss: str) -> str:
    """``<dataset>-<loss>``: ``phantom-mae-scce``."""
    return safe_name(f"{dataset}-{loss}")


def _model_stem(model: str | Path) -> str:
    # As the dissection names a model's folder (cxrsem.dissection.results.model_folder_names).
    return safe_name(Path(str(model)).stem.replace(":", "-"))


def model_run_name(models: str | Path | Sequence[str | Path]) -> str:
    """One model: its file stem (``best`` for ``runs/x/best.pt``, ``xrv-NAME`` for
    ``xrv:NAME``).  Several (after expanding globs like ``RUN/epoch-*.pt``): the folder of the
    first (``RUN``), or ``models`` when it has none or is a model source's."""
    from cxrsem.checkpoint import source_prefix
    from cxrsem.dissection.run import expand_models

    paths = expand_models([models] if isinstance(models, str | Path) else list(models))
    if len(paths) == 1:
        return _model_stem(paths[0])
    first = paths[0]
    if source_prefix(str(first)) is None and first.parent.name:
        return safe_name(first.parent.name)
    return "models"


def images_run_name(images: str | Path | Sequence[str | Path]) -> str:
    """One image: its stem; one folder: its name; several: the folder of the first, or
    ``images`` when it has none."""
    items = [Path(images)] if isinstance(images, str | Path) else [Path(i) for i in images]
    if not items:
        return "images"
    first = items[0]
    if len(items) == 1:
        if first.is_dir():
            return safe_name(first.name or first.resolve().name or "images")
        return safe_name(first.stem or "images")
    return safe_name(first.parent.name) if first.parent.name else "images"


def first_model(models: str | Path | Sequence[str | Path]) -> str:
    """The first model of ``models`` (globs expanded), the one whose defaults a command uses; a
    string, as model sources (``xrv:NAME``) are recognised only in strings."""
    from cxrsem.dissection.run import expand_models

    items = [models] if isinstance(models, str | Path) else list(models)
    return str(expand_models(items[:1])[0])


def default_layer(model: str | Path | Mapping[str, Any],
                  options: Mapping[str, Any] | None = None) -> str:
    """The default layer of ``model`` (a checkpoint file, ``SOURCE:NAME`` of a model source with
    its ``options``, or a loaded checkpoint dict): the one its checkpoint records (``arch.layer``:
    model sources such as ``torchvision:NAME`` and in-memory modules know theirs), else its
    architecture's registered ``ArchitectureInfo.default_layer``.

    An architecture without one is a :class:`~cxrsem.errors.UsageError` listing the model's
    layers (feature maps at most two levels deep) to choose from.
    """
    from cxrsem.checkpoint import create_model, load_model
    from cxrsem.engine.layers import feature_map_layers
    from cxrsem.plugins import get

    source = "checkpoint" if isinstance(model, Mapping) else str(model)
    checkpoint = model if isinstance(model, Mapping) else load_model(model, options)
    recorded = checkpoint["arch"].get("layer")
    if isinstance(recorded, str) and recorded:
        return recorded
    name = checkpoint["arch"]["name"]
    try:
        layer = get("architecture", name).default_layer
    except UnknownComponentError:
        layer = None  # create_model below says what is wrong, as dissect would
    if layer:
        return layer
    network = create_model(checkpoint, source)
    size = int(checkpoint["input"]["size"])
    valid = feature_map_layers(network, size, int(checkpoint["input"].get("channels", 1)))
    shown = [v for v in valid if v.count(".") <= 1] or valid
    listed = ", ".join(shown[:30]) + (f", ... ({len(shown) - 30} more)" if len(shown) > 30 else "")
    raise UsageError(f"no --layer given and architecture {name!r} of {source} has no default layer; "
                     f"choose one with --layer: {listed or '(none outputs a feature map)'}")


def quickstart_model(directory: str | Path = ".") -> Path | None:
    """The model ``cxrsem quickstart`` trained in ``directory`` (as a path relative to it), if any."""
    return QUICKSTART_MODEL if (Path(directory) / QUICKSTART_MODEL).is_file() else None


def no_model_message(command: str) -> str:
    """The error of a command given no model anywhere; it names the quickstart's model when the
    working directory has one."""
    found = quickstart_model()
    if found is not None:
        return f"no model given (--model CKPT); try --model {found.as_posix()}"
    return (f"no model given (--model CKPT, or model = \"CKPT\" in the [{command}] table of "
            f"cxrsem.toml); `cxrsem quickstart` trains one to try")
