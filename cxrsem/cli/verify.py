"""``cxrsem verify``: do the units an attribution method names matter?  Deletion/insertion curves,
AOPC per method and concept ablation against random units over a dataset split, and the top
labelled unit's localisation against concept annotations (pointing game, relevance mass)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrsem.attribution.ablation import parse_ks
from cxrsem.attribution.verify import VerifySettings, verify
from cxrsem.cli._options import (
    ChannelsOption,
    ConfigOption,
    DataRootOption,
    InputSizeOption,
    LayerOption,
    ModelOption,
    NormalizationOption,
    NumOutputsOption,
    OutputsOption,
    WeightsOption,
    component_options,
    concept_options,
    data_roots,
    device_option,
    file_config,
    library_option,
    model_source_options,
    out_option,
    require_model,
    seed_option,
)
from cxrsem.cli._progress import PhaseProgress
from cxrsem.defaults import default_out, model_run_name
from cxrsem.errors import UsageError

_V = VerifySettings  # option defaults come from the library, never re-declared here


def verify_command(
    ctx: typer.Context,
    model: str | None = ModelOption,
    weights: str | None = WeightsOption,
    num_outputs: int | None = NumOutputsOption,
    outputs: str | None = OutputsOption,
    input_size: int | None = InputSizeOption,
    channels: int | None = ChannelsOption,
    normalization: str | None = NormalizationOption,
    layer: str | None = LayerOption,
    dataset: str = typer.Option(..., "--dataset", help="Dataset whose split is ablated."),
    dataset_opt: list[str] | None = typer.Option(None, "--dataset-opt", metavar="NAME=VALUE"),
    data_root: list[str] | None = DataRootOption,
    split: str = library_option(_V, "split", "Dataset split."),
    dissection: Path | None = typer.Option(None, "--dissection", help="Dissection of this model "
                                           "and layer: concept ablation of its detectors."),
    concepts: list[str] | None = typer.Option(
        None, "--concepts", metavar="NAME",
        help="Concept set(s) whose annotations the top labelled unit's map is localised against "
             "(pointing game, relevance mass; repeatable; needs --dissection)."),
    concept_opt: list[str] | None = typer.Option(None, "--concept-opt", metavar="SET.OPTION=VALUE",
                                                 help="Option of one concept set (repeatable)."),
    methods: str = typer.Option(",".join(_V.methods), "--methods", metavar="NAME,...",
                                help="Attribution methods to compare."),
    ablate_k: str = typer.Option(",".join(map(str, _V.ks)), "--ablate-k", metavar="K,...",
                                 help="Unit counts to delete / insert."),
    ablate_random: int = typer.Option(_V.random_draws, "--ablate-random",
                                      help="Random unit sets per k and per concept (the reference)."),
    steps: int = library_option(_V, "steps", "Integration points of ig."),
    limit: int = library_option(_V, "limit", "Use only the first N images (0 = all)."),
    batch_size: int = library_option(_V, "batch_size", "Images per head pass."),
    resamples: int = library_option(_V, "resamples", "Bootstrap resamples of the images."),
    confidence: float = library_option(_V, "confidence", "Confidence of the intervals."),
    seed: int = seed_option(_V),
    device: str = device_option(verify),
    out: Path | None = out_option("verify", "model stem", "Folder for verify.json"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    config: Path | None = ConfigOption,
) -> None:
    """Ablate units at a layer: which method's top units matter, do concept detectors, and do
    the top labelled units' maps fall on their concepts' annotations (--concepts)?"""
    require_model("verify", model)
    from_file = file_config(ctx)
    if concept_opt and not concepts:
        raise UsageError("--concept-opt given without --concepts")
    sources = model_source_options(weights=weights, num_outputs=num_outputs, outputs=outputs,
                                   input_size=input_size, channels=channels,
                                   normalization=normalization)
    settings = VerifySettings(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()), ks=parse_ks(ablate_k),
        random_draws=ablate_random, steps=steps, split=split, limit=limit, batch_size=batch_size,
        resamples=resamples, confidence=confidence, seed=seed)
    out = out or default_out("verify", model_run_name(model))
    with PhaseProgress(quiet=quiet) as progress:
        result = verify(model, layer, dataset, dissection=dissection, concepts=concepts or (),
                        model_options=sources,
                        concept_options=(concept_options(from_file, concept_opt) if concepts
                                         else None),
                        dataset_options=component_options(from_file, "dataset", dataset_opt,
                                                          "--dataset-opt"),
                        data_roots=data_roots(from_file, data_root), settings=settings,
                        device=device, out=out, progress=progress)
    console = Console()
    print_verification(console, result, settings.confidence)
    if result.out is not None:
        console.print(f"results in {result.out}", highlight=False, markup=False)


def print_verification(console: Console, result, confidence: float) -> None:
    """The tables and sentences of a :class:`~cxrsem.attribution.verify.VerifyResult`."""
    table = Table(title=escape(f"{result.model} — {result.layer}: {result.images} images; mean "
                               f"change of the explained output ({100 * confidence:g}% bootstrap "
                               f"intervals)"))
    table.add_column("method")
    table.add_column("AOPC", justify="right")
    curves = result.curves + ([result.random] if result.random else [])
    for k in curves[0].ks if curves else []:
        table.add_column(f"deletion k={k}", justify="right")
    for c in curves:
        table.add_row(escape(c.method), str(c.aopc), *(str(e) for e in c.deletion))
    console.print(table)
    if result.concepts:
        ablation = Table(title=escape(f"concept ablation: change of {result.metric} "
                                      f"(all units: {result.metric_value:.4g})"))
        for column in ("concept", "detectors", "zeroing them", "as many random units",
                       "difference (paired)", "p"):
            ablation.add_column(column, justify="left" if column == "concept" else "right")
        for c in result.concepts:
            ablation.add_row(escape(c.concept), str(len(c.units)), str(c.change),
                             str(c.random_change), str(c.excess), f"{c.excess_p:.3g}")
        console.print(ablation)
    if result.localisation is not None:
        console.print(localisation_table(result.localisation, confidence))
    for sentence in result.sentences():
        console.print(sentence, highlight=False, markup=False)


def localisation_table(localisation, confidence: float) -> Table:
    table = Table(title=escape(
        f"localisation of the top labelled unit's map on its concept's annotation: "
        f"{localisation.images} images of {', '.join(localisation.concept_sets)} "
        f"(masks {localisation.mask_size} px; {100 * confidence:g}% bootstrap intervals)"))
    for column in ("method", "images counted", "pointing game", "relevance mass"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for m in localisation.methods:
        table.add_row(escape(m.method), str(m.images),
                      str(m.pointing_game) if m.pointing_game is not None else "—",
                      str(m.relevance_mass) if m.relevance_mass is not None else "—")
    return table


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
