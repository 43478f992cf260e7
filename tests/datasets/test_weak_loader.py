"""weak: NIH, CheXpert and BrixIA pooled into healthy / unhealthy (the paper's section 3.3)."""

from __future__ import annotations

import warnings

import pytest
import torch

import cxrsem
from cxrsem.default_plugins.brixia import make_brixia
from cxrsem.default_plugins.chexpert import make_chexpert
from cxrsem.default_plugins.nih import make_nih
from cxrsem.default_plugins.weak import make_weak
from cxrsem.errors import DataError


def weak(split="train", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_weak(split=split, image_size=16, root=None, seed=0, **kw)


def test_pools_each_source_with_its_own_split(nih_root, chexpert_root, brixia_root):
    ds = weak(nih_root=str(nih_root), chexpert_root=str(chexpert_root),
              brixia_root=str(brixia_root))
    parts = {
        "nih": make_nih(split="train", image_size=16, root=nih_root, seed=0),
        "chexpert": make_chexpert(split="train", image_size=16, root=chexpert_root, seed=0),
        "brixia": make_brixia(split="train", image_size=16, root=brixia_root, seed=0),
    }
    assert len(ds) == sum(len(p) for p in parts.values())
    assert ds.outputs == {"binary": ["unhealthy"]} and ds.targets("binary").shape == (len(ds), 1)
    target = dict(zip(ds.ids, ds.targets("binary")[:, 0].tolist(), strict=True))
    for source, part in parts.items():
        for pid, value in zip(part.ids, part.targets("binary")[:, 0].tolist(), strict=True):
            assert target[f"{source}/{pid}"] == value
    text = ds.describe()
    first = text.splitlines()[0]
    assert first.startswith(f"Weak healthy/unhealthy pool (train split): {len(ds)} images")
    for source in parts:
        assert f"  {source}: {len(parts[source])} images" in text
    assert "not included (no folder given): brixia-cohen" in text
    item = ds[0]
    assert set(item) == {"image", "targets", "id"} and item["targets"]["binary"].shape == (1,)


def test_health_rules(nih_root, brixia_root):
    target = {}
    for split in ("train", "val", "test"):
        ds = weak(split, nih_root=str(nih_root), brixia_root=str(brixia_root))
        target.update(zip(ds.ids, ds.targets("binary")[:, 0].tolist(), strict=True))
    assert target["nih/00000005_000.png"] == 0  # No Finding
    assert target["nih/00000005_006.png"] == 1  # Infiltration
    assert target["brixia/1000003.dcm"] == 0  # BrixiaScore 0: all zones 0
    assert target["brixia/1000001.dcm"] == 1  # "1" = 000001: zone F is 1


def test_chexpert_uncertain_health_ignored_is_dropped(chexpert_root):
    zeros = weak(chexpert_root=str(chexpert_root))
    ignore = weak(chexpert_root=str(chexpert_root), chexpert_uncertainty="ignore")
    assert len(ignore) < len(zeros)
    assert "with unknown health dropped" in ignore.describe()


def test_roots_from_environment(monkeypatch, cohen_root):
    monkeypatch.setenv("CXRSEM_DATA_BRIXIA_COHEN", str(cohen_root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = cxrsem.create_dataset("weak", split="val", image_size=16)
    assert len(ds) > 0 and all(i.startswith("brixia-cohen/") for i in ds.ids)
    assert torch.equal(ds.targets("binary"), ds.targets("binary").clamp(0, 1))


def test_needs_at_least_one_root(tmp_path):
    with pytest.raises(DataError, match="needs at least one.*nih_root=PATH.*CXRSEM_DATA_NIH"):
        weak()
    with pytest.raises(DataError, match="not a folder"):
        weak(nih_root=str(tmp_path / "nope"))
