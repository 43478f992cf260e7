"""Network Dissection of checkpoints (paper Sec. 2.2; Bau et al. 2017), streaming and exact.

Per model: (1) one forward pass per image captures every requested layer into the disk cache, with
the concept masks; (2) a read of the cache gives each unit's exact threshold T_k (quantile of all
its activation values over the dissection set); (3) a second read tallies Eq. 5's IoU sums with the
sparse matrix-product scheme of :mod:`cxrsem.dissection.tally`.  Results are written per model and
layer (see :mod:`cxrsem.dissection.results`).

While a model is dissected its result folders and its cache entry are locked (a second process
fails at once, naming the first); a cache entry that is truncated or holds NaN is recomputed with a
warning, and a model whose layer gives non-finite activations is refused.
"""

from __future__ import annotations

import copy
import glob
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.checkpoint import (
    build_model,
    create_model,
    load_model,
    source_prefix,
    state_dict_sha256,
)
from cxrsem.dissection import sensitivity, sharding
from cxrsem.dissection.cache import DamagedCache, DissectionCache, cache_key, sweep
from cxrsem.dissection.concepts import ConceptSource, build_concept_source
from cxrsem.dissection.nulls import (
    RotatedBases,
    ShuffledNull,
    count_block,
    counts_per_concept,
    definitions_summary,
    null_summary,
)
from cxrsem.dissection.quantile import StreamingTopQuantile
from cxrsem.dissection.results import (
    layer_folder,
    layer_lock,
    model_folder_names,
    write_layer_results,
)
from cxrsem.dissection.tally import IoUTally
from cxrsem.dissection.topimages import TOP_IMAGES, TopImages
from cxrsem.engine import distributed
from cxrsem.engine.device import resolve_device
from cxrsem.engine.layers import resolve_layers
from cxrsem.engine.precision import (
    DEFAULT_PRECISION,
    check_precision,
    reduced,
    supported_precision,
)
from cxrsem.engine.preprocess import InputSpec
from cxrsem.engine.runner import run_model
from cxrsem.errors import DataError, UsageError
from cxrsem.formats.dissection import DEFAULT_IOU_THRESHOLD, DEFAULT_QUANTILE, is_detector
from cxrsem.outputs import output_dir, recover_staged
from cxrsem.statistics.bootstrap import DEFAULT_CONFIDENCE, summarize
from cxrsem.statistics.boxes import box_fit
from cxrsem.statistics.imagestats import ImageStats
from cxrsem.statistics.nulls import parse_null, random_rotation, shuffled_partners

Progress = Callable[..., None]


@dataclass
class DissectSettings:
    quantile: float = DEFAULT_QUANTILE
    quantile_sample: int = 0
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    seg_size: int = 112
    limit: int = 0
    batch_size: int = 32
    cache_dtype: str = "float32"
    precision: str = DEFAULT_PRECISION  # forward pass: fp32 (exact), bf16 or fp16 (autocast)
    use_cache: bool = True
    bootstrap: int = 0              # resamples for intervals (0: none); see statistics.bootstrap
    group_by: str = "patient"       # what a resample draws: patients (where known) or images
    confidence: float = DEFAULT_CONFIDENCE  # of the bootstrap's percentile intervals
    sensitivity: bool = False       # also count detectors over a grid of quantiles x IoU thresholds
    # Chance baselines (docs/dissection.md, cxrsem.statistics.nulls): 0 = off.
    null_permutations: int = 0      # shuffled-annotation null: permutations
    null_random_init: int = 0       # random-network control: freshly initialised models
    null_rotations: int = 0         # rotated-basis control: random orthogonal rotations
    fdr: float = 0.05               # Benjamini-Hochberg level for "significant" detectors
    # The authors' released code's definitions (the paper's when left at the defaults).
    iou_over: str = "containing"    # "all": IoU unions over every image, not only those with c
    merge_concepts: bool = False    # one max-merged label map per image (exclusive concept masks)

    @property
    def paper_definition(self) -> bool:
        """Whether IoUs and thresholds follow the paper's text (Sec. 2.2), not a variant."""
        return (self.iou_over == "containing" and not self.merge_concepts
                and self.quantile == DEFAULT_QUANTILE and self.quantile_sample == 0)

    def validate(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise UsageError(f"--quantile must be in (0, 1), got {self.quantile}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise UsageError(f"--iou-threshold must be in [0, 1], got {self.iou_threshold}")
        if self.seg_size < 1 or self.batch_size < 1:
            raise UsageError("--seg-size and --batch-size must be positive")
        if self.limit < 0 or self.quantile_sample < 0:
            raise UsageError("--limit and --quantile-sample must be 0 (all) or positive")
        if self.cache_dtype not in ("float32", "float16"):
            raise UsageError(f"cache dtype must be float32 or float16, got {self.cache_dtype!r}")
        check_precision(self.precision)
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be 0 (none) or a number of resamples, got "
                             f"{self.bootstrap}")
        if self.group_by not in ("patient", "image"):
            raise UsageError(f"--group-by must be patient or image, got {self.group_by!r}")
        if not 0.0 < self.confidence < 1.0:
            raise UsageError(f"--confidence must be in (0, 1), got {self.confidence}")
        if min(self.null_permutations, self.null_random_init, self.null_rotations) < 0:
            raise UsageError("--null counts must be 0 (none) or positive")
        if not 0.0 < self.fdr < 1.0:
            raise UsageError(f"--fdr must be in (0, 1), got {self.fdr}")
        if self.iou_over not in ("containing", "all"):
            raise UsageError(f"--iou-over must be containing or all, got {self.iou_over!r}")
        from cxrsem.engine.memory import check_dissection  # refuse what cannot fit

        check_dissection(self.seg_size, self.batch_size)


_NULL_FIELDS = {"shuffle": "null_permutations", "random-init": "null_random_init",
                "rotation": "null_rotations"}


def null_settings(specs: Sequence[str], permutations: int | None = None) -> dict[str, int]:
    """``DissectSettings`` fields for ``--null`` specs (``shuffle[:P]``, ``random-init[:N]``,
    ``rotation[:R]``) and ``--null-permutations P`` (which implies the shuffled null)."""
    fields: dict[str, int] = {}
    for spec in specs:
        kind, count = parse_null(spec)
        name = _NULL_FIELDS[kind]
        if name in fields and fields[name] != count:
            raise UsageError(f"--null {kind} given twice with different counts")
        fields[name] = count
    if permutations is not None:
        if permutations < 1:
            raise UsageError(f"--null-permutations must be at least 1, got {permutations}")
        if fields.get("null_permutations", permutations) != permutations:
            raise UsageError("--null shuffle:P and --null-permutations disagree")
        fields["null_permutations"] = permutations
    return fields


@dataclass
class LayerDissection:
    """The result for one layer of one model (what ``dissection.json`` serialises)."""

    layer: str
    thresholds: np.ndarray          # [K] float64
    iou: np.ndarray                 # [K, C] float64
    concepts: list[str]
    images_with: np.ndarray         # [C] images containing each concept
    top_images: np.ndarray          # [K, TOP_IMAGES] dataset indices, by unit maximum
    top_values: np.ndarray          # [K, TOP_IMAGES]
    activation_min: float
    feature_shape: tuple[int, int, int]
    threshold_images: int
    upsampled_fraction: float
    threshold_error: dict[str, float] | None = None
    # Each image's own terms of the IoU sums (Eq. 5), written as imagestats.npz: summing them
    # reproduces ``iou`` exactly; reweighting them (bootstrap, patients) needs no model pass.
    image_stats: ImageStats | None = None
    # With --bootstrap: the record's "bootstrap" block and each unit's interval / P(detector).
    bootstrap: dict[str, Any] | None = None
    unit_bootstrap: list[dict[str, Any]] | None = None
    # With --sensitivity: detector counts over a grid of quantiles x IoU thresholds.
    sensitivity: dict[str, Any] | None = None
    # With --null: the record's "nulls" block and each unit's p-values (see dissection.nulls).
    nulls: dict[str, Any] | None = None
    unit_nulls: list[dict[str, Any]] | None = None
    # Units whose best concept is a box concept: inside fraction and max reachable IoU.
    unit_boxes: list[dict[str, Any]] | None = None
    # With a variant definition (--iou-over all, --merge-concepts, another quantile): the paper's
    # own result on the same model, and which units move between the two.
    definitions: dict[str, Any] | None = None

    @property
    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """Best concept index and its IoU per unit (ties: the first concept in channel order)."""
        index = self.iou.argmax(axis=1) if self.iou.size else np.zeros(len(self.thresholds), int)
        value = self.iou[np.arange(len(index)), index] if self.iou.size else np.zeros(len(index))
        return index, value

    def detectors(self, threshold: float = DEFAULT_IOU_THRESHOLD) -> dict[str, list[int]]:
        """Concept -> the units detecting it (best concept's IoU > ``threshold``, Eq. 5's rule),
        concepts in channel order, only those with a detector."""
        index, value = self.best
        found: dict[str, list[int]] = {}
        for unit, (c, v) in enumerate(zip(index.tolist(), value.tolist(), strict=True)):
            if is_detector(v, threshold):
                found.setdefault(self.concepts[c], []).append(unit)
        return {c: found[c] for c in self.concepts if c in found}


@dataclass
class ModelDissection:
    model_path: Path
    model_sha256: str
    checkpoint: dict[str, Any]
    source: ConceptSource            # the figures fetch the top images back from it
    cache: DissectionCache
    cache_dtype: str
    layers: list[LayerDissection] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cache_reused: bool = False
    # Under torchrun: {"world_size", "backend"} (written to the manifest); None on one process.
    distributed: dict[str, Any] | None = None
    top_maps: dict[str, dict[tuple[int, int], np.ndarray]] = field(default_factory=dict)


def expand_models(patterns: Sequence[str | Path]) -> list[Path]:
    """Model paths from paths or globs (``RUN/epoch-*.pt``), sorted, without duplicates.  An
    existing file wins over a glob (``run[1].pt`` is that file when it exists)."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        globbed = (any(ch in text for ch in "*?[") and source_prefix(text) is None
                   and not Path(text).exists())
        matches = sorted(glob.glob(text)) if globbed else [text]
        if not matches:
            raise UsageError(f"--model {text!r} matches no file")
        found.extend(Path(m) for m in matches if Path(m) not in found)
    return found


def _forward_into_cache(model: torch.nn.Module, layers: list[str], source: ConceptSource,
                        cache: DissectionCache, settings: DissectSettings, device: torch.device,
                        spec: InputSpec, progress: Progress, model_name: str = "the model",
                        shard: range | None = None) -> dict[str, Any]:
    """Pass 1: one forward pass per image, every layer captured into the cache with the masks;
    the entry replaces the old one only when complete.  ``shard``: only these images (this
    rank's under torchrun; default all), cached in their order."""
    with cache.writing() as folder:
        return _forward_into(folder, model, layers, source, cache, settings, device, spec,
                             progress, model_name, shard or range(len(source)))


def _forward_into(folder: Path, model: torch.nn.Module, layers: list[str], source: ConceptSource,
                  cache: DissectionCache, settings: DissectSettings, device: torch.device,
                  spec: InputSpec, progress: Progress, model_name: str, shard: range) -> dict[str, Any]:
    count = len(shard)
    stores: dict[str, Any] = {}
    masks_store = cache.mask_store((len(source.concepts), settings.seg_size, settings.seg_size),
                                   folder)
    done = 0
    activation_min = {layer: float("inf") for layer in layers}
    progress("phase", name="forward", total=count)
    batches = (source.batch(list(range(start, min(start + settings.batch_size, shard.stop))))
               for start in range(shard.start, shard.stop, settings.batch_size))
    try:
        with closing(run_model(model, spec, batches, device=device, layers=layers,
                               precision=settings.precision)) as passes:
            for step in passes:
                n = step.inputs.shape[0]
                for layer in layers:
                    output = step.activations[layer].float()
                    if not bool(torch.isfinite(output).all()):
                        raise DataError(
                            f"layer {layer!r} of {model_name} gives non-finite activations (NaN "
                            f"or inf) on images {shard.start + done}..{shard.start + done + n - 1}; "
                            f"check the checkpoint's weights and the images")
                    if layer not in stores:
                        stores[layer] = cache.layer_store(layer, tuple(output.shape[1:]),
                                                          settings.cache_dtype, folder)
                    stores[layer].append(output.cpu().numpy())
                    activation_min[layer] = min(activation_min[layer], float(output.min()))
                masks_store.append(step.batch["masks"].numpy())
                done += n
                progress("advance", amount=n)
    finally:
        for store in stores.values():
            store.close()
        masks_store.close()
    info = {"count": count, "shapes": {layer: list(stores[layer].record_shape) for layer in layers},
            "activation_min": activation_min, "dtype": settings.cache_dtype}
    cache.finish(info, folder)
    return info


def _thresholds(store, count: int, quantile: float, batch_size: int, device: torch.device,
                grid: Sequence[float] = (), rotated: RotatedBases | None = None,
                paper_count: int = 0, totals: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, dict[float, np.ndarray], np.ndarray | None]:
    """Pass 2: exact per-unit quantile over the first ``count`` images' activations, and the
    thresholds of every quantile of ``grid`` from the same stream (kept for the largest); the
    rotated bases' thresholds (over the same images); with ``paper_count``, also the paper's
    thresholds (``DEFAULT_QUANTILE`` over the first ``paper_count`` images), from the same read.

    ``totals`` (under torchrun): the whole dataset's ``(count, paper_count)``, of which this rank's
    store holds the given ones.  Every rank's streams are then made for the whole ``n`` (so they
    keep the whole's ``keep`` largest values) and merged over the ranks before any threshold is
    taken: the merge of the parts' kept values equals one pass's, bit for bit (quantile.py)."""
    units, h, w = store.record_shape
    whole, paper_whole = totals or (count, paper_count)
    stream = StreamingTopQuantile(units, whole * h * w, max((quantile, *grid)), device=device)
    paper = (StreamingTopQuantile(units, paper_whole * h * w, DEFAULT_QUANTILE, device=device)
             if paper_whole else None)
    with distributed.step("thresholds"):
        _stream_thresholds(store, count, batch_size, device, stream, rotated, paper, paper_count)
    if totals is not None:
        stream = sharding.merged_over_ranks(stream, device)
        paper = sharding.merged_over_ranks(paper, device) if paper is not None else None
    paper_thresholds = paper.thresholds() if paper is not None else None
    if not grid:
        return stream.thresholds(), {}, paper_thresholds
    return (stream.threshold_at(quantile), {q: stream.threshold_at(q) for q in grid},
            paper_thresholds)


def _stream_thresholds(store, count: int, batch_size: int, device: torch.device,
                       stream: StreamingTopQuantile, rotated: RotatedBases | None,
                       paper: StreamingTopQuantile | None, paper_count: int) -> None:
    units = store.record_shape[0]
    for start, records in store.batches(batch_size, max(count, paper_count)):
        values = torch.from_numpy(records.astype(np.float32)).to(device)
        sampled = values[:max(0, count - start)]
        if sampled.shape[0]:
            stream.update(sampled.permute(1, 0, 2, 3).reshape(units, -1))
            if rotated is not None:
                rotated.update_thresholds(sampled)
        if paper is not None:
            paper.update(values[:paper_count - start].permute(1, 0, 2, 3).reshape(units, -1))


@dataclass
class _TallyExtras:
    """What the tally pass fills besides the main tally (each optional)."""

    grid: dict[float, tuple[IoUTally, torch.Tensor]] = field(default_factory=dict)
    shuffled: ShuffledNull | None = None
    rotated: RotatedBases | None = None
    rotated_thresholds: list[torch.Tensor] = field(default_factory=list)
    paper: tuple[IoUTally, torch.Tensor] | None = None  # the paper's definition, raw labels


def _tally_parts(store, masks_store, thresholds: np.ndarray, concepts: int, count: int,
                 settings: DissectSettings, device: torch.device, progress: Progress,
                 extras: _TallyExtras, offset: int = 0) -> tuple[IoUTally, TopImages]:
    """Pass 3: IoU sums (Eq. 5) and the top-activating images of every unit, and every extra
    statistic of ``extras`` from the same read of the cache (the shuffled null reuses the main
    tally's upsampled masks).  ``offset``: the dataset index of the store's first image (its
    shard's start under torchrun), so that tallies and top images number images globally."""
    units = store.record_shape[0]
    tally = IoUTally.zeros(units, concepts, device=device)
    thresholds_t = torch.from_numpy(thresholds).to(device)
    all_images = settings.iou_over == "all"
    top = TopImages(units, TOP_IMAGES, device=device)
    mask_batches = masks_store.batches(settings.batch_size, count)
    for (start, records), (_, packed) in zip(store.batches(settings.batch_size, count),
                                             mask_batches, strict=True):
        start += offset
        activations = torch.from_numpy(records.astype(np.float32)).to(device)
        raw_labels = torch.from_numpy(masks_store.unpack(packed)).to(device)
        labels = merge_concepts(raw_labels) if settings.merge_concepts else raw_labels
        batch_masks = tally.update(activations, thresholds_t, labels, image_offset=start,
                                   all_images=all_images)
        if extras.shuffled is not None:
            extras.shuffled.update(batch_masks)
        for other, other_thresholds in extras.grid.values():
            other.update(activations, other_thresholds, labels, image_offset=start,
                         all_images=all_images)
        if extras.rotated is not None:
            extras.rotated.update_tallies(activations, extras.rotated_thresholds, labels, start,
                                          all_images)
        if extras.paper is not None:
            extras.paper[0].update(activations, extras.paper[1], raw_labels, image_offset=start)
        top.update(activations.amax(dim=(2, 3)),
                   torch.arange(start, start + activations.shape[0], device=device))
        progress("advance", amount=activations.shape[0])
    return tally, top


def merge_concepts(labels: torch.Tensor) -> torch.Tensor:
    """The released code's label maps: one label per pixel, the highest concept channel among
    those covering it (a max-merge of ``c + 1`` over the masks), as exclusive masks ``[B, C, M, M]``
    (a pixel in two concepts' masks counts only for the later one)."""
    channels = torch.arange(1, labels.shape[1] + 1, device=labels.device)[None, :, None, None]
    label_map = (labels * channels).amax(dim=1, keepdim=True)        # [B, 1, M, M], 0 = none
    return labels & (label_map == channels)


def _all_labels(masks_store, count: int, batch_size: int, device: torch.device,
                merged: bool) -> torch.Tensor:
    """Every image's concept masks ``[N, C, M, M]`` bool (the shuffled null pairs images across
    batches); one read of the annotation store, not of the activation cache."""
    parts = []
    for _, packed in masks_store.batches(batch_size, count):
        labels = torch.from_numpy(masks_store.unpack(packed)).to(device)
        parts.append(merge_concepts(labels) if merged else labels)
    return torch.cat(parts)


def dissect_model(model_path: Path, layer_names: Sequence[str] | None,
                  source_factory: Callable[[int], ConceptSource],
                  settings: DissectSettings, device: torch.device, cache_root: Path,
                  progress: Progress, locks: ExitStack | None = None,
                  lock_layers: Callable[[list[str]], None] | None = None,
                  checkpoint: dict[str, Any] | None = None) -> ModelDissection:
    """One model's dissection.  ``lock_layers(layers)`` is called with the resolved layer names
    before any expensive work (to lock their result folders); the cache entry's lock is entered
    on ``locks`` (held until the caller has written the figures, which read the cache).
    ``checkpoint``: the checkpoint itself (a random-init null), instead of reading ``model_path``.

    Under torchrun every rank calls this with the same arguments (``cache_root`` its own): each
    forwards and caches only its shard of the images (:func:`distributed.shard`), and the
    statistics are merged over the ranks, so every rank returns the whole dataset's result."""
    with distributed.step("loading the model and the concept sets"):
        prepared = _prepare_model(model_path, layer_names, source_factory, settings, device,
                                  cache_root, locks, lock_layers, checkpoint)
    checkpoint, model, spec, layers, source, sha, cache = prepared
    shard = distributed.batch_shard(len(source), settings.batch_size)
    mask_shape = (len(source.concepts), settings.seg_size, settings.seg_size)
    use_cache = settings.use_cache
    while True:
        started = time.perf_counter()
        with distributed.step("forward pass"):
            reused = use_cache and cache.is_complete()
            if reused:
                info = cache.meta()
                problem = cache.problem(info, mask_shape)
                if problem is not None:
                    _damaged(cache, problem)
                    reused = False
                else:
                    progress("note", message=f"reusing the activation cache {cache.dir}")
            if not reused:
                info = _forward_into_cache(model, layers, source, cache, settings, device, spec,
                                           progress, model_name=str(model_path), shard=shard)
        result = ModelDissection(model_path, sha, checkpoint, source, cache, info["dtype"],
                                 cache_reused=reused)
        result.distributed = distributed.describe()
        result.timings["forward_and_cache"] = time.perf_counter() - started
        try:
            _dissect_layers(result, layers, info, source, settings, device, mask_shape, progress)
        except DamagedCache as exc:
            # (Under torchrun a damaged entry surfaces as distributed.RankFailed on every rank.)
            if not reused:  # just written and checked: the disk lies
                raise DataError(f"the activation cache {cache.dir} was damaged while it was "
                                f"read ({exc})") from None
            _damaged(cache, str(exc))
            use_cache = False
            continue
        return result


def _prepare_model(model_path, layer_names, source_factory, settings, device, cache_root, locks,
                   lock_layers, checkpoint):
    """Load and build the model, resolve its layers, lock, build the concept source and find the
    cache entry (everything of :func:`dissect_model` before its forward pass)."""
    checkpoint = checkpoint if checkpoint is not None else load_model(str(model_path))
    model = build_model(checkpoint, source=model_path).to(device)
    spec = InputSpec.from_checkpoint(checkpoint)
    image_size = spec.size
    if layer_names is None:  # the model's own default, from the checkpoint loaded once
        from cxrsem.defaults import default_layer

        layer_names = [default_layer(checkpoint, None)]
    layers = resolve_layers(model, layer_names, image_size, spec.channels)
    if lock_layers is not None:
        lock_layers(layers)
    source = source_factory(image_size)
    sha = state_dict_sha256(checkpoint["state_dict"])

    description = {"model_sha256": sha, "layers": layers, "concepts": source.concepts,
                   "concept_sets": source.set_names(), "image_size": image_size,
                   "seg_size": settings.seg_size, "limit": settings.limit, "count": len(source),
                   "dtype": settings.cache_dtype, "source_options": source.options,
                   "seed": source.seed, "prepared_images": source.prepared_images(),
                   # The same weights fed another way give other activations.
                   "input": {"channels": spec.channels,
                             "normalization": {k: list(v) for k, v in spec.normalization.items()}}}
    if reduced(settings.precision):  # (an fp32 entry keeps the key it had before --precision)
        description["precision"] = supported_precision(settings.precision, device)
    if distributed.active():
        sharding.check_every_rank_has_images(len(source), settings.batch_size)
        # This rank's cache entry holds only its shard: another split must not reuse it.
        shard = distributed.batch_shard(len(source), settings.batch_size)
        description["shard"] = {"start": shard.start, "stop": shard.stop,
                                "world_size": distributed.world_size()}
    cache = DissectionCache(cache_root, cache_key(description), description)
    if locks is not None:
        locks.enter_context(cache.lock())
        cache.recover()
        sweep(cache_root)
    return checkpoint, model, spec, layers, source, sha, cache


def _damaged(cache: DissectionCache, problem: str) -> None:
    warnings.warn(f"the activation cache {cache.dir} is damaged ({problem}); recomputing it",
                  stacklevel=3)


def _dissect_layers(result: ModelDissection, layers: list[str], info: dict[str, Any],
                    source: ConceptSource, settings: DissectSettings, device: torch.device,
                    mask_shape: tuple[int, ...], progress: Progress) -> None:
    cache = result.cache
    count = info["count"]      # images in this cache entry: all, or this rank's shard
    whole = len(source)
    shard = distributed.batch_shard(whole, settings.batch_size) if distributed.active() \
        else range(count)
    if len(shard) != count:
        raise DataError(f"the activation cache {cache.dir} holds {count} images, this process's "
                        f"shard has {len(shard)}: rerun with --no-cache")
    sample = min(settings.quantile_sample or whole, whole)   # T_k over the first `sample` images
    local_sample = min(max(sample - shard.start, 0), count)  # ... of which this shard holds these
    totals = (sample, 0 if settings.paper_definition else whole) if distributed.active() else None
    masks_store = cache.mask_store(mask_shape)
    groups, group_names = source.groups()
    for layer in layers:
        store = cache.layer_store(layer, tuple(info["shapes"][layer]), info["dtype"])
        units = store.record_shape[0]
        concepts = len(source.concepts)
        started = time.perf_counter()
        progress("phase", name=f"thresholds {layer}", total=None)
        grid = sensitivity.QUANTILES if settings.sensitivity else ()
        extras = _TallyExtras()
        if settings.null_rotations:
            values = sample * store.record_shape[1] * store.record_shape[2]
            extras.rotated = RotatedBases.create(
                [random_rotation(units, seed=settings_seed(result, r)) for r in
                 range(settings.null_rotations)], values, settings.quantile, concepts, device)
        thresholds, grid_thresholds, paper_thresholds = _thresholds(
            store, local_sample, settings.quantile, settings.batch_size, device, grid,
            extras.rotated, paper_count=0 if settings.paper_definition else count, totals=totals)
        result.timings[f"quantile:{layer}"] = time.perf_counter() - started
        started = time.perf_counter()
        extras.grid = {q: (IoUTally.zeros(units, concepts, device=device, per_image=False),
                           torch.from_numpy(t).to(device)) for q, t in grid_thresholds.items()}
        if extras.rotated is not None:
            extras.rotated_thresholds = extras.rotated.thresholds()
        if paper_thresholds is not None:
            extras.paper = (IoUTally.zeros(units, concepts, device=device, per_image=False),
                            torch.from_numpy(paper_thresholds).to(device))
        if settings.null_permutations:
            labels = _all_labels(masks_store, count, settings.batch_size, device,
                                 settings.merge_concepts)
            present = labels.flatten(2).any(dim=2).cpu().numpy()
            extras.shuffled = ShuffledNull.create(
                units, labels, shuffled_partners(present, settings.null_permutations,
                                                 seed=settings_seed(result, 0)))
        progress("phase", name=f"tally {layer}", total=count)
        with distributed.step(f"tally {layer}"):
            tally, top = _tally_parts(store, masks_store, thresholds, concepts, count, settings,
                                      device, progress, extras, offset=shard.start)
        tally, top, activation_min = sharding.merge_tallies(tally, top, extras,
                                                            info["activation_min"][layer])
        top_images, top_values = top.images.cpu().numpy(), top.values.cpu().numpy()
        result.timings[f"tally:{layer}"] = time.perf_counter() - started
        image_stats = tally.image_stats(list(source.concepts), num_images=whole, groups=groups,
                                        group_names=group_names)
        iou = tally.iou(settings.iou_over)
        layer_result = LayerDissection(
            layer=layer, thresholds=thresholds, iou=iou, concepts=list(source.concepts),
            images_with=tally.images_with.cpu().numpy(), top_images=top_images,
            top_values=top_values, activation_min=activation_min,
            feature_shape=tuple(info["shapes"][layer]), threshold_images=sample,
            upsampled_fraction=tally.upsampled_pairs / max(tally.total_pairs, 1),
            image_stats=image_stats,
            sensitivity=sensitivity.grid({q: t.iou(settings.iou_over)
                                          for q, (t, _) in extras.grid.items()})
            if extras.grid else None)
        if extras.shuffled is not None or extras.rotated is not None:
            layer_result.nulls, layer_result.unit_nulls = null_summary(
                iou, tally, settings, extras.shuffled, extras.rotated, list(source.concepts),
                seed=settings_seed(result, 0))
        layer_result.unit_boxes = _box_fit_rows(layer_result, source.box_concepts()) or None
        if extras.paper is not None:
            layer_result.definitions = definitions_summary(
                iou, extras.paper[0].iou(), list(source.concepts), settings)
        if distributed.active():
            result.top_maps[layer] = sharding.gather_top_maps(store, layer_result, shard,
                                                              settings.iou_threshold)
        result.layers.append(layer_result)


def random_init_checkpoint(checkpoint: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The checkpoint with freshly initialised weights of its own architecture and input spec
    (seeded; the global RNG is left as it was)."""
    from cxrsem.modules import is_in_memory

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_in_memory(checkpoint):
            # No architecture to rebuild: a copy of the module, every submodule re-initialised
            # by its own reset_parameters (parameters held outside one, such as a ViT's class
            # token, keep their values).
            model = copy.deepcopy(checkpoint["module"])
            for module in model.modules():
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
        else:
            model = create_model(checkpoint, source=f"random-init of {checkpoint['arch']['name']}")
    train = dict(checkpoint.get("train") or {})
    train.update(init=f"random (seed {seed})", epoch=0)
    extra = {"module": model} if is_in_memory(checkpoint) else {}
    return {**checkpoint, "state_dict": model.state_dict(), "train": train, **extra}


def _random_init_nulls(result: ModelDissection, model_path: Path, source_for, settings: DissectSettings,
                       device: torch.device, cache_root: Path, progress: Progress,
                       run_files: bool = True) -> None:
    """The random-network control: ``settings.null_random_init`` freshly initialised models of
    the checkpoint's architecture (and ``epoch-000.pt`` of its run, when there is one), dissected
    with the same settings and images; their detector counts go into each layer's ``nulls``."""
    plain = replace(settings, bootstrap=0, sensitivity=False, null_permutations=0,
                    null_random_init=0, null_rotations=0)
    layers = [layer.layer for layer in result.layers]
    concepts = list(result.source.concepts)
    seeds = [settings_seed(result, 100 + i) for i in range(settings.null_random_init)]
    draws: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for i, seed in enumerate(seeds):
        progress("note", message=f"random-init null {i + 1}/{len(seeds)} of {model_path}")
        with ExitStack() as locks:
            control = dissect_model(model_path, layers, source_for, plain, device, cache_root,
                                    progress, locks=locks,
                                    checkpoint=random_init_checkpoint(result.checkpoint, seed))
        for layer in control.layers:
            draws[layer.layer].append(_detector_counts(layer, plain))
    initial = model_path.parent / "epoch-000.pt"
    initial_counts: dict[str, np.ndarray] = {}
    if run_files and initial.is_file() and initial.resolve() != Path(model_path).resolve():
        progress("note", message=f"random-init null: the run's {initial}")
        with ExitStack() as locks:
            control = dissect_model(initial, layers, source_for, plain, device, cache_root,
                                    progress, locks=locks)
        initial_counts = {layer.layer: _detector_counts(layer, plain) for layer in control.layers}
    for layer in result.layers:
        block = layer.nulls or {"fdr": settings.fdr, "iou_threshold": settings.iou_threshold}
        block["random_init"] = {
            "models": len(seeds), "seeds": seeds,
            "init": "the architecture's own initialisation (torch.manual_seed(seed) before it is "
                    "built), same input spec, settings and images",
            **count_block(np.stack(draws[layer.layer]), concepts)}
        if layer.layer in initial_counts:
            counts = initial_counts[layer.layer]
            block["initial_checkpoint"] = {
                "path": str(initial), "num_detectors": int(counts.sum()),
                "detectors": {c: int(counts[j]) for j, c in enumerate(concepts)}}
        layer.nulls = block


def _detector_counts(layer: LayerDissection, settings: DissectSettings) -> np.ndarray:
    """Detectors per concept ``[C]`` of a dissected layer (the paper's rule, Eq. 5)."""
    index, best = layer.best
    return counts_per_concept(index, is_detector(best, settings.iou_threshold), len(layer.concepts))


def _box_fit_rows(layer: LayerDissection, box_concepts: Sequence[bool]) -> list[dict[str, Any]]:
    """Per unit whose best concept is a box concept: the share of its mask inside the boxes and
    the IoU its mask sizes could reach (:mod:`cxrsem.statistics.boxes`); none without boxes."""
    if not any(box_concepts) or layer.image_stats is None:
        return []
    best_index, _ = layer.best
    inside, max_iou = box_fit(layer.image_stats, best_index)
    return [{"box_inside": round(float(inside[k]), 8), "box_max_iou": round(float(max_iou[k]), 8)}
            if box_concepts[best_index[k]] else {} for k in range(len(best_index))]


def settings_seed(result: ModelDissection, offset: int) -> int:
    """The seed of a null's draws: from the dissection's seed, so a rerun draws the same ones."""
    return int(result.source.seed) * 1_000 + offset


def dissect(models: Any, layers: str | Sequence[str] | None = None, concepts: Any = ("phantom",), *,
            out: str | Path | None = None, concept_names: Sequence[str] | None = None,
            image_size: int | None = None, channels: int | None = None,
            normalization: str | Mapping[str, Any] | None = None,
            outputs: Sequence[str] | None = None, task: str | None = None,
            model_options: Mapping[str, Any] | None = None,
            concept_options: Mapping[str, Mapping[str, Any]] | None = None,
            concept_map: Mapping[str, str] | None = None,
            data_roots: Mapping[str, str] | None = None, settings: DissectSettings | None = None,
            device: str = "auto", seed: int = 0, figures: bool = True,
            image_cache: str | None = None,
            progress: Progress | None = None) -> list[ModelDissection]:
    """Dissect each model in ``models`` at ``layers`` against ``concepts``; write results.

    ``models``: one model or a sequence of them -- checkpoint paths or globs, ``SOURCE:SPEC``
    names, checkpoint dicts, or ``nn.Module`` objects with their input spec (``image_size``
    required; ``channels``, ``normalization``, ``outputs``, ``task``:
    :func:`cxrsem.modules.module_checkpoint`).  ``layers``: a layer name or a sequence; None:
    each model's default layer (the one its checkpoint records, else its architecture's
    ``default_layer``: :func:`cxrsem.defaults.default_layer`).
    ``concepts``: registered concept-set names, concept-set objects, or datasets of ``(image,
    masks)`` with ``concept_names`` (:mod:`.custom_concepts`).  ``model_options``: options of the
    model sources named (``weights``, ``num_outputs``, ... of ``torchvision:NAME``).  One model gives one
    :class:`ModelDissection`, a sequence a list.  ``out=None`` writes nothing: the work happens in
    a temporary folder that is removed (no figures, no activation cache kept).
    ``image_cache``: where ``cxrsem prepare`` stored resized images (None = the default cache,
    ``"off"`` = decode every image).

    Writes ``out/<model-stem>/<layer>/`` per model and layer (see :mod:`.results`) and returns the
    in-memory results.  Each layer's folder is replaced as a whole, and only once it is complete;
    another process dissecting into the same folder (or filling the same activation cache) makes
    this call fail at once with a :class:`~cxrsem.outputs.LockedError` naming it.  When the call
    fails before anything was written, an ``out`` folder it created is removed again.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the images are sharded over the processes and the
    statistics merged exactly (docs/dissection.md, "Running on many processes"); only rank 0
    writes, and every rank returns the same results.
    Paper Sec. 2.2, Eq. 5.
    """

    settings = settings or DissectSettings()
    settings.validate()
    if distributed.requested():
        sharding.refuse_under_torchrun(settings)
        device = distributed.rank_device(device)
        with distributed.process_group(resolve_device(device)):
            return _dissect(models, layers, concepts, out, concept_names, image_size, channels,
                            normalization, outputs, task, model_options, concept_options,
                            concept_map, data_roots, settings, device, seed, figures,
                            image_cache, progress)
    return _dissect(models, layers, concepts, out, concept_names, image_size, channels,
                    normalization, outputs, task, model_options, concept_options, concept_map,
                    data_roots, settings, device, seed, figures, image_cache, progress)


def _dissect(models, layers, concepts, out, concept_names, image_size, channels, normalization,
             outputs, task, model_options, concept_options, concept_map, data_roots, settings,
             device, seed, figures, image_cache, progress):
    progress = progress or (lambda event, **info: None)
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
    if layers is not None and not layers:
        raise UsageError("give at least one --layer")
    single = isinstance(models, (str, Path, Mapping, torch.nn.Module))
    concepts = [concepts] if isinstance(concepts, str) or not isinstance(concepts, Sequence) \
        else list(concepts)
    spec = {"image_size": image_size, "channels": channels, "normalization": normalization,
            "outputs": outputs, "task": task}
    model_paths, loaded = model_entries([models] if single else list(models), spec, model_options)
    args = (layers, concepts, concept_options, concept_map, data_roots, settings, device, seed,
            image_cache, progress, loaded, concept_names)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="cxrsem-dissect-") as scratch:
            results = _dissect_all(model_paths, Path(scratch), *args, figures=False)
    else:
        with output_dir(out) as folder:
            results = _dissect_all(model_paths, folder, *args, figures=figures)
    return results[0] if single else results


def model_entries(models: Sequence[Any], spec: Mapping[str, Any],
                  model_options: Mapping[str, Any] | None = None
                  ) -> tuple[list[Path], dict[Path, dict[str, Any]]]:
    """The models to dissect: paths (globs expanded) and, for models given as objects (checkpoint
    dicts, ``nn.Module`` with ``spec``) or as model-source names with ``model_options``, a name
    each and their checkpoint dicts."""
    from cxrsem.modules import as_checkpoint

    paths: list[Path] = []
    loaded: dict[Path, dict[str, Any]] = {}
    if model_options and not any(isinstance(m, (str, Path)) and source_prefix(str(m)) for m in models):
        raise UsageError(f"{', '.join(sorted(model_options))}: model-source options need a "
                         f"model source (--model torchvision:NAME, timm:NAME, ...)")
    for item in models:
        if model_options and isinstance(item, (str, Path)) and source_prefix(str(item)):
            if Path(str(item)) not in loaded:
                loaded[Path(str(item))] = load_model(str(item), model_options)
                paths.append(Path(str(item)))
            continue
        if isinstance(item, (Mapping, torch.nn.Module)):
            checkpoint = dict(as_checkpoint(item, **spec))
            base = str(checkpoint.get("path") or "model")
            name, n = Path(base), 1
            while name in paths:
                n += 1
                name = Path(f"{base}-{n}")
            loaded[name] = checkpoint
            paths.append(name)
        else:
            paths.extend(p for p in expand_models([item]) if p not in paths)
    return paths, loaded


def _dissect_all(model_paths, out, layers, concepts, concept_options, concept_map, data_roots,
                 settings, device, seed, image_cache, progress, loaded, concept_names, *,
                 figures) -> list[ModelDissection]:
    resolved_device = resolve_device(device)
    sources: dict[int, ConceptSource] = {}

    def source_for(image_size: int) -> ConceptSource:
        if image_size not in sources:
            sources[image_size] = build_concept_source(
                concepts, image_size=image_size, mask_size=settings.seg_size, seed=seed,
                options=concept_options, data_roots=data_roots, concept_map=concept_map,
                limit=settings.limit, cache_dir=image_cache, concept_names=concept_names)
        return sources[image_size]

    results = []
    folders = model_folder_names(model_paths)
    # Under torchrun each rank caches its own shard, in a folder of its own; rank 0 alone writes
    # (and locks) the result folders.
    cache_root = out / ".cache" / f"rank-{distributed.rank()}" if distributed.active() \
        else out / ".cache"
    for model_path in model_paths:
        progress("model", path=str(model_path))
        model_dir = out / folders[model_path]
        with ExitStack() as locks:
            def lock_layers(names: list[str], model_dir: Path = model_dir,
                            locks: ExitStack = locks) -> None:
                if not distributed.is_main():
                    return
                for name in names:
                    locks.enter_context(layer_lock(model_dir, name))
                    recover_staged(layer_folder(model_dir, name))

            result = dissect_model(model_path, layers, source_for, settings, resolved_device,
                                   cache_root, progress, locks=locks, lock_layers=lock_layers,
                                   checkpoint=loaded.get(model_path))
            if settings.null_random_init:
                _random_init_nulls(result, model_path, source_for, settings, resolved_device,
                                   cache_root, progress, run_files=model_path not in loaded)
            with distributed.step("writing the results"):
                if distributed.is_main():
                    _write_model(result, model_dir, settings, seed, resolved_device, figures,
                                 progress)
        results.append(result)
    return results


def _write_model(result: ModelDissection, model_dir: Path, settings: DissectSettings, seed: int,
                 device: torch.device, figures: bool, progress: Progress) -> None:
    if result.top_maps:  # torchrun: the figures read the top images' maps gathered from all ranks
        result = replace(result, cache=sharding.GatheredMaps(result.cache, result.top_maps))
    for layer_result in result.layers:
        if settings.bootstrap and layer_result.image_stats is not None:
            progress("phase", name=f"bootstrap {layer_result.layer}", total=None)
            layer_result.bootstrap, layer_result.unit_bootstrap = summarize(
                layer_result.image_stats, resamples=settings.bootstrap, seed=seed,
                group_by=settings.group_by, confidence=settings.confidence,
                threshold=settings.iou_threshold)
        write_layer_results(model_dir, result, layer_result, settings,
                            concepts=result.source.set_names(), seed=seed,
                            device=str(device), figures=figures)
