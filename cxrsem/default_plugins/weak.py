"""The paper's weakly labelled pool (section 3.3): the ``weak`` dataset, task ``binary``.

NIH ChestX-ray14, CheXpert and BrixIA pooled into one healthy (0) / unhealthy (1) dataset:

- NIH: healthy when ``Finding Labels`` is ``No Finding``;
- CheXpert: healthy when no pathology is positive (all labels except No Finding and Support Devices;
  uncertain labels follow ``chexpert_uncertainty``: ``zeros`` (default) counts them negative,
  ``ones`` positive, ``ignore`` drops images whose health is then unknown);
- BrixIA and its Cohen subset: healthy when all six zones are 0.

Each source is loaded by its own dataset (same layouts, same train/val/test split rules and seed),
so an image never changes split by being pooled.  Sources come from this dataset's options
``nih_root``, ``chexpert_root``, ``brixia_root``, ``brixia_cohen_root`` or, when an option is empty,
from the environment variables ``CXRSEM_DATA_NIH``, ``CXRSEM_DATA_CHEXPERT``,
``CXRSEM_DATA_BRIXIA``, ``CXRSEM_DATA_BRIXIA_COHEN``; at least one is needed, the others are left
out.  Ids are ``<source>/<id>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cxrsem.components import DatasetInfo, Option
from cxrsem.errors import DataError
from cxrsem.hookspecs import hookimpl

from ._io import TrainingDataset, check_split, fmt, percent
from .brixia import make_brixia, make_brixia_cohen
from .chexpert import make_chexpert
from .nih import make_nih

SOURCES = ("nih", "chexpert", "brixia", "brixia-cohen")
_FACTORIES = {"nih": make_nih, "chexpert": make_chexpert, "brixia": make_brixia,
              "brixia-cohen": make_brixia_cohen}


def env_var(source: str) -> str:
    return "CXRSEM_DATA_" + source.upper().replace("-", "_")


def option_name(source: str) -> str:
    return source.replace("-", "_") + "_root"


class WeakDataset(TrainingDataset):
    """Healthy/unhealthy images pooled from NIH, CheXpert and BrixIA (``binary`` task)."""


def make_weak(*, split: str, image_size: int, root: Path | None, seed: int, nih_root: str = "",
              chexpert_root: str = "", brixia_root: str = "", brixia_cohen_root: str = "",
              chexpert_uncertainty: str = "zeros") -> WeakDataset:
    name = "weak"
    check_split(split, name)
    given = {"nih": nih_root, "chexpert": chexpert_root, "brixia": brixia_root,
             "brixia-cohen": brixia_cohen_root}
    roots: dict[str, Path] = {}
    for source in SOURCES:
        value = given[source] or os.environ.get(env_var(source), "")
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"{name}: the {source} root is not a folder: {path}")
            roots[source] = path
    if not roots:
        raise DataError(
            f"{name} pools NIH, CheXpert and BrixIA and needs at least one of their folders: pass "
            + ", ".join(f"--dataset-opt {option_name(s)}=PATH" for s in SOURCES)
            + " or set " + ", ".join(env_var(s) for s in SOURCES))

    paths: list[str] = []
    ids: list[str] = []
    binary: list[torch.Tensor] = []
    lines: list[str] = []
    problems: list[str] = []
    for source, source_root in roots.items():
        options = {"uncertainty": chexpert_uncertainty} if source == "chexpert" else {}
        ds = _FACTORIES[source](split=split, image_size=image_size, root=source_root, seed=seed,
                                **options)
        target = ds.targets("binary")
        known = ds.target_masks("binary")
        keep = torch.ones(len(ds), dtype=torch.bool) if known is None else known[:, 0]
        index = keep.nonzero()[:, 0].tolist()
        paths += [ds.files[i] for i in index]
        ids += [f"{source}/{ds.ids[i]}" for i in index]
        binary.append(target[keep])
        problems += ds.problems
        unhealthy = int(target[keep].sum())
        dropped = len(ds) - len(index)
        lines.append(f"  {source}: {fmt(len(index))} images, "
                     f"{fmt(len(index) - unhealthy)} healthy / {fmt(unhealthy)} unhealthy "
                     f"({percent(unhealthy, len(index))} unhealthy)"
                     + (f"; {fmt(dropped)} with unknown health dropped" if dropped else ""))
    targets = torch.cat(binary).reshape(-1, 1).to(torch.float32)
    ds = WeakDataset(name=name, split=split, image_size=image_size, paths=paths, ids=ids,
                     targets={"binary": targets}, outputs={"binary": ["unhealthy"]})
    ds.problems = problems
    unhealthy = int(targets.sum())
    ds.summary = [
        f"Weak healthy/unhealthy pool ({split} split): {fmt(len(ids))} images from "
        f"{', '.join(roots)}; {fmt(len(ids) - unhealthy)} healthy / {fmt(unhealthy)} unhealthy "
        f"({percent(unhealthy, len(ids))} unhealthy)",
        *lines,
    ]
    missing = [s for s in SOURCES if s not in roots]
    if missing:
        ds.summary.append(f"  not included (no folder given): {', '.join(missing)}")
    return ds


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name="weak",
        factory=make_weak,
        tasks=("binary",),
        needs_root=False,
        description="healthy/unhealthy pool of NIH, CheXpert and BrixIA (the paper's section 3.3)",
        options=tuple(
            Option(option_name(s), str, "",
                   f"folder of the {s} dataset (default: ${env_var(s)}; empty: left out)")
            for s in SOURCES
        ) + (
            Option("chexpert_uncertainty", str, "zeros",
                   "CheXpert uncertain findings: zeros (not a finding), ones (a finding) or ignore "
                   "(drop images whose health is then unknown)",
                   choices=("zeros", "ones", "ignore")),
        ),
    ))
