"""Write a tiny ``csv-folder`` and ``mask-folder`` from cxrsem's phantom, to try the plugin out::

    python -m cxrsem_example.demo OUT [--images 48] [--size 64]

gives ``OUT/csv-folder/`` (``labels.csv`` + ``img/*.png``, three labels, every seventh label left
blank = unknown) and ``OUT/mask-folder/`` (``images/*.png`` + ``masks/<concept>/*.png`` for three
concepts).  The phantom's labels and masks are exact, so a model trained on the first folder has
something real to learn and dissect against the second.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cxrsem
import numpy as np
from PIL import Image

LABELS = ("Cardiomegaly", "Consolidation", "Pleural Effusion")
CONCEPTS = ("Cardiomediastinum", "Consolidation", "Pleural Effusion")


def _png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(array) * 255).round().astype(np.uint8)).save(path)


def write_demo(out: str | Path, *, images: int = 48, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Write both folders under ``out``; returns ``(csv_folder_root, mask_folder_root)``."""
    out = Path(out)
    csv_root, mask_root = out / "csv-folder", out / "mask-folder"
    train = cxrsem.create_dataset("phantom", split="train", image_size=size, seed=seed,
                                  n_train=images, n_val=0, n_test=0)
    columns = [train.outputs["multilabel"].index(name) for name in LABELS]
    rows = []
    for i in range(len(train)):
        item = train[i]
        path = f"img/{i:04d}.png"
        _png(item["image"][0], csv_root / path)
        labels = item["targets"]["multilabel"][columns].int().tolist()
        # Leave a few labels unknown, as real report-mined labels are.
        rows.append([path, *("" if (i + k) % 7 == 0 else v for k, v in enumerate(labels))])
    csv_root.mkdir(parents=True, exist_ok=True)
    with open(csv_root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", *LABELS], *rows])

    concepts = cxrsem.create_concept_set("phantom", image_size=size, mask_size=size, seed=seed,
                                         n_images=images)
    channels = [concepts.concepts.index(name) for name in CONCEPTS]
    for i in range(len(concepts)):
        item = concepts[i]
        _png(item["image"][0], mask_root / "images" / f"{item['id']}.png")
        for name, c in zip(CONCEPTS, channels, strict=True):
            if item["masks"][c].any():  # no file = concept absent, as the layout allows
                _png(item["masks"][c].float(), mask_root / "masks" / name / f"{item['id']}.png")
    return csv_root, mask_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrsem_example.demo", description=__doc__.split("::")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=48, help="images in each folder")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    csv_root, mask_root = write_demo(args.out, images=args.images, size=args.size, seed=args.seed)
    print(f"wrote {csv_root} and {mask_root}")


if __name__ == "__main__":
    main()
