"""``cxrsem quickstart``: the whole pipeline on the built-in phantom, small enough for a laptop CPU.

Stages: write sample phantom images with their concept masks, then train a small severity model
(``densenet-mini``, ``mae-scce``) whose checkpoints later stages dissect and attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrsem.api import create_concept_set
from cxrsem.outputs import atomic_write, ensure_output_dir, write_manifest
from cxrsem.training import TrainConfig, TrainResult, train

Progress = Callable[..., None]


@dataclass
class QuickstartSettings:
    out: str = "runs/quickstart"
    seed: int = 0
    device: str = "auto"
    image_size: int = 96
    samples: int = 6
    n_train: int = 1200
    n_val: int = 200
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-3


@dataclass
class QuickstartResult:
    out: Path
    samples: list[Path] = field(default_factory=list)
    training: TrainResult | None = None


def _save_png(path: Path, array: np.ndarray) -> Path:
    image = Image.fromarray(array)
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def write_samples(out: Path, count: int, image_size: int, seed: int) -> list[Path]:
    """Write ``count`` phantom images and one PNG per concept present in each."""
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


def run_quickstart(settings: QuickstartSettings, progress: Progress | None = None) -> QuickstartResult:
    progress = progress or (lambda event, **info: None)
    out = ensure_output_dir(settings.out)
    write_manifest(out, seed=settings.seed, device=settings.device)
    result = QuickstartResult(out=out)

    progress("stage", name="samples", message=f"writing {settings.samples} phantom samples")
    result.samples = write_samples(out, settings.samples, settings.image_size, settings.seed)
    progress("note", message=f"wrote {len(result.samples)} PNGs to {out / 'samples'}")

    progress("stage", name="train", message="training densenet-mini on phantom severity (mae-scce)")
    config = TrainConfig(
        out=str(out / "severity"), dataset="phantom", loss="mae-scce", arch="densenet-mini",
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
        image_size=settings.image_size, patience=settings.epochs, seed=settings.seed,
        device=settings.device,
        dataset_options={"n_train": settings.n_train, "n_val": settings.n_val})
    result.training = train(config, progress=progress)
    return result
