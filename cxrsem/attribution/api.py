"""``attribute``: semantic attribution of predictions to (named) units, paper Sec. 2.3 and 3.5.

For every image: the attribution method's per-unit maps ``s`` at layer ``L`` (the default, ``ig``:
Integrated Gradients with a zero-activation baseline, Eq. 6, :mod:`cxrsem.attribution.ig`), unit
scores ``sum_i |s_k^i|``, the top-k units named by a dissection, a concept-level summary, the
completeness check where the method defines one, and the Fig. 5 overlay.

Outputs in ``out`` (format :mod:`cxrsem.formats.attribution`, documented in ``docs/attribution.md``)::

    <image-stem>.json   <image-stem>.png   summary.csv + concepts.csv (several images / a folder)
    config.toml         manifest.json

:func:`attribute` is a pipeline of the steps below: check the settings and build the method, find
the inputs, load and split the model, write the run's config, then explain batch after batch.
Under ``torchrun`` the same steps run on every rank over its shard of the inputs
(:mod:`cxrsem.attribution.sharding`), each batch ending in an agreement of the ranks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrsem.api import resolve_component
from cxrsem.attribution.ablation import AblationSettings, ablate_image
from cxrsem.attribution.inputs import (
    Inputs,
    batch_ranges,
    collect_images,
    find_inputs,
    input_names,
    read_batch,
    stems_of,
)
from cxrsem.attribution.methods import (
    LayerAttribution,
    complete,
    deprecation_message,
    split_method_name,
    unit_scores,
)
from cxrsem.attribution.render import figure_panels, render_figure
from cxrsem.attribution.results import AttributionResult, AttributionRun
from cxrsem.attribution.sharding import (
    ShardedAttributionRun,
    ShardPart,
    gather_parts,
    light_record,
    rounds,
)
from cxrsem.attribution.targets import (
    Target,
    default_columns,
    parse_target,
    prediction_table,
    target_for_column,
    values_function,
)
from cxrsem.checkpoint import build_model, load_model, state_dict_sha256
from cxrsem.engine import distributed
from cxrsem.engine.device import resolve_device
from cxrsem.engine.layers import resolve_layers
from cxrsem.engine.preprocess import InputSpec, normalize
from cxrsem.engine.split import Split, split_at
from cxrsem.errors import DataError, UsageError
from cxrsem.formats.attribution import (
    CONCEPT_COLUMNS,
    SCHEMA,
    SUMMARY_COLUMNS,
    ablation_columns,
    attribution_record,
    concept_rows,
    csv_text,
    method_fields,
    skipped_row,
    summary_row,
)
from cxrsem.formats.dissection import Dissection, load_dissection
from cxrsem.modules import as_checkpoint
from cxrsem.outputs import (
    FolderLock,
    output_dir,
    stale_temporaries,
    write_config,
    write_json,
    write_manifest,
    write_text,
)

__all__ = ["SCHEMA", "AttributionResult", "AttributionRun", "ShardedAttributionRun", "attribute",
           "collect_images"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
Progress = Callable[..., None]
# The attribution folder's owner while a process writes into it (a second `attribute` into the same
# --out fails at once naming the first).
ATTRIBUTION_LOCK = ".cxrsem-attribute.lock"
_OWN_SUFFIXES = (".json", ".png", ".csv", ".toml")  # what attribute writes (stale temporaries of)


# --- the steps --------------------------------------------------------------------------------------


@dataclass
class _Method:
    """The attribution method of the run: its name, canonical options and the built callable."""

    name: str
    options: dict[str, Any]
    baseline: str | None
    run: Callable[..., LayerAttribution]


def _build_method(method: str, rule: str | None, steps: int | None,
                  method_options: Mapping[str, Any] | None) -> _Method:
    """The registered method ``method`` built with its options (the ``rule``/``steps`` shortcuts
    of ``ig`` included): unknown names and bad options fail here, before anything is read."""
    name, legacy_rule = split_method_name(method)
    if legacy_rule is not None:
        if rule is not None and rule != legacy_rule:
            raise UsageError(f"--method {method} (a quadrature rule, deprecated) contradicts "
                             f"--rule {rule}; use --method ig --rule RULE")
        warnings.warn(deprecation_message(method, legacy_rule), DeprecationWarning, stacklevel=3)
        rule = legacy_rule
    options = dict(method_options or {})
    options.update({k: v for k, v in (("rule", rule), ("steps", steps)) if v is not None})
    info, resolved = resolve_component("attribution_method", name, options)
    from cxrsem.engine.memory import check_quadrature  # before the nodes are computed

    check_quadrature(resolved.get("steps"), resolved.get("rule"))
    built = info.factory(**resolved)
    return _Method(name, dict(getattr(built, "options", resolved)), info.baseline, built)


@dataclass
class _Model:
    """The checkpoint's model, moved to the device and split at the explained layer."""

    checkpoint: dict[str, Any]
    path: str
    kind: str
    outputs: list[str]
    spec: InputSpec
    layer: str
    device: torch.device
    dtype: torch.dtype
    split: Split
    sha256: str
    source_options: dict[str, Any] = field(default_factory=dict)  # of a model source (--weights)

    @property
    def num_units(self) -> int:
        return int(self.split.activation_shape[0])


def _load(checkpoint: str | Path | Mapping[str, Any] | nn.Module,
          image_size: int | None = None,
          model_options: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    if isinstance(checkpoint, nn.Module):  # with the images' size (cxrsem.modules)
        checkpoint = as_checkpoint(checkpoint, image_size=image_size)
    if isinstance(checkpoint, Mapping):
        return dict(checkpoint), str(checkpoint.get("path", "<in memory>"))
    return load_model(str(checkpoint), model_options), str(checkpoint)


def _load_model(checkpoint: str | Path | Mapping[str, Any] | nn.Module, layer: str | None,
                target: str | int | None, device: str | torch.device, dtype: str, split: str,
                image_size: int | None = None, model_options: Mapping[str, Any] | None = None
                ) -> tuple[_Model, Target | None]:
    ckpt, model_path = _load(checkpoint, image_size, model_options)
    kind, outputs = ckpt["task"]["kind"], list(ckpt["task"]["outputs"])
    target_spec = parse_target(target, kind, outputs)
    spec = InputSpec.from_checkpoint(ckpt)
    if not layer:  # the model's own default, read from the checkpoint loaded once
        from cxrsem.defaults import default_layer

        layer = default_layer(ckpt)
    model = build_model(ckpt, source=model_path)
    full_layer = resolve_layers(model, [layer], spec.size, spec.channels)[0]
    dev, torch_dtype = resolve_device(device), DTYPES[dtype]
    model.to(device=dev, dtype=torch_dtype)
    # A random example of every channel (not a grey one repeated) checks the fx split.
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(1, spec.channels, spec.size, spec.size, generator=generator,
                         dtype=torch_dtype)
    split_model = split_at(model, full_layer, normalize(example.to(dev), spec.normalization),
                           mode=split)
    return _Model(ckpt, model_path, kind, outputs, spec, full_layer, dev, torch_dtype, split_model,
                  state_dict_sha256(ckpt["state_dict"]), dict(model_options or {})), target_spec


def _write_run_config(out_dir: Path, inputs: Inputs, model: _Model, method: _Method,
                      dissection: str | Path | None, target: str | int | None, top_k: int,
                      batch_size: int) -> None:
    options = dict(method.options)
    shortcuts = {k: options.pop(k) for k in ("rule", "steps") if k in options}
    write_config(out_dir, {"attribute": {
        "images": [str(p) for p in inputs.paths] or None, "model": model.path, "layer": model.layer,
        "dissection": str(dissection) if dissection is not None else None,
        "target": None if target is None else str(target), "top_k": top_k,
        "method": method.name, **shortcuts,
        "method_opt": [f"{k}={v}" for k, v in options.items()] or None,
        **model.source_options,  # --weights, --num-outputs, ...: the same keys as the options
        "device": str(model.device), "batch_size": batch_size, "out": str(out_dir)}})
    extra = {"split_path": model.split.path, "split_reason": model.split.reason}
    sharded = distributed.describe()  # under torchrun: {"world_size", "backend", "shards"}
    if sharded is not None:
        extra["distributed"] = sharded
    write_manifest(out_dir, device=str(model.device), extra=extra)


def _explain(model: _Model, method: _Method, batch: torch.Tensor, target: Target | None,
             batch_size: int) -> LayerAttribution:
    """The method's attribution of one batch, with logits and columns filled in."""
    images = model.spec.prepare(batch, device=model.device, dtype=model.dtype)
    columns = (default_columns(model.kind) if target is None
               else torch.full((batch.shape[0],), target.column, dtype=torch.long))
    values = values_function(model.kind, len(model.outputs))
    result = method.run(model.split, images, values=values, columns=columns, batch_size=batch_size)
    return complete(result, model.split, images, columns, batch_size)


def _ablate(model: _Model, batch: torch.Tensor, attribution: LayerAttribution,
            settings: AblationSettings, batch_size: int, positions: Sequence[int]
            ) -> list[dict[str, Any]]:
    """``attribute --ablate``: each image's deletion/insertion curves for the method's top units
    and for random units (:mod:`cxrsem.attribution.ablation`); one head pass for the batch, the
    ablations as rows of the tail.  The random draws are seeded by each image's position among
    the inputs (``positions``), so neither the batch size nor the sharding changes them."""
    images = model.spec.prepare(batch, device=model.device, dtype=model.dtype)
    with torch.no_grad():
        activations, extras = model.split.head(images)
    scores = unit_scores(attribution.attributions.detach())
    values = values_function(model.kind, len(model.outputs))
    return [ablate_image(model.split, activations, extras, j, len(images), scores[j], values,
                         int(attribution.columns[j]), settings, batch_size, positions[j]
                         ).to_json(settings.random_draws, settings.seed)
            for j in range(len(images))]


def _check_finite(model: _Model, attribution: LayerAttribution, names: list[str]) -> None:
    """Refuse non-finite activations (or attributions) of a batch, naming the layer and image."""
    for what, values in (("activations", attribution.activations),
                         ("attributions", attribution.attributions)):
        if values is None:
            continue
        bad = ~torch.isfinite(values.detach()).flatten(1).all(dim=1)
        if bool(bad.any()):
            image = names[int(bad.nonzero()[0, 0])]
            raise DataError(f"layer {model.layer!r} of {model.path} gives non-finite {what} (NaN "
                            f"or inf) for image {image}; check the checkpoint's weights and the "
                            f"image")


def _results(model: _Model, method: _Method, attribution: LayerAttribution, names: list[str],
             batch: torch.Tensor, target: Target | None, top_k: int,
             dissection: Dissection | None, stems: Sequence[str]) -> list[AttributionResult]:
    """One :class:`AttributionResult` (and JSON record) per image of the batch (``stems``: their
    output stems)."""
    s_all = attribution.attributions.detach().cpu().to(torch.float64)
    contributions = unit_scores(s_all).numpy()
    preds = prediction_table(model.kind, attribution.logits.detach().cpu().to(torch.float64))
    pred_names = model.outputs + (["score"] if model.kind == "zones" else [])
    header = {"model": {"path": model.path, "sha256": model.sha256,
                        "arch": model.checkpoint["arch"]["name"], "task": model.kind},
              "layer": model.layer, "path": model.split.path, "split_note": model.split.reason,
              **method_fields(method.name, method.options, method.baseline),
              "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
    f_a, f_0 = attribution.f_input, attribution.f_baseline
    results = []
    for j, name in enumerate(names):
        chosen = target or target_for_column(model.kind, model.outputs,
                                             int(attribution.columns[j]), default=True)
        s, contrib = s_all[j].numpy(), contributions[j]
        data = attribution_record(
            image=name, header=header, target=chosen.to_json(),
            predictions=dict(zip(pred_names, preds[j].tolist(), strict=True)), s=s,
            contrib=contrib, f_a=None if f_a is None else float(f_a[j]),
            f_0=None if f_0 is None else float(f_0[j]), top_k=top_k, dissection=dissection)
        results.append(AttributionResult(image=name, stem=stems[j], data=data,
                                         attributions=s.astype(np.float32), contributions=contrib,
                                         input_image=batch[j, 0].numpy()))
    return results


def _write(result: AttributionResult, out_dir: Path, render: bool) -> None:
    if render:
        target = result.data["target"]["name"]
        prediction = result.data["prediction"].get(target)
        shown = f"{prediction:.3f}" if prediction is not None else "n/a"
        maps, titles = figure_panels(result.data)
        result.png_path = render_figure(out_dir / f"{result.stem}.png", result.input_image, maps,
                                        titles, f"{Path(result.image).name}\n{target}: {shown}")
        result.data["figure"] = result.png_path.name
    result.json_path = write_json(out_dir / f"{result.stem}.json", result.data)


# --- the pipeline -----------------------------------------------------------------------------------


def attribute(images: str | Path | Sequence[str | Path] | torch.Tensor,
              checkpoint: str | Path | Mapping[str, Any], layer: str | None = None, *,
              dissection: str | Path | None = None, target: str | int | None = None,
              top_k: int = 3, method: str = "ig", rule: str | None = None,
              steps: int | None = None, method_options: Mapping[str, Any] | None = None,
              device: str | torch.device = "auto", batch_size: int = 32,
              out: str | Path | None = None, split: str = "auto", dtype: str = "float32",
              render: bool = True, ablate: bool | AblationSettings = False,
              model_options: Mapping[str, Any] | None = None,
              progress: Progress | None = None) -> AttributionRun:
    """Semantic attribution (paper Sec. 2.3) of each image's prediction at ``layer``.

    ``images``: image files (PNG/JPEG 8/16-bit, DICOM) and/or folders, or a tensor
    ``[N, 1, S, S]`` in ``[0, 1]``; ``checkpoint``: a cxrsem checkpoint (path or loaded dict),
    a ``SOURCE:SPEC`` model name, :func:`cxrsem.module_checkpoint` of your own module, or the
    ``nn.Module`` itself when ``images`` is a tensor (its size is the input size; default
    channels and normalisation: :mod:`cxrsem.modules`);
    ``layer``: a module path or unambiguous suffix (``denseblock4``; None: the layer the
    checkpoint records, else its architecture's ``default_layer``); ``dissection``: a
    ``dissection.json`` or a folder holding one for this model and layer; ``target``: an output
    name, an index or ``score`` (default: ``score`` for global-score and zones models, the most
    probable output for classification); ``method``: a registered attribution method (default
    ``ig``, Integrated Gradients with a zero-activation baseline, Eq. 6), with ``method_options``;
    ``rule``/``steps``: the quadrature of ``ig`` (default ``gausslegendre``, 32; shortcuts for its
    options).  ``method=<a rule name>`` is deprecated and means ``method="ig", rule=<it>``.
    ``batch_size``: images per head pass and (image, step) rows per tail pass; ``split``: ``auto``
    (torch.fx, hook fallback), ``fx`` or ``hook``; ``out``: where to write the JSON/PNG files
    (nothing is written when ``None``); ``model_options``: options of a model source
    (``weights``, ``num_outputs``, ... of ``torchvision:NAME``); ``ablate``: also zero each
    image's top-k units (and random ones) and record the change of the explained output
    (``True``: the default :class:`~.ablation.AblationSettings`, ks 1, 2, 5, 10, 20 and 10
    random draws).  Inputs are validated before anything is written: a bad method, option,
    target, dissection, layer or step count fails with a :class:`~cxrsem.errors.CxrsemError`;
    an ``out`` folder the call created is removed again when it fails before an image's result
    is written.  An image's files never take a run file's name
    (``manifest.png`` gives ``manifest-image.json``, see :data:`~.inputs.RESERVED_STEMS`).
    Non-finite activations at ``layer`` are refused (:class:`~cxrsem.errors.DataError`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the inputs are sharded over the processes in
    contiguous whole batches (docs/attribution.md, "Under torchrun"): each rank explains and writes
    its own images' files, rank 0 writes ``config.toml``, ``manifest.json``, ``summary.csv`` and
    ``concepts.csv`` (identical to one process's), and each rank returns a
    :class:`~.sharding.ShardedAttributionRun`: its own results, plus every rank's records and
    skipped images in input order.  A failure on any rank stops every rank with one line.
    """
    chosen_method = _build_method(method, rule, steps, method_options)
    ablation = AblationSettings() if ablate is True else (ablate or None)
    if ablation is not None:
        ablation.validate()
    top_k, batch_size = int(top_k), int(batch_size)
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use float32 or float64")
    emit = progress or (lambda *_a, **_k: None)

    def run(device: str | torch.device) -> AttributionRun:
        inputs = find_inputs(images)  # a typo in a path fails before the model is loaded
        model, target_spec = _load_model(
            checkpoint, layer, target, device, dtype, split,
            image_size=images.shape[-1] if isinstance(images, torch.Tensor) else None,
            model_options=model_options)
        dissect = None if dissection is None else load_dissection(
            dissection, layer=model.layer, sha256=model.sha256, num_units=model.num_units,
            model_name=Path(model.path).name)
        if out is None:
            return _attribute_into(None, inputs, model, chosen_method, target_spec, dissect,
                                   dissection, target, top_k, batch_size, render, emit, ablation)
        with _output_folder(out) as out_dir:
            return _attribute_into(out_dir, inputs, model, chosen_method, target_spec, dissect,
                                   dissection, target, top_k, batch_size, render, emit, ablation)

    if not distributed.requested():
        return run(device)
    # Under torchrun: one process group for the call, each rank on its own device (cuda:LOCAL_RANK
    # for auto/cuda).  The steps before the group are the same on every rank (they read the same
    # files), so they fail alike without a collective.
    device = distributed.rank_device(device)
    with distributed.process_group(resolve_device(device)):
        return run(device)


@contextmanager
def _output_folder(out: str | Path) -> Iterator[Path]:
    """The attribution folder, created, locked and cleaned of stale temporaries by rank 0 alone
    (one process: by it) while the other ranks wait; a failure there (a locked folder, a file in
    the way) stops every rank with its one line.  The folder a failed call created is removed again
    when nothing but the run's scaffolding was written (by rank 0, once every rank has stopped)."""
    with ExitStack() as stack:
        with distributed.step("output folder"):
            if distributed.is_main():
                out_dir = stack.enter_context(output_dir(
                    out, scaffolding=("config.toml", "manifest.json", ATTRIBUTION_LOCK)))
                stack.enter_context(FolderLock(out_dir, what=f"attribution folder {out_dir}",
                                               path=out_dir / ATTRIBUTION_LOCK))
                _remove_stale_temporaries(out_dir)
        yield Path(out)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporaries of atomic writes that a killed ``attribute`` left behind (``.NAME.XXXXXXXX.tmp``
    of a file it writes); anything else in the folder is left alone."""
    for path in stale_temporaries(out_dir, lambda target: target.endswith(_OWN_SUFFIXES)):
        path.unlink(missing_ok=True)


def _attribute_into(out_dir: Path | None, inputs: Inputs, model: _Model, chosen_method: _Method,
                    target_spec: Target | None, dissect: Dissection | None,
                    dissection: str | Path | None, target: str | int | None, top_k: int,
                    batch_size: int, render: bool, emit: Progress,
                    ablation: AblationSettings | None = None) -> AttributionRun:
    """Explain this rank's inputs batch after batch (one process: all of them), write their files,
    then (rank 0) the run's tables from every rank's rows, in input order."""
    main = distributed.is_main()
    with distributed.step("run config"):
        if out_dir is not None and main:
            _write_run_config(out_dir, inputs, model, chosen_method, dissection, target, top_k,
                              batch_size)
    emit("start", total=len(inputs), path=model.split.path, reason=model.split.reason,
         layer=model.layer, device=str(model.device))

    results: list[AttributionResult] = []
    skipped: list[tuple[str, str]] = []
    part = ShardPart()  # this rank's summary.csv rows and records, by input position

    def skip(position: int, image: str, reason: str) -> None:
        skipped.append((image, reason))
        part.rows.append((position, skipped_row(image, reason)))
        part.skipped.append((position, image, reason))
        emit("skipped", image=image, reason=reason)

    # Stems of all inputs, in input order, on every rank: unique across the ranks' files.
    stems = stems_of(input_names(inputs), inputs.tensor is not None)
    blocks = batch_ranges(distributed.batch_shard(len(inputs), batch_size), batch_size)
    for index in range(rounds(len(inputs), batch_size)):
        # One agreement per batch: a failure on any rank stops all of them after this batch.
        with distributed.step("attribution"):
            if index >= len(blocks):
                continue  # this rank's shard has one batch fewer
            positions, names, batch = read_batch(inputs, blocks[index], model.spec.size, skip)
            if batch is None:
                continue
            attribution = _explain(model, chosen_method, batch, target_spec, batch_size)
            _check_finite(model, attribution, names)
            batch_results = _results(model, chosen_method, attribution, names, batch,
                                     target_spec, top_k, dissect, [stems[i] for i in positions])
            if ablation is not None:
                curves = _ablate(model, batch, attribution, ablation, batch_size, positions)
                for result, curve in zip(batch_results, curves, strict=True):
                    result.data["ablation"] = curve
            for position, result in zip(positions, batch_results, strict=True):
                if out_dir is not None:
                    _write(result, out_dir, render)
                results.append(result)
                part.rows.append((position, summary_row(
                    result.image, result.data, result.json_path.name if result.json_path else "")))
                part.records.append((position, light_record(result)))
                emit("image", result=result)

    whole = gather_parts(part)  # every rank's rows and records, in input order
    fields = {"results": results, "skipped": skipped, "layer": model.layer,
              "path": model.split.path, "split_reason": model.split.reason,
              "model_sha256": model.sha256, "out": out_dir}
    run = AttributionRun(**fields) if not distributed.active() else ShardedAttributionRun(
        **fields, rank=distributed.rank(), world_size=distributed.world_size(),
        all_images=[record for _, record in whole.records],
        all_skipped=[(image, reason) for _, image, reason in whole.skipped])
    if out_dir is not None and inputs.batch_mode:
        columns = list(SUMMARY_COLUMNS) + (
            ablation_columns(ablation.ks_for(model.num_units)) if ablation is not None else [])
        with_concepts = dissect is not None and bool(whole.records)
        with distributed.step("writing summary.csv"):
            if main:
                write_text(out_dir / "summary.csv", csv_text([row for _, row in whole.rows],
                                                             columns))
                if with_concepts:
                    write_text(out_dir / "concepts.csv", csv_text(
                        concept_rows([r.data for _, r in whole.records]), CONCEPT_COLUMNS))
        run.summary_csv = out_dir / "summary.csv"
        run.concepts_csv = out_dir / "concepts.csv" if with_concepts else None
    if not whole.records:  # the same decision, and message, on every rank
        where = f"; see {run.summary_csv}" if run.summary_csv is not None else ""
        raise DataError(f"none of the {len(whole.skipped)} image(s) could be read{where}")
    emit("done", run=run)
    return run
