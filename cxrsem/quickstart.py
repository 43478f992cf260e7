"""``cxrsem quickstart``: the whole pipeline on the built-in phantom, small enough for a laptop CPU.

Stages: (1) write sample phantom images with their concept masks; (2) train a small severity model
(``densenet-mini``, ``mae-scce``, the paper's BrixIA 6-zone loss); (3) dissect its initial
(``epoch-000.pt``) and final checkpoints at ``denseblock4`` against the phantom's masks (the paper's
trained-vs-initial comparison); (4) attribute the sample images' severity to units and name them by
the dissection (semantic attribution); (5) write one HTML report of it all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrsem.api import create_concept_set
from cxrsem.errors import UsageError
from cxrsem.outputs import atomic_write, ensure_output_dir, write_manifest
from cxrsem.training import TrainConfig, TrainResult, train

Progress = Callable[..., None]
LAYER = "denseblock4"


@dataclass
class QuickstartSettings:
    out: str = "runs/quickstart"
    seed: int = 0
    device: str = "auto"
    image_size: int = 96
    samples: int = 6
    n_train: int = 1600
    n_val: int = 200
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    dissect_images: int = 300
    attribution_steps: int = 32
    # How sure, and against what chance: intervals and the cheap chance baselines (the initial
    # model epoch-000.pt is dissected anyway; more untrained networks: cxrsem dissect --null).
    bootstrap: int = 1000
    null_permutations: int = 1000
    # Do the named units matter?  cxrsem verify on the validation split (0: skip the stage).
    verify_images: int = 200
    overwrite: bool = False  # replace the results of an earlier quickstart in `out`


@dataclass
class QuickstartResult:
    out: Path
    samples: list[Path] = field(default_factory=list)
    training: TrainResult | None = None
    dissections: list[Any] = field(default_factory=list)
    attributions: Any = None
    verification: Any = None
    report: Path | None = None


def _save_png(path: Path, array: np.ndarray) -> Path:
    image = Image.fromarray(array)
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def write_samples(out: Path, count: int, image_size: int, seed: int) -> list[Path]:
    """Write ``count`` phantom images (``samples/<id>.png``) and one PNG per concept present."""
    concept_set = create_concept_set("phantom", image_size=image_size, mask_size=image_size,
                                     seed=seed, n_images=count)
    written = []
    for index in range(count):
        item = concept_set[index]
        stem = out / "samples" / f"{item['id']}"
        pixels = (item["image"][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        written.append(_save_png(stem.with_suffix(".png"), pixels))
        for concept, mask in zip(concept_set.concepts, item["masks"], strict=True):
            if mask.any():
                name = concept.lower().replace(" ", "-")
                written.append(_save_png(stem / f"{name}.png", mask.numpy().astype(np.uint8) * 255))
    return written


QUICKSTART_ENTRIES = {"manifest.json", "samples", "severity", "dissect", "attributions", "verify",
                      "report.html"}


def _check_out(out: Path, overwrite: bool) -> None:
    """A quickstart writes into a new or empty folder, or (with ``overwrite``) over an earlier
    quickstart's results; a folder holding anything else is never written into."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in QUICKSTART_ENTRIES)
    if foreign:
        raise UsageError(f"{out} holds files that are not a quickstart's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty --out")
    if not overwrite:
        raise UsageError(f"{out} already holds a quickstart; replace it with --overwrite or choose "
                         f"another --out")


def run_quickstart(settings: QuickstartSettings, progress: Progress | None = None) -> QuickstartResult:
    from cxrsem.attribution import attribute
    from cxrsem.attribution.verify import VerifySettings, verify
    from cxrsem.dissection import DissectSettings, dissect
    from cxrsem.reporting import build_report

    progress = progress or (lambda event, **info: None)
    _check_out(Path(settings.out), settings.overwrite)
    out = ensure_output_dir(settings.out)
    write_manifest(out, seed=settings.seed, device=settings.device)
    result = QuickstartResult(out=out)

    progress("stage", name="samples", message=f"1/6 writing {settings.samples} phantom samples")
    result.samples = write_samples(out, settings.samples, settings.image_size, settings.seed)
    progress("note", message=f"wrote {len(result.samples)} PNGs to {out / 'samples'}")

    progress("stage", name="train", message="2/6 training densenet-mini on phantom severity (mae-scce)")
    run_dir = out / "severity"
    config = TrainConfig(
        out=str(run_dir), dataset="phantom", loss="mae-scce", arch="densenet-mini",
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
        image_size=settings.image_size, patience=settings.epochs, seed=settings.seed,
        device=settings.device, overwrite=settings.overwrite,
        dataset_options={"n_train": settings.n_train, "n_val": settings.n_val})
    result.training = train(config, progress=progress)

    progress("stage", name="dissect", message="3/6 dissecting the initial and the trained model")
    final = run_dir / f"epoch-{result.training.epochs_run:03d}.pt"
    dissect_dir = out / "dissect"
    result.dissections = dissect(
        [run_dir / "epoch-000.pt", final], [LAYER], out=dissect_dir, concepts=["phantom"],
        concept_options={"phantom": {"n_images": settings.dissect_images}},
        settings=DissectSettings(seg_size=settings.image_size, bootstrap=settings.bootstrap,
                                 null_permutations=settings.null_permutations),
        device=settings.device,
        seed=settings.seed, progress=progress)

    progress("stage", name="attribute", message="4/6 semantic attribution of the sample images")
    sample_images = sorted((out / "samples").glob("*.png"))
    layer_dir = dissect_dir / final.stem
    result.attributions = attribute(
        sample_images, final, LAYER, dissection=layer_dir, steps=settings.attribution_steps,
        device=settings.device, out=out / "attributions", progress=progress)

    verified = []
    if settings.verify_images:
        progress("stage", name="verify", message="5/6 do the named units matter? (cxrsem verify)")
        result.verification = verify(
            final, LAYER, "phantom", dissection=layer_dir, concepts=["phantom"],
            concept_options={"phantom": {"n_images": settings.dissect_images}},
            dataset_options={"n_train": settings.n_train, "n_val": settings.n_val},
            settings=VerifySettings(limit=settings.verify_images, resamples=settings.bootstrap,
                                    seed=settings.seed),
            device=settings.device, out=out / "verify", progress=progress)
        verified = [out / "verify"]

    progress("stage", name="report", message="6/6 writing the report")
    report = build_report([dissect_dir], attributions=[out / "attributions"], verify=verified,
                          labels={str(dissect_dir / "epoch-000"): "initial (epoch 0)",
                                  str(dissect_dir / final.stem): f"trained (epoch {final.stem[6:]})"},
                          out=out / "report.html")
    result.report = Path(getattr(report, "path", out / "report.html"))
    return result
