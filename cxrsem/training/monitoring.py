"""Watching a run while it trains: TensorBoard scalars and quick dissections of its checkpoints.

Both are switched on by :class:`~cxrsem.training.TrainConfig` fields (``tensorboard``,
``dissect_every``) and write only inside the run folder (docs/formats.md, "Run folder monitoring"):

- ``<run>/<tensorboard>/`` (default ``tensorboard/``): TensorBoard event files.  The x axis of
  every scalar is the optimisation step (batches since the start of the run), so per-batch and
  per-epoch scalars share one axis and a resumed run can purge what a killed process logged after
  its last checkpoint (``SummaryWriter(purge_step=...)``): a resumed run appends a new event file
  to the same folder.  Epoch scalars sit at the step that ends their epoch (``epoch x batches``);
  ``train/epoch`` maps steps back to epochs.
- ``<run>/quick-dissect/epoch-NNN/<layer>/``: a dissection result set (``dissection.json``,
  ``units.csv``, ``detectors.csv``; no figures) of ``epoch-NNN.pt``, with
  :class:`~cxrsem.dissection.DissectSettings` defaults on the first ``dissect_images`` images of
  the ``dissect_concepts`` sets.  Its activation cache is removed as soon as it is done.
"""

from __future__ import annotations

import math
import random
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.errors import UsageError

DEFAULT_TENSORBOARD_DIR = "tensorboard"
QUICK_DISSECT_DIR = "quick-dissect"
INSTALL_HINT = "pip install 'cxrsem[tensorboard]'"

# What the run's own folders may hold; anything else makes the folder someone else's.
EVENT_FILE = re.compile(r"^events\.out\.tfevents\.")
_QUICK_DISSECT_ENTRY = re.compile(r"^(epoch-\d{3,}|\.cache)$")

# Tags (docs/formats.md): validation metrics keep their metrics.jsonl names under "val/".
BATCH_LOSS = "train/loss"
EPOCH_LOSS = "train/epoch_loss"
LEARNING_RATE = "train/lr"
EPOCH = "train/epoch"
DETECTORS = "dissect/detectors"
_EPOCH_TAGS = {"train_loss": EPOCH_LOSS, "lr": LEARNING_RATE, "epoch": EPOCH}


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
    return SummaryWriter


def epoch_tag(key: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key."""
    return _EPOCH_TAGS.get(key, f"val/{key}")


def detector_tag(concept: str) -> str:
    return f"{DETECTORS}/{concept}"


class TensorBoardLog:
    """The scalars of one run (see the module docstring for tags and axis)."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        writer_class = summary_writer_class()
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = writer_class(log_dir=str(folder), purge_step=purge_step)

    def batch(self, step: int, loss: float) -> None:
        self.writer.add_scalar(BATCH_LOSS, loss, step)

    def epoch(self, step: int, record: Mapping[str, Any]) -> None:
        """Every number of one ``metrics.jsonl`` record; undefined metrics are left out."""
        for key, value in record.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            self.writer.add_scalar(epoch_tag(key), value, step)
        # A kill after this point must not lose scalars the checkpoint written next vouches for.
        self.writer.flush()

    def dissection(self, step: int, total: int, per_concept: Mapping[str, int]) -> None:
        self.writer.add_scalar(DETECTORS, total, step)
        for concept, count in per_concept.items():
            self.writer.add_scalar(detector_tag(concept), count, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def is_own_folder(path: Path, kind: str) -> bool:
    """Whether ``path`` holds only what a run writes there (``kind``: "tensorboard" or
    "quick-dissect"); --overwrite removes such a folder whole, anything else is refused."""
    if not path.is_dir() or path.is_symlink():
        return False
    if kind == "tensorboard":
        return all(p.is_file() and not p.is_symlink() and EVENT_FILE.match(p.name)
                   for p in path.iterdir())
    return all(_QUICK_DISSECT_ENTRY.match(p.name) and p.is_dir() and not p.is_symlink()
               for p in path.iterdir())


def result_folder(run_dir: Path, epoch: int, layer: str) -> Path:
    """Where the quick dissection of ``epoch`` at ``layer`` is written."""
    from cxrsem.outputs import safe_name

    return run_dir / QUICK_DISSECT_DIR / f"epoch-{epoch:03d}" / safe_name(layer)


def quick_dissect(checkpoint: Path, layer: str, *, run_dir: Path, concepts: Sequence[str],
                  images: int, data_roots: Mapping[str, str], seed: int, device: torch.device,
                  image_cache: str | None) -> tuple[int, dict[str, int]]:
    """Dissect ``checkpoint`` (``run_dir/epoch-NNN.pt``) at ``layer`` into
    ``run_dir/quick-dissect/``; returns (detectors, detectors per concept), as in its
    ``dissection.json``.  Every random state of the process is as it was before (the training
    stream continues bit-identically): building the model draws from the global generators."""
    from cxrsem.dissection import DissectSettings, dissect
    from cxrsem.formats.dissection import layer_record

    out = run_dir / QUICK_DISSECT_DIR
    settings = DissectSettings(limit=images, use_cache=False)
    with _rng_restored(device):
        try:
            results = dissect([checkpoint], [layer], out=out, concepts=concepts,
                              data_roots=data_roots, settings=settings, device=str(device),
                              seed=seed, figures=False, image_cache=image_cache)
        finally:
            # The activation cache only serves repeated dissections of one model: drop it.
            shutil.rmtree(out / ".cache", ignore_errors=True)
    record = layer_record(results[0], results[0].layers[0], settings)
    return int(record["num_detectors"]), {c: int(n) for c, n in record["detectors"].items()}


@contextmanager
def _rng_restored(device: torch.device) -> Iterator[None]:
    """Global torch (CPU and the run's CUDA device), NumPy and ``random`` states put back on exit."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
