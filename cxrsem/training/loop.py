"""The one training loop for every model family of the paper (Sec. 2.1 and 3).

Adam without weight decay (as in the paper), ReduceLROnPlateau on the validation metric, early
stopping with patience, one checkpoint per epoch including ``epoch-000.pt`` (the initial model, which
the paper compares trained models against), ``best.pt``, ``last.pt`` (with optimizer, scheduler and
RNG states so ``--resume`` continues bit-identically on CPU) and ``metrics.jsonl``.  Mixed precision
and ``channels_last`` on CUDA.

Nothing lost, nothing mixed:

- a run folder holds one run: ``--out`` must be new or empty; a folder holding an earlier run is
  refused unless ``overwrite`` (which removes that run's files, and only those); a folder holding
  anything else is always refused.  Temporaries of killed atomic writes are removed when a run
  starts or resumes.
- only finite states are kept: a non-finite batch loss, non-finite weights or validation outputs,
  or a diverged epoch (mean training loss above ``DIVERGENCE_FACTOR`` x max(1, the initial
  model's loss on the first batch)) stops training with :class:`TrainingError` before that epoch
  is written, naming the last good checkpoint.
- Ctrl-C raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``; the CLI exits 130) naming
  the last good checkpoint.
- ``resume`` changes nothing but the number of epochs (never fewer than already run) and the
  device.

Monitoring (``tensorboard``, ``dissect_every``; :mod:`cxrsem.training.monitoring`) writes inside
the run folder only, is among the run's own files, and never changes the weights: a quick
dissection runs with every random state restored afterwards.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains one replica in
DistributedDataParallel (docs/training.md, "Training on several GPUs (DDP)"): ``batch_size`` is
the global batch, split evenly over the ranks (:class:`~cxrsem.engine.data.GlobalBatchSampler`,
``shuffle="seeded"``); validation is sharded and gathered, so every rank decides best/early stop/
learning rate alike; only rank 0 checks, locks and writes the run folder; a failure on any rank
stops every rank with that rank's one-line message (:func:`cxrsem.engine.distributed.step`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler

from cxrsem.api import build_architecture, build_dataset, build_loss, resolve_component, resolve_root
from cxrsem.checkpoint import load_checkpoint, make_checkpoint, non_finite, save_checkpoint
from cxrsem.engine import distributed
from cxrsem.engine.data import GlobalBatchSampler, make_loader, to_device
from cxrsem.engine.device import autocast, resolve_device
from cxrsem.engine.layers import resolve_layers
from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION, InputSpec
from cxrsem.engine.runner import run_model
from cxrsem.errors import ConfigError, DataError, TrainingError, UsageError
from cxrsem.outputs import (
    FolderLock,
    output_dir,
    safe_name,
    stale_temporaries,
    toml_ready,
    write_config,
    write_manifest,
    write_text,
)
from cxrsem.plugins import get as get_component
from cxrsem.tasks import head_size
from cxrsem.training import distributed as ddp
from cxrsem.training.init import initialise
from cxrsem.training.metrics import compute_metrics, primary_metric
from cxrsem.training.monitoring import (
    QUICK_DISSECT_DIR,
    TensorBoardLog,
    is_own_folder,
    quick_dissect,
    result_folder,
    summary_writer_class,
)

Progress = Callable[..., None]

# An epoch whose mean training loss exceeds this many times max(1, the initial model's loss on the
# first batch) has diverged: no sensible run gets there (a --lr 1e6 run reaches 1e13 in one epoch),
# and the scale floor of 1 keeps a near-zero initial loss from stopping a healthy run.
DIVERGENCE_FACTOR = 1e4

# The run folder's owner while a process trains into it (a cxrsem.outputs.FolderLock): a second
# `train`/`--resume` into the same folder fails at once naming the first.
RUN_LOCK = ".cxrsem-run.lock"

# The files a run writes into its folder: nothing else is ever removed by --overwrite.  Its
# folders (the TensorBoard folder its config.toml names, quick-dissect/) are the run's own while
# they hold only what a run writes there (monitoring.is_own_folder).
_RUN_FILE = re.compile(r"^(epoch-\d{3,}\.pt|best\.pt|last\.pt|metrics\.jsonl|config\.toml|manifest\.json)$")


class TrainingInterrupted(TrainingError, KeyboardInterrupt):
    """Ctrl-C during training; the message names the last good checkpoint.  Still a
    ``KeyboardInterrupt`` for Python callers; the CLI exits 130."""

    exit_code = 130

SHUFFLES = ("auto", "generator", "seeded")

TASK_WORDS = {
    "multilabel": "multi-label classes",
    "binary": "healthy/unhealthy labels",
    "global-score": "a global severity score",
    "zones": "zone scores",
}


@dataclass
class TrainConfig:
    """Everything a training run depends on: names and numbers only (written as config.toml)."""

    out: str
    dataset: str = "phantom"
    loss: str = "bce"
    arch: str = "densenet121"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    image_size: int = 224
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    save_every: int = 1
    init: str = "random"
    weights: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    loss_options: dict[str, Any] = field(default_factory=dict)
    arch_options: dict[str, Any] = field(default_factory=dict)
    data_roots: dict[str, str] = field(default_factory=dict)
    image_cache: str | None = None  # where `cxrsem prepare` stored images (None = default, "off")
    overwrite: bool = False  # replace an earlier run in `out` (only its files); else refused
    # Monitoring (docs/formats.md, "Run folder monitoring"); none of it changes the weights.
    tensorboard: str | None = None  # TensorBoard event folder, a name inside `out` (None: off)
    dissect_every: int = 0  # quick dissection of epoch-NNN.pt every N epochs and at the end (0: off)
    dissect_layer: str | None = None  # the layer it reads (None: the architecture's default_layer)
    dissect_concepts: list[str] = field(default_factory=lambda: ["phantom"])  # concept sets
    dissect_images: int = 100  # the first N images of the concept sets
    # The training order: "generator" (one process: a torch generator seeded once, its state in
    # last.pt), "seeded" (a permutation per epoch from (seed, epoch), the same for every number
    # of processes; whole global batches only), "auto" (seeded under torchrun, else generator;
    # a run records what it resolved to).
    shuffle: str = "auto"

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0,
             f"--lr must be a positive finite number, got {self.lr}"),
            (self.image_size >= 32, "--image-size must be at least 32"),
            (self.patience >= 1, "--patience must be at least 1"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.workers >= 0, "--workers must be 0 or more"),
            (self.dissect_every >= 0, "--dissect-every must be 0 (off) or a number of epochs"),
            (self.dissect_images >= 1, "--dissect-images must be at least 1"),
            (self.shuffle in SHUFFLES, f"--shuffle must be one of {', '.join(SHUFFLES)}, got "
                                       f"{self.shuffle!r}"),
            (bool(self.dissect_concepts) and all(isinstance(n, str) and n for n in self.dissect_concepts),
             "--dissect-concept must name at least one concept set"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.tensorboard is not None:
            name = self.tensorboard
            if not isinstance(name, str) or safe_name(name) != name \
                    or name in (QUICK_DISSECT_DIR, RUN_LOCK) or _RUN_FILE.match(name):
                raise UsageError(
                    f"--tensorboard-dir {name!r} must be one folder name inside the run folder, other "
                    f"than the run's files (nothing is written outside --out; point `tensorboard "
                    f"--logdir` at the run folder or its parent)")
            summary_writer_class()  # not installed: say what to install before anything runs
        from cxrsem.engine.memory import check_training  # refuse what cannot fit

        check_training(self.image_size, self.batch_size)

    def as_toml(self) -> dict[str, Any]:
        """The resolved config in the layout of a config file (see :mod:`cxrsem.config`)."""
        data = asdict(self)
        data.pop("overwrite")  # how the folder was prepared, not how the model was trained
        components = {
            "dataset": data.pop("dataset_options"),
            "loss": data.pop("loss_options"),
            "arch": data.pop("arch_options"),
            "data_roots": data.pop("data_roots"),
        }
        return {"train": data, **components}

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> TrainConfig:
        train = dict(data.get("train", {}))
        return cls(**train, dataset_options=dict(data.get("dataset", {})),
                   loss_options=dict(data.get("loss", {})), arch_options=dict(data.get("arch", {})),
                   data_roots=dict(data.get("data_roots", {})))


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_metric: tuple[str, float]
    history: list[dict[str, Any]]
    stopped_early: bool
    notes: list[str]


def _choose_task(loss_name: str, loss_tasks: tuple[str, ...], dataset_name: str,
                 outputs: dict[str, list[str]]) -> str:
    for task in loss_tasks:
        if task in outputs:
            return task
    needs = " or ".join(TASK_WORDS.get(t, t) for t in loss_tasks)
    provides = ", ".join(outputs) or "nothing"
    raise UsageError(f"loss {loss_name} needs {needs}; dataset {dataset_name} provides: {provides}")


def _all_targets(dataset: Any, task: str) -> torch.Tensor:
    if hasattr(dataset, "targets"):
        return dataset.targets(task)
    return torch.stack([dataset[i]["targets"][task] for i in range(len(dataset))])


class _Run:
    """State of one training run; methods are the steps of the loop."""

    def __init__(self, config: TrainConfig, progress: Progress | None) -> None:
        self.config = config
        self.progress = progress or (lambda event, **info: None)
        self.notes: list[str] = []
        self.device = resolve_device(distributed.rank_device(config.device))  # cuda:LOCAL_RANK
        self.out = Path(config.out)
        self.last_good: tuple[Path, int] | None = None  # (last.pt, its epoch) once written
        self.initial_loss: float | None = None  # the initial model's loss on the first batch

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.progress("note", message=message)

    # -- set-up -----------------------------------------------------------------------------
    def build(self) -> None:
        c = self.config
        # Resolve component options now so a typo fails before any data is read.
        dataset_info, c.dataset_options = resolve_component("dataset", c.dataset, c.dataset_options)
        loss_info, c.loss_options = resolve_component("loss", c.loss, c.loss_options)
        arch_info, c.arch_options = resolve_component("architecture", c.arch, c.arch_options)

        common = {"image_size": c.image_size, "seed": c.seed, "data_roots": c.data_roots,
                  "cache_dir": c.image_cache}
        self.train_set = build_dataset(dataset_info, c.dataset_options, split="train", **common)
        self.val_set = build_dataset(dataset_info, c.dataset_options, split="val", **common)
        for split, ds in (("train", self.train_set), ("val", self.val_set)):
            if len(ds) == 0:
                raise DataError(f"dataset {c.dataset} yields zero {split} samples")
        self.task = _choose_task(c.loss, loss_info.tasks, c.dataset, self.train_set.outputs)
        self.output_names = list(self.train_set.outputs[self.task])
        if hasattr(self.train_set, "describe"):
            self.note(self.train_set.describe())

        train_targets = _all_targets(self.train_set, self.task)
        self.train_target_mean = train_targets.float().mean(0)
        self.loss_fn = build_loss(loss_info, c.loss_options, train_targets=train_targets)

        # What the model sees, recorded in every checkpoint: grey images, default normalisation.
        self.input_spec = InputSpec(size=c.image_size, channels=1,
                                    normalization=dict(DEFAULT_NORMALIZATION))
        torch.manual_seed(c.seed)
        self.model = build_architecture(
            arch_info, c.arch_options, num_outputs=head_size(self.task, len(self.output_names)),
            in_channels=self.input_spec.channels)
        for message in initialise(self.model, arch_info, c.init, c.weights):
            self.note(message)
        self.dissect_layer = self.quick_dissection_layer(arch_info) if c.dissect_every else None
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=0.0)
        self.metric_name, self.metric_mode = primary_metric(self.task)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode=self.metric_mode, factor=0.1, patience=max(1, c.patience // 2))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda"
                                           and not torch.cuda.is_bf16_supported())
        self.generator = torch.Generator().manual_seed(c.seed)
        pin = self.device.type == "cuda"
        self.train_sampler: GlobalBatchSampler | None = None
        if c.shuffle == "seeded":
            self.train_sampler = GlobalBatchSampler(len(self.train_set), c.batch_size, c.seed,
                                                    rank=distributed.rank(),
                                                    world=distributed.world_size())
        self.train_loader = make_loader(self.train_set, batch_size=c.batch_size, shuffle=True,
                                        generator=self.generator, workers=c.workers, pin_memory=pin,
                                        batch_sampler=self.train_sampler)
        self.val_loader: Any = None
        if distributed.active():  # this rank's contiguous share of whole batches, in order
            part = distributed.shard(len(self.val_set), block=c.batch_size)
            if len(part):
                self.val_loader = make_loader(
                    self.val_set, batch_size=c.batch_size, workers=c.workers, pin_memory=pin,
                    batch_sampler=BatchSampler(part, batch_size=c.batch_size, drop_last=False))
        else:
            self.val_loader = make_loader(self.val_set, batch_size=c.batch_size, workers=c.workers,
                                          pin_memory=pin)
        self.train_model: torch.nn.Module = self.model  # in DDP once run() starts on several ranks
        self.epoch = 0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.tensorboard: TensorBoardLog | None = None

    def quick_dissection_layer(self, arch_info: Any) -> str:
        """The full name of the layer quick dissections read; fails now, not after an epoch."""
        c = self.config
        layer = c.dissect_layer or arch_info.default_layer
        if layer is None:
            raise UsageError(f"architecture {c.arch} names no default layer; give --dissect-layer "
                             f"for --dissect-every")
        for name in c.dissect_concepts:  # unknown names and missing data folders fail up front
            resolve_root(name, get_component("concept_set", name).needs_root, c.data_roots)
        return resolve_layers(self.model, [layer], c.image_size, self.input_spec.channels)[0]

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        train = {"dataset": c.dataset, "loss": c.loss, "init": c.init, "epoch": self.epoch,
                 "metrics": metrics, "config": toml_ready(c.as_toml())}
        processes = distributed.describe(shards=None)
        if processes is not None:  # {"world_size", "backend"} of the processes that trained it
            train["distributed"] = processes
        return make_checkpoint(  # self.model: the plain module, never DDP's ("module." names)
            self.model, arch=c.arch, arch_kwargs=c.arch_options, task_kind=self.task,
            outputs=self.output_names, image_size=self.input_spec.size,
            normalization=self.input_spec.normalization, channels=self.input_spec.channels,
            train=train)

    def resume_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items()
                          if isinstance(v, int | float | str | bool | list) or v is None},
            "torch_rng": torch.get_rng_state(),
            "loader_rng": self.generator.get_state(),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
            "initial_loss": self.initial_loss,
        }

    def restore(self, run_dir: Path, last: dict[str, Any]) -> None:
        state = last.get("resume")
        if state is None:
            raise TrainingError(f"{run_dir / 'last.pt'} holds no resume state")
        self.model.load_state_dict(last["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["loader_rng"])
        self.epoch = int(last["train"]["epoch"])
        self.best_value = state["best_value"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        initial = state.get("initial_loss")
        if initial is None and self.history:  # runs written before initial_loss was recorded
            initial = self.history[0].get("train_loss")
        self.initial_loss = None if initial is None else float(initial)
        self.last_good = (run_dir / "last.pt", self.epoch)
        self.note(f"resumed {run_dir} after epoch {self.epoch}")

    def good_checkpoint(self) -> str:
        """Where the last good state is, for messages that stop a run."""
        if self.last_good is None:
            return "no checkpoint written yet"
        path, epoch = self.last_good
        return f"last good checkpoint: {path} (epoch {epoch})"

    def diverged(self, why: str) -> TrainingError:
        return TrainingError(f"{why}; stopped, {self.good_checkpoint()} (try a lower --lr)")

    def check_finite_weights(self) -> None:
        found = non_finite(self.model.state_dict())
        if found is not None:
            raise self.diverged(f"weight {found[0]} became non-finite at epoch {self.epoch}")

    def save_epoch(self, metrics: dict[str, Any], improved: bool, keep: bool = False) -> None:
        """``keep``: write ``epoch-NNN.pt`` whatever ``save_every`` says (it is dissected).
        Only rank 0 writes; every rank knows where the last good state is."""
        c = self.config
        if not distributed.is_main():
            self.last_good = (self.out / "last.pt", self.epoch)
            return
        checkpoint = self.checkpoint(metrics)
        if self.epoch == 0 or self.epoch % c.save_every == 0 or self.epoch == c.epochs or keep:
            save_checkpoint(self.out / f"epoch-{self.epoch:03d}.pt", checkpoint)
        if improved:
            save_checkpoint(self.out / "best.pt", checkpoint)
        save_checkpoint(self.out / "last.pt", {**checkpoint, "resume": self.resume_state()})
        self.last_good = (self.out / "last.pt", self.epoch)
        lines = "".join(json.dumps(h, allow_nan=False) + "\n" for h in self.history)
        write_text(self.out / "metrics.jsonl", lines)

    # -- monitoring -------------------------------------------------------------------------
    def step(self, epoch: int, batch: int | None = None) -> int:
        """The TensorBoard x axis: optimisation steps, ``batch`` (from 0) of ``epoch`` (from 1),
        or the end of ``epoch`` when ``batch`` is None."""
        if batch is None:
            return epoch * len(self.train_loader)
        return (epoch - 1) * len(self.train_loader) + batch + 1

    def open_tensorboard(self, resumed: bool) -> None:
        if self.config.tensorboard is not None:
            # Resumed: what a killed process logged after last.pt is purged, then appended to.
            self.tensorboard = TensorBoardLog(self.out / self.config.tensorboard,
                                              purge_step=self.step(self.epoch) + 1 if resumed else None)

    def dissection_due(self, final: bool) -> bool:
        every = self.config.dissect_every
        return every > 0 and (self.epoch % every == 0 or final)

    def quick_dissection(self) -> None:
        c = self.config
        assert self.dissect_layer is not None
        total, per_concept = quick_dissect(
            self.out / f"epoch-{self.epoch:03d}.pt", self.dissect_layer, run_dir=self.out,
            concepts=c.dissect_concepts, images=c.dissect_images, data_roots=c.data_roots,
            seed=c.seed, device=self.device, image_cache=c.image_cache)
        if self.tensorboard is not None:
            self.tensorboard.dissection(self.step(self.epoch), total, per_concept)
        found = ", ".join(f"{concept} {n}" for concept, n in
                          sorted(per_concept.items(), key=lambda item: -item[1]) if n)
        folder = result_folder(self.out, self.epoch, self.dissect_layer)
        self.note(f"quick dissection of epoch {self.epoch} at {self.dissect_layer}: {total} "
                  f"detector(s){f' ({found})' if found else ''}; {folder}")
        self.progress("dissection", epoch=self.epoch, layer=self.dissect_layer, detectors=total,
                      per_concept=per_concept, folder=str(folder))

    def dissection_missing(self) -> bool:
        """On resume: the due dissection of the checkpoint resumed from was not finished."""
        due = self.dissection_due(final=self.epoch == self.config.epochs)
        return due and self.dissect_layer is not None \
            and (self.out / f"epoch-{self.epoch:03d}.pt").is_file() \
            and not (result_folder(self.out, self.epoch, self.dissect_layer) / "dissection.json").is_file()

    # -- the loop ---------------------------------------------------------------------------
    def train_epoch(self) -> float:
        """Mean training loss of the epoch (over every rank's images under DDP)."""
        model = self.train_model
        model.train()
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(self.epoch)
        several = distributed.active()
        total, count = 0.0, 0
        started = time.perf_counter()
        self.progress("epoch_start", epoch=self.epoch, epochs=self.config.epochs,
                      batches=len(self.train_loader))
        batches = iter(self.train_loader)
        for index in range(len(self.train_loader)):
            # A rank failing to load its part, or in its forward pass or loss, must not leave the
            # others waiting in a collective: DDP's forward holds one (its buckets are rebuilt at
            # the second step) and backward holds the gradient all-reduce.  So every rank agrees
            # (ddp.agree_batch: one small all-reduce; alone it just raises) before each of them.
            failure: Exception | None = None
            try:
                batch = to_device(next(batches), self.device, non_blocking=True)
                images = self.input_spec.prepare(batch["image"], device=self.device)
                if self.device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = batch["targets"][self.task]
                mask = batch.get("target_masks", {}).get(self.task)
            except Exception as exc:  # noqa: BLE001 - raised again by agree_batch, on every rank
                failure = exc
            ddp.agree_batch(failure, (), self.device, "training data")
            try:
                with autocast(self.device):
                    logits = model(images)
                loss = self.loss_fn(logits.float(), targets, mask)
                if not torch.isfinite(loss):
                    raise self.diverged(f"loss became {loss.item()} at epoch {self.epoch}, "
                                        f"batch {index}")
                value, size = loss.item(), images.shape[0]
            except Exception as exc:  # noqa: BLE001 - raised again by agree_batch, on every rank
                failure = exc
            if several:  # the global batch's loss: sums over the ranks' images
                summed, size_all = ddp.agree_batch(
                    failure, [0.0, 0.0] if failure else [value * size, size], self.device,
                    "training")
                batch_loss = summed / max(size_all, 1.0)
                total += summed
                count += int(size_all)
            else:
                ddp.agree_batch(failure, (), self.device, "training")  # alone: raises failure
                batch_loss = value
                total += value * size
                count += size
            if self.initial_loss is None:
                self.initial_loss = batch_loss
            if self.tensorboard is not None:
                self.tensorboard.batch(self.step(self.epoch, index), batch_loss)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # DDP: the mean of the ranks' gradients
            self.scaler.step(self.optimizer)
            self.scaler.update()
            elapsed = time.perf_counter() - started
            self.progress("batch", epoch=self.epoch, batch=index, loss=batch_loss,
                          images_per_s=count / max(elapsed, 1e-9))
        ddp.broadcast_buffers(self.model)  # rank 0's running statistics, as its checkpoint holds
        return total / max(count, 1)

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        self.model.eval()
        logits, targets, masks = [], [], []
        loader = self.val_loader if self.val_loader is not None else []  # an empty shard
        with distributed.step("validation"):  # each rank its shard (all of it alone)
            for step in run_model(self.model, self.input_spec, loader, device=self.device,
                                  amp=True):
                batch = step.batch
                logits.append(step.outputs.float().cpu())
                targets.append(batch["targets"][self.task].cpu())
                if "target_masks" in batch and self.task in batch["target_masks"]:
                    masks.append(batch["target_masks"][self.task].cpu())
        if distributed.active():  # every rank: the whole set, in dataset order
            parts = distributed.all_gather((logits, targets, masks))
            logits, targets, masks = ([t for part in parts for t in part[i]] for i in range(3))
        with distributed.step("validation metrics"):
            return self.validation_metrics(logits, targets, masks)

    def validation_metrics(self, logits: list[torch.Tensor], targets: list[torch.Tensor],
                           masks: list[torch.Tensor]) -> dict[str, Any]:
        all_logits, all_targets = torch.cat(logits), torch.cat(targets)
        all_masks = torch.cat(masks) if masks else None
        if not bool(torch.isfinite(all_logits).all()):
            raise self.diverged(f"validation outputs became non-finite at epoch {self.epoch}")
        metrics = compute_metrics(self.task, all_logits, all_targets, self.output_names, all_masks)
        val_loss = self.loss_fn(all_logits, all_targets, all_masks).item()
        if not math.isfinite(val_loss):
            raise self.diverged(f"validation loss became {val_loss} at epoch {self.epoch}")
        metrics["val_loss"] = val_loss
        if self.task in ("global-score", "zones"):
            # The bar a regression model must clear: always predicting the training mean.
            metrics["mae_mean_predictor"] = float(
                (all_targets.float() - self.train_target_mean).abs().mean())
        return metrics

    def improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.metric_mode == "max" else value < self.best_value

    def run(self, resumed: bool) -> TrainResult:
        with distributed.step("opening TensorBoard"):
            if distributed.is_main():
                self.open_tensorboard(resumed)
        self.train_model = ddp.wrap(self.model, self.device)
        try:
            return self.loop(resumed)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def loop(self, resumed: bool) -> TrainResult:
        c = self.config
        if not resumed:
            self.history = []
            self.check_finite_weights()
            with distributed.step("writing checkpoints"):
                self.save_epoch({}, improved=False)  # epoch-000.pt: the initial model
            if self.dissection_due(final=False):
                self.quick_dissection()
        elif self.dissection_missing():
            self.quick_dissection()
        stopped_early = False
        while self.epoch < c.epochs:
            self.epoch += 1
            train_loss = self.train_epoch()
            if self.initial_loss is not None and \
                    train_loss > DIVERGENCE_FACTOR * max(1.0, abs(self.initial_loss)):
                raise self.diverged(
                    f"training diverged at epoch {self.epoch}: mean train loss {train_loss:.3g} is "
                    f"over {DIVERGENCE_FACTOR:.0e} x max(1, initial loss {self.initial_loss:.3g})")
            self.check_finite_weights()
            metrics = self.validate()
            value = metrics.get(self.metric_name)
            if value is None:
                # e.g. AUROC when no validation class has both labels: no ranking this epoch.
                self.note(f"validation {self.metric_name} is undefined at epoch {self.epoch} "
                          f"(too few positive and negative labels); not used for best/early stop")
                better = self.best_value is None and self.epoch == 1
                self.bad_epochs += 0 if better else 1
            else:
                better = self.improved(value)
                if better:
                    self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
                else:
                    self.bad_epochs += 1
                self.scheduler.step(value)
            if better and value is None:
                self.best_epoch = self.epoch
            record = {"epoch": self.epoch, "train_loss": train_loss,
                      "lr": self.optimizer.param_groups[0]["lr"], **metrics}
            self.history.append(_finite(record))
            stop = self.bad_epochs >= c.patience and self.epoch < c.epochs
            dissect = self.dissection_due(final=stop or self.epoch == c.epochs)
            with distributed.step("writing checkpoints"):  # rank 0 writes, the others wait
                if self.tensorboard is not None:  # before the checkpoint: a resume purges it if lost
                    self.tensorboard.epoch(self.step(self.epoch), self.history[-1])
                self.save_epoch(_finite(metrics), improved=better, keep=dissect)
            self.progress("epoch_end", epoch=self.epoch, metrics=record,
                          metric=(self.metric_name, float("nan") if value is None else value),
                          best=better)
            if dissect:
                self.quick_dissection()
            if stop:
                self.note(f"early stop after epoch {self.epoch}: no better {self.metric_name} "
                          f"for {c.patience} epochs")
                stopped_early = True
                break
        best = float("nan") if self.best_value is None else float(self.best_value)
        return TrainResult(self.out, self.epoch, self.best_epoch, (self.metric_name, best),
                           self.history, stopped_early, self.notes)


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: undefined metrics are stored as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _recorded_tensorboard(folder: Path) -> str | None:
    """The TensorBoard folder the run in ``folder`` recorded in its config.toml, if any."""
    try:
        value = tomllib.loads((folder / "config.toml").read_text()).get("train", {}).get("tensorboard")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _run_files(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(files and folders of a run, temporaries of its killed atomic writes, anything else) in
    ``folder``."""
    temporaries = stale_temporaries(folder, lambda target: bool(_RUN_FILE.match(target)))
    own_folders = {QUICK_DISSECT_DIR: "quick-dissect"}
    tensorboard = _recorded_tensorboard(folder)
    if tensorboard is not None:
        own_folders[tensorboard] = "tensorboard"
    own, foreign = [], []
    for path in sorted(folder.iterdir()):
        if path.name == RUN_LOCK or path in temporaries:  # the folder's owner; leftovers
            continue
        run_file = path.is_file() and not path.is_symlink() and _RUN_FILE.match(path.name)
        run_folder = path.name in own_folders and is_own_folder(path, own_folders[path.name])
        (own if run_file or run_folder else foreign).append(path)
    return own, temporaries, foreign


def _check_run_folder(out: Path, overwrite: bool) -> list[Path]:
    """Refuse an ``--out`` that would mix two runs or lose a user's files; the files to remove
    before this run writes (stale temporaries, and with ``overwrite`` the previous run)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {str(out)!r} exists and is a file")
    if not out.is_dir():
        return []
    own, temporaries, foreign = _run_files(out)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UsageError(
            f"--out {out} is not empty and not a cxrsem run folder (it holds {foreign[0].name!r}{more}); "
            f"choose a new or empty folder (--overwrite only replaces a previous run's files)")
    if own and not overwrite:
        raise UsageError(f"--out {out} already holds a training run; continue it with --resume {out} "
                         f"or replace it with --overwrite")
    return temporaries + own


def _run_lock(out: Path) -> FolderLock:
    return FolderLock(out, what=f"training run {out}", path=out / RUN_LOCK)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():  # the run's own folders (_run_files)
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _guarded(run: _Run, body: Callable[[], TrainResult]) -> TrainResult:
    """Ctrl-C and CUDA out-of-memory as errors that say where the run stands."""
    try:
        return body()
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted; {run.good_checkpoint()}") from None
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"out of memory on {run.device} with --batch-size {run.config.batch_size}; lower it; "
            f"{run.good_checkpoint()}") from None


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train one model as configured; see the module docstring for what is written where.

    ``config.out`` must be new, empty, or (with ``config.overwrite``) hold an earlier run, whose
    files are removed once the new run is ready to write; a folder this call created is removed
    again when the run fails before writing anything into it.
    """
    config.validate()
    if config.shuffle == "auto":
        config.shuffle = "seeded" if distributed.requested() else "generator"
    if distributed.requested():
        _check_torchrun(config)
        with distributed.process_group(resolve_device(distributed.rank_device(config.device))):
            return _train(config, progress)
    return _train(config, progress)


def _check_torchrun(config: TrainConfig) -> None:
    """What training under torchrun does not do; the same one line on every rank."""
    if config.dissect_every:
        raise UsageError("--dissect-every is not available under torchrun; dissect the run's "
                         "checkpoints afterwards (torchrun ... -m cxrsem dissect --model RUN/epoch-*.pt)")
    if config.shuffle != "seeded":
        raise UsageError(f"--shuffle {config.shuffle} draws the order of one process; under "
                         f"torchrun the order is --shuffle seeded (resume this run as one process)")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if config.batch_size % world:
        raise UsageError(f"--batch-size {config.batch_size} is the global batch and must divide "
                         f"evenly among the {world} processes; use a multiple of {world}")


def _train(config: TrainConfig, progress: Progress | None) -> TrainResult:
    out = Path(config.out)
    to_remove: list[Path] = []
    with distributed.step("checking the run folder"):  # rank 0 checks, the others wait
        if distributed.is_main():
            to_remove = _check_run_folder(out, config.overwrite)
    run = _Run(config, progress)

    def body() -> TrainResult:
        with distributed.step("building the run"):
            run.build()
        with ExitStack() as owned:
            with distributed.step("preparing the run folder"):
                if distributed.is_main():
                    owned.enter_context(output_dir(out, scaffolding=(RUN_LOCK,)))
                    owned.enter_context(_run_lock(out))
                    # Checked again as the folder's owner: another process may have trained into
                    # it since.
                    to_remove[:] = _check_run_folder(out, config.overwrite)
                    _remove(to_remove)  # only now: a run that fails to build leaves the old one whole
                    write_config(out, config.as_toml())
                    processes = distributed.describe(shards=None)
                    write_manifest(out, seed=config.seed, device=str(run.device),
                                   extra=None if processes is None else {"distributed": processes})
            return run.run(resumed=False)

    return _guarded(run, body)


def resume(run_dir: str | Path, epochs: int | None = None, device: str | None = None,
           progress: Progress | None = None) -> TrainResult:
    """Continue an interrupted run from ``RUN_DIR/last.pt`` with its saved config.

    ``epochs`` may extend the run (never below the epochs already run; the recorded config says
    the new total); ``device`` may move it; nothing else may change, so the result is the one an
    uninterrupted run would have given.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file() or not (run_dir / "last.pt").is_file():
        raise UsageError(f"--resume {run_dir}: no config.toml and last.pt there to resume from")
    try:
        config = TrainConfig.from_toml(tomllib.loads(config_path.read_text()))
    except (tomllib.TOMLDecodeError, TypeError) as exc:
        raise ConfigError(f"cannot resume from {config_path}: {exc}") from None
    last = load_checkpoint(run_dir / "last.pt")
    done = int(last.get("train", {}).get("epoch", 0))
    if epochs is not None and epochs < done:
        raise UsageError(f"--epochs {epochs}: {run_dir} has already run {done} epochs; "
                         f"--resume can only keep or extend a run (--epochs {done} or more)")
    config.out = str(run_dir)
    if epochs is not None:
        config.epochs = epochs
    if device is not None:
        config.device = device
    config.validate()
    if config.shuffle == "auto":  # recorded by a run from before --shuffle: one process's order
        config.shuffle = "generator"
    if distributed.requested():
        _check_torchrun(config)
        with distributed.process_group(resolve_device(distributed.rank_device(config.device))):
            return _resume(run_dir, config, progress)
    return _resume(run_dir, config, progress)


def _resume(run_dir: Path, config: TrainConfig, progress: Progress | None) -> TrainResult:
    with distributed.step("cleaning the run folder"):
        if distributed.is_main():
            _, temporaries, _ = _run_files(run_dir)
            _remove(temporaries)
            # of a killed dissection
            shutil.rmtree(run_dir / QUICK_DISSECT_DIR / ".cache", ignore_errors=True)
    run = _Run(config, progress)

    def body() -> TrainResult:
        with distributed.step("building the run"):
            run.build()
        with ExitStack() as owned:
            with distributed.step("resuming"):
                if distributed.is_main():
                    owned.enter_context(_run_lock(run_dir))
                # every rank reads last.pt (rank 0 as the folder's owner)
                run.restore(run_dir, load_checkpoint(run_dir / "last.pt"))
                if distributed.is_main():
                    write_config(run_dir, config.as_toml())
            return run.run(resumed=True)

    return _guarded(run, body)
