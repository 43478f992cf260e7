"""COVID-19 Chest X-ray Segmentations (GeneralBlockchain, 2020): the ``covid-seg`` concept set.

The paper's "Covid-CXR" annotation set: 100 of Cohen's COVID-19 chest X-rays with 588 masks of 13
concepts -- anatomy (Left Lung, Right Lung, Cardiomediastinum, Airways), pathology (Ground Glass
Opacities, Consolidation, Pleural Effusion, Pneumothorax) and devices (Endotracheal Tube, Central
Venous Line, Monitoring Probes, Nosogastric Tube, Tubings).  The authors also list "Chest Tube",
which has no mask: ``include_chest_tube=true`` lists it anyway, with count 0 (the paper counts 14
concepts).

Layout on disk, as in the repository (``ROOT`` = ``--data-root covid-seg=ROOT``)::

    ROOT/structure.csv      one row per mask
    ROOT/images/<Filename>  JPEG or PNG; RGB, L or RGBA; various sizes
    ROOT/masks/<id>.png     RGBA mask cropped to its box, background black, one colour per concept

What is read from ``structure.csv`` (by column name): ``Template Name`` (the concept, e.g. "Left
Lung"), ``Filename`` (the file in ``images/``; the ``Image`` and ``Tag`` columns point to files that
are not shipped), ``Mask`` (path relative to ROOT), and ``Left``, ``Top``, ``Width``, ``Height``:
the mask is pasted with its top-left corner at (Left, Top) of the full image.  A mask pixel is
foreground when it is not black and not transparent.  Rows with an empty ``Mask`` (14 Monitoring
Probes rows) are skipped; two masks of one concept on one image are merged (union); concepts stay
separate channels, so a lesion pixel is also a lung pixel.  Masks are sampled at the requested mask
size with the same stretch as the image (see :mod:`cxrsem.default_plugins._io`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrsem.components import ConceptSetInfo, Option
from cxrsem.errors import DataError
from cxrsem.hookspecs import hookimpl

from ._io import (
    ConceptSet,
    fmt,
    inside,
    paste_mask,
    read_table,
    readable_sizes,
    require_file,
    subset,
    warn_listed,
)

COVID_CONCEPTS = [
    "Left Lung", "Right Lung", "Cardiomediastinum", "Airways", "Ground Glass Opacities",
    "Consolidation", "Pleural Effusion", "Pneumothorax", "Endotracheal Tube", "Central Venous Line",
    "Monitoring Probes", "Nosogastric Tube", "Tubings",
]
CHEST_TUBE = "Chest Tube"
LAYOUT = ("ROOT/structure.csv, ROOT/images/<Filename> and ROOT/masks/*.png (the "
          "covid-19-chest-xray-segmentations-dataset repository)")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def mask_foreground(path: Path) -> np.ndarray:
    """Bool ``[h, w]``: the pixels of a mask file that are neither black nor transparent."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
            return np.asarray(im) > 0
        rgba = np.ascontiguousarray(np.asarray(im if im.mode == "RGBA" else im.convert("RGBA")))
    # one 32-bit word per pixel, bytes R, G, B, A: colour in the low 24 bits, alpha in the top 8
    words = rgba.view("<u4")[..., 0]
    return ((words & 0x00FFFFFF) != 0) & ((words >> 24) != 0)


class CovidSegmentations(ConceptSet):
    """Concept masks of the COVID-19 Chest X-ray Segmentations dataset (see the module doc)."""

    def __init__(self, *, annotations: list[list[tuple[int, Path, int, int]]],
                 sizes: list[tuple[int, int]], **kwargs) -> None:
        super().__init__(**kwargs)
        self._annotations = annotations
        self._sizes = sizes

    def _masks(self, index: int) -> np.ndarray:
        import warnings

        from ._io import DataWarning

        masks = np.zeros((len(self.concepts), self.mask_size, self.mask_size), dtype=bool)
        for concept, path, left, top in self._annotations[index]:
            try:
                crop = mask_foreground(path)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                warnings.warn(f"{self.name}: unreadable mask {path} ignored: {exc}", DataWarning,
                              stacklevel=2)
                continue
            paste_mask(masks[concept], crop, left, top, self._sizes[index])
        return masks

    def concept_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.concepts, 0)
        for per_image in self._annotations:
            for c in {a[0] for a in per_image}:
                counts[self.concepts[c]] += 1
        return counts


def make_covid_seg(*, image_size: int, mask_size: int, root: Path, seed: int, limit: int = 0,
                   include_chest_tube: bool = False, exclude: str = "") -> CovidSegmentations:
    name = "covid-seg"
    if root is None or not Path(root).is_dir():
        raise DataError(f"{name}: data root {root} is not a folder; expected layout: {LAYOUT}")
    root = Path(root)
    structure = require_file(root, ("structure.csv",), dataset=name, layout=LAYOUT)
    if not (root / "images").is_dir():
        raise DataError(f"{name}: {root / 'images'}/ not found; expected layout: {LAYOUT}")
    table = read_table(structure, dataset=name, delimiter=",")
    c_concept = table.column("Template Name")
    c_file = table.column("Filename")
    c_mask = table.column("Mask")
    c_left, c_top = table.column("Left"), table.column("Top")
    c_width, c_height = table.column("Width"), table.column("Height")

    concepts = list(COVID_CONCEPTS)
    if include_chest_tube:
        concepts.insert(concepts.index("Tubings"), CHEST_TUBE)
    position = {_key(c): i for i, c in enumerate(concepts)}
    unknown: Counter[str] = Counter()
    no_mask: Counter[str] = Counter()
    bad_rows: list[str] = []
    missing_masks: list[str] = []
    size_mismatch: list[str] = []
    per_image: dict[str, list[tuple[int, Path, int, int]]] = defaultdict(list)
    n_masks = 0
    for row in table.rows:
        concept = row[c_concept].strip()
        filename = row[c_file].strip()
        if not concept or not filename:
            bad_rows.append(f"row {row[0].strip() or '?'}")
            continue
        if _key(concept) not in position:
            unknown[concept] += 1
            position[_key(concept)] = len(concepts)  # kept as an extra concept
            concepts.append(concept)
        if not row[c_mask].strip():
            no_mask[concept] += 1
            continue
        try:
            left, top = int(float(row[c_left])), int(float(row[c_top]))
            width, height = int(float(row[c_width])), int(float(row[c_height]))
        except ValueError:
            bad_rows.append(f"row {row[0].strip() or '?'} ({filename}, {concept})")
            continue
        mask_path = Path(inside(root, root / row[c_mask].strip(), dataset=name, source=structure,
                                row=f"row {row[0].strip() or '?'}"))
        try:
            with Image.open(mask_path) as im:
                if im.size != (width, height):
                    size_mismatch.append(f"{mask_path.name} ({im.size[0]}x{im.size[1]} vs "
                                         f"{width}x{height})")
        except (FileNotFoundError, UnidentifiedImageError, OSError):
            missing_masks.append(f"{row[c_mask].strip()} ({filename}, {concept})")
            continue
        per_image[filename].append((position[_key(concept)], mask_path, left, top))
        n_masks += 1
    problems = [
        warn_listed(name, f"unknown concept names in {structure.name} kept as extra concepts",
                    [f"{k!r} ({v} rows)" for k, v in unknown.most_common()]),
        warn_listed(name, f"malformed rows of {structure.name} skipped", bad_rows),
        warn_listed(name, "mask files missing or unreadable, skipped", missing_masks),
        warn_listed(name, "masks whose size differs from Width x Height (pasted at their own size)",
                    size_mismatch),
    ]
    names = sorted(per_image)
    image_paths = [Path(inside(root / "images", root / "images" / n, dataset=name, source=structure,
                               row=f"Filename {n!r}")) for n in names]
    missing = [n for n, p in zip(names, image_paths, strict=True) if not p.is_file()]
    problems.append(warn_listed(name, "annotated images not found in images/, skipped", missing))
    keep = [i for i, p in enumerate(image_paths) if p.is_file()]
    names, image_paths = [names[i] for i in keep], [image_paths[i] for i in keep]
    ok, sizes, unreadable = readable_sizes(name, image_paths)
    problems.append(warn_listed(name, "annotated images that cannot be opened, skipped",
                                unreadable))
    names, image_paths = [names[i] for i in ok], [image_paths[i] for i in ok]
    if not names:
        raise DataError(f"{name}: no annotated image of {structure} was found in {root}/images/; "
                        f"expected layout: {LAYOUT}")
    # Images left out on request (e.g. those a severity model was trained on): by Filename.
    left_out = {n.strip() for n in exclude.split(",") if n.strip()}
    problems.append(warn_listed(name, "images to exclude that the set does not hold",
                                sorted(left_out - set(names))))
    kept = [i for i, n in enumerate(names) if n not in left_out]
    excluded = len(names) - len(kept)
    names, image_paths, sizes = ([names[i] for i in kept], [image_paths[i] for i in kept],
                                 [sizes[i] for i in kept])
    if not names:
        raise DataError(f"{name}: exclude leaves no image")
    chosen = subset(len(names), limit, seed)
    ds = CovidSegmentations(
        name=name, image_size=image_size, mask_size=mask_size,
        paths=[image_paths[i] for i in chosen], ids=[names[i] for i in chosen], concepts=concepts,
        annotations=[per_image[names[i]] for i in chosen], sizes=[sizes[i] for i in chosen],
    )
    ds.problems = [p for p in problems if p]
    skipped = sum(no_mask.values())
    ds.summary = [
        f"Covid-CXR segmentations: {fmt(len(names))} images, {fmt(n_masks)} masks, "
        f"{len(concepts)} concepts"
        + (f" ({skipped} rows without a mask skipped: "
           + ", ".join(f"{k} {v}" for k, v in no_mask.most_common()) + ")" if skipped else ""),
        f"  concept set: {fmt(len(chosen))} images"
        + (f" (a seeded sample of {limit})" if 0 < limit < len(names) else "")
        + (f", {excluded} excluded" if excluded else "")
        + f", masks at {mask_size} x {mask_size}",
    ]
    return ds


@hookimpl
def register_concept_sets(register) -> None:
    register(ConceptSetInfo(
        name="covid-seg",
        factory=make_covid_seg,
        needs_root=True,
        description="COVID-19 chest X-ray segmentations (the paper's Covid-CXR): 100 images, "
                    "13 concepts",
        options=(
            Option("limit", int, 0, "use a seeded sample of this many images (0 = all)"),
            Option("include_chest_tube", bool, False,
                   "also list the authors' 14th concept, Chest Tube (no masks: count 0)"),
            Option("exclude", str, "", "comma-separated image file names (structure.csv's "
                   "Filename) to leave out, e.g. the images a model was trained on"),
        ),
    ))
