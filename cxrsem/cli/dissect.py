"""``cxrsem dissect``: Network Dissection of one or more checkpoints at one or more layers."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrsem.cli._options import (
    ChannelsOption,
    ConfigOption,
    DataRootOption,
    ImageCacheOption,
    InputSizeOption,
    LayersOption,
    ModelsOption,
    NormalizationOption,
    NumOutputsOption,
    OutputsOption,
    WeightsOption,
    batch_size_option,
    concept_options,
    data_roots,
    device_option,
    file_config,
    library_default,
    library_option,
    model_source_options,
    out_option,
    precision_option,
    require_model,
    seed_option,
)
from cxrsem.cli._progress import PhaseProgress
from cxrsem.defaults import default_out, model_run_name
from cxrsem.dissection import DissectSettings, dissect, null_settings
from cxrsem.engine import distributed
from cxrsem.formats.dissection import is_detector
from cxrsem.options import parse_assignments

_D = DissectSettings  # option defaults come from the library, never re-declared here


def dissect_command(
    ctx: typer.Context,
    model: list[str] | None = ModelsOption,
    weights: str | None = WeightsOption,
    num_outputs: int | None = NumOutputsOption,
    outputs: str | None = OutputsOption,
    input_size: int | None = InputSizeOption,
    channels: int | None = ChannelsOption,
    normalization: str | None = NormalizationOption,
    layer: list[str] | None = LayersOption,
    concepts: list[str] = typer.Option(list(library_default(dissect, "concepts")), "--concepts",
                                       help="Concept set(s) to dissect against."),
    concept_opt: list[str] | None = typer.Option(None, "--concept-opt", metavar="SET.OPTION=VALUE",
                                                 help="Option of one concept set (repeatable)."),
    concept_map: list[str] | None = typer.Option(None, "--map-concept", metavar="SET/CONCEPT=NAME",
                                                 help="Merge a concept of one set into a shared name."),
    data_root: list[str] | None = DataRootOption,
    image_cache: str | None = ImageCacheOption,
    quantile: float = library_option(_D, "quantile", "Top fraction of activations: P(f_k > T_k)."),
    quantile_sample: int = library_option(_D, "quantile_sample", "First N images for T_k (0 = all)."),
    iou_threshold: float = library_option(_D, "iou_threshold", "A unit is a detector above this IoU."),
    seg_size: int = library_option(_D, "seg_size", "Annotation resolution the IoU is computed at."),
    limit: int = library_option(_D, "limit", "Use only the first N images (0 = all)."),
    device: str = device_option(dissect),
    batch_size: int = batch_size_option(_D),
    seed: int = seed_option(dissect),
    bootstrap: int = library_option(_D, "bootstrap", "Bootstrap resamples for intervals on every "
                                    "IoU and count (0 = none)."),
    group_by: str = library_option(_D, "group_by", "What a resample draws: patient (where the "
                                   "concept set knows them) or image."),
    confidence: float = library_option(_D, "confidence", "Confidence of the intervals."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Also count detectors over a "
                                     "grid of quantiles x IoU thresholds (one more cache read)."),
    null: list[str] | None = typer.Option(
        None, "--null", metavar="KIND[:N]",
        help="Chance baseline (repeatable): shuffle[:P] (annotations paired with other images'; "
             "p-values), random-init[:N] (untrained networks), rotation[:R] (rotated unit basis)."),
    null_permutations: int | None = typer.Option(
        None, "--null-permutations", help="Permutations of the shuffled null (implies --null "
                                          "shuffle; default 100)."),
    fdr: float = library_option(_D, "fdr", "False-discovery rate for significant detectors "
                                "(Benjamini-Hochberg over units)."),
    iou_over: str = library_option(_D, "iou_over", "IoU unions over the images that contain the "
                                   "concept (paper) or over all images (released code)."),
    merge_concepts: bool = typer.Option(False, "--merge-concepts", help="One max-merged label "
                                        "map per image, as the released code (exclusive masks)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute activations even if cached."),
    cache_dtype: str = library_option(_D, "cache_dtype", "float32 (exact) or float16."),
    precision: str = precision_option(_D),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the unit and summary PNGs."),
    out: Path | None = out_option("dissect", "model stem"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    config: Path | None = ConfigOption,
) -> None:
    """Find which units of a layer detect which concepts (Network Dissection, paper Sec. 2.2)."""
    require_model("dissect", model)
    sources = model_source_options(weights=weights, num_outputs=num_outputs, outputs=outputs,
                                   input_size=input_size, channels=channels,
                                   normalization=normalization)
    from_file = file_config(ctx)
    settings = DissectSettings(
        quantile=quantile, quantile_sample=quantile_sample, iou_threshold=iou_threshold,
        seg_size=seg_size, limit=limit, batch_size=batch_size, cache_dtype=cache_dtype,
        precision=precision,
        use_cache=not no_cache, bootstrap=bootstrap, group_by=group_by, confidence=confidence,
        sensitivity=sensitivity, fdr=fdr, iou_over=iou_over, merge_concepts=merge_concepts,
        **null_settings(null or [], null_permutations))
    out = out or default_out("dissect", model_run_name(model))
    # Under torchrun only rank 0 shows progress and the tables (the others run silently).
    main_rank = distributed.launched_rank() == 0
    with PhaseProgress(quiet=quiet) if main_rank else nullcontext() as progress:
        results = dissect(
            model, layer or None, out=out, concepts=concepts, model_options=sources,
            concept_options=concept_options(from_file, concept_opt),
            concept_map=parse_assignments(concept_map or [], "--map-concept"),
            data_roots=data_roots(from_file, data_root), settings=settings, device=device,
            seed=seed, figures=not no_figures, image_cache=image_cache, progress=progress)
    if not main_rank:
        return
    console = Console()
    for result in results:
        for result_layer in result.layers:
            console.print(detector_table(result, result_layer, settings.iou_threshold))
    console.print(f"results in {out}", highlight=False, markup=False)


def detector_table(result, layer, iou_threshold: float) -> Table:
    best_index, best_iou = layer.best
    detectors = is_detector(best_iou, iou_threshold)
    boot = getattr(layer, "bootstrap", None)
    total = f"{int(detectors.sum())}" + (_interval(boot["num_detectors"]) if boot else "")
    resampled = (f"; {100 * boot['confidence']:g}% intervals from {boot['resamples']} resamples of "
                 f"{boot['groups']} {boot['group_by']}s" if boot else "")
    # escape(): model paths, layer and concept names are the user's, not rich markup
    table = Table(title=escape(f"{result.model_path} — {layer.layer}: {total} detectors "
                               f"of {len(best_iou)} units (IoU > {iou_threshold}){resampled}"))
    table.add_column("concept")
    table.add_column("images", justify="right")
    table.add_column("detectors", justify="right")
    nulls = getattr(layer, "nulls", None) or {}
    shuffle, random_init = nulls.get("shuffle"), nulls.get("random_init")
    if shuffle:
        table.add_column("significant", justify="right")
        table.add_column("shuffled", justify="right")
    if random_init:
        table.add_column("random init", justify="right")
    table.add_column("best IoU", justify="right")
    for c, concept in enumerate(layer.concepts):
        of_concept = detectors & (best_index == c)
        top = layer.iou[:, c].max() if layer.iou.size else 0.0
        count = str(int(of_concept.sum())) + (_interval(boot["detectors"][concept]) if boot else "")
        row = [escape(concept), str(int(layer.images_with[c])), count]
        if shuffle:
            row += [str(shuffle["significant"][concept]), _mean(shuffle["detectors"][concept])]
        if random_init:
            row.append(_mean(random_init["detectors"][concept]))
        table.add_row(*row, f"{top:.3f}")
    if shuffle or random_init:
        table.caption = escape(null_caption(nulls))
    return table


def null_caption(nulls: dict) -> str:
    """One line per null: what chance alone gives for the whole layer."""
    parts = []
    if "shuffle" in nulls:
        s = nulls["shuffle"]
        parts.append(f"{s['num_significant']} significant (BH, FDR {nulls['fdr']:g}, "
                     f"{s['permutations']} shuffles); shuffled annotations give "
                     f"{_mean(s['num_detectors'])} detectors")
    if "random_init" in nulls:
        parts.append(f"random-init networks: {_mean(nulls['random_init']['num_detectors'])}")
    if "initial_checkpoint" in nulls:
        parts.append(f"epoch-000: {nulls['initial_checkpoint']['num_detectors']}")
    if "rotation" in nulls:
        parts.append(f"rotated basis: {_mean(nulls['rotation']['num_detectors'])}")
    return "; ".join(parts)


def _mean(estimate: dict) -> str:
    """A null's count: its mean and the range of its draws."""
    return f"{estimate['mean']:.3g} [{estimate['low']:g}, {estimate['high']:g}]"


def _interval(estimate: dict) -> str:
    return f" [{estimate['low']:g}, {estimate['high']:g}]"


def register(app: typer.Typer) -> None:
    app.command("dissect")(dissect_command)
