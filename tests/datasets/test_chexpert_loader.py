"""chexpert on real rows of CheXpert-v1.0-small/train.csv, unpacked either way."""

from __future__ import annotations

import pytest
import torch

from cxrsem.default_plugins._io import DataWarning
from cxrsem.default_plugins.chexpert import CHEXPERT_LABELS, make_chexpert
from cxrsem.errors import DataError

L = CHEXPERT_LABELS.index
P2 = "train/patient00002/study2/view1_frontal.jpg"  # Cardiomegaly, Edema, ... uncertain
UNCERTAINTY = ("zeros", "ones", "ignore")
P14 = "train/patient00014/study1/view1_frontal.jpg"  # only an uncertain finding


def chexpert(root, split="train", **kw):
    kw.setdefault("val_fraction", 0.0)
    return make_chexpert(split=split, image_size=kw.pop("image_size", 16), root=root, seed=0, **kw)


def csv_rows(fx, name="train.csv"):
    return fx.read_rows(fx.CHEXPERT_DIR / name)[1:]


def test_frontal_default_and_views(chexpert_root, fx):
    rows = csv_rows(fx)
    frontal = [r for r in rows if r[3] == "Frontal"]
    assert len(chexpert(chexpert_root)) == len(frontal)
    assert len(chexpert(chexpert_root, views="lateral")) == len(rows) - len(frontal)
    assert len(chexpert(chexpert_root, views="all")) == len(rows)
    pa = chexpert(chexpert_root, projection="pa")
    assert len(pa) == sum(r[4] == "PA" for r in frontal)


@pytest.mark.parametrize("unpack,folder", [("inside", "CheXpert-v1.0-small"),
                                           ("parent", "CheXpert-v1.0-small"),
                                           ("parent", "CheXpert-v1.0")])
def test_paths_resolve_whichever_way_it_was_unpacked(tmp_path, fx, unpack, folder):
    root = fx.build_chexpert(tmp_path / "x", unpack=unpack, folder=folder)
    ds = chexpert(root, views="all")
    assert len(ds) == 57 and all(p.is_file() for p in ds.paths)
    assert ds.ids[0] == "train/patient00001/study1/view1_frontal.jpg"
    item = ds[1]
    assert item["image"].shape == (1, 16, 16)


def test_uncertainty_zeros_ones_ignore(chexpert_root):
    zeros, ones, ignore = (chexpert(chexpert_root, uncertainty=u) for u in UNCERTAINTY)
    k = zeros.ids.index(P2)
    z, o, i = (d.targets("multilabel")[k] for d in (zeros, ones, ignore))
    for label in ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"):
        assert z[L(label)] == 0 and o[L(label)] == 1
    assert z[L("Lung Opacity")] == o[L("Lung Opacity")] == i[L("Lung Opacity")] == 1
    assert z[L("Pneumonia")] == o[L("Pneumonia")] == 0  # blank = not mentioned = negative
    mask = ignore.target_masks("multilabel")[k]
    assert not mask[L("Cardiomegaly")] and mask[L("Lung Opacity")] and mask[L("Pneumonia")]
    assert zeros.target_masks("multilabel") is None
    item = ignore[k]
    assert torch.equal(item["target_masks"]["multilabel"], mask)
    assert "target_masks" not in zeros[k]


def test_binary_health(chexpert_root):
    zeros, ones, ignore = (chexpert(chexpert_root, uncertainty=u) for u in UNCERTAINTY)
    first = zeros.ids.index("train/patient00001/study1/view1_frontal.jpg")
    assert zeros.targets("binary")[first, 0] == 0  # No Finding + Support Devices only: healthy
    k = zeros.ids.index(P14)
    assert zeros.targets("binary")[k, 0] == 0 and ones.targets("binary")[k, 0] == 1
    assert not ignore.target_masks("binary")[k, 0]
    assert ignore.target_masks("binary")[zeros.ids.index(P2), 0]  # has a positive: known


def test_splits_are_patient_wise_and_test_is_valid_csv(chexpert_root, fx):
    train = chexpert(chexpert_root, val_fraction=0.2)
    val = chexpert(chexpert_root, "val", val_fraction=0.2)
    test = chexpert(chexpert_root, "test")
    pat = lambda ds: {i.split("/")[1] for i in ds.ids}  # noqa: E731
    assert len(pat(val)) == round(0.2 * 19) and not pat(train) & pat(val)
    assert len(train) + len(val) == len(chexpert(chexpert_root))
    assert all(i.startswith("valid/") for i in test.ids)
    assert len(test) == sum(r[3] == "Frontal" for r in csv_rows(fx, "valid.csv"))


def test_missing_images_and_unknown_columns_warn(tmp_path, fx):
    root = fx.build_chexpert(tmp_path / "x", skip=(P14,), extra_columns=True)
    with pytest.warns(DataWarning) as record:
        ds = chexpert(root)
    messages = [str(w.message) for w in record]
    assert any("not found on disk" in m and "patient00014/study1/view1_frontal.jpg" in m
               for m in messages)
    assert any("unknown columns" in m and "Mystery Column" in m for m in messages)
    assert P14 not in ds.ids


def test_missing_csvs_are_data_errors(tmp_path, fx):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train.csv and valid.csv not found.*expected layout"):
        chexpert(tmp_path / "empty")
    root = fx.build_chexpert(tmp_path / "x", with_valid=False)
    with pytest.raises(DataError, match="valid.csv not found"):
        chexpert(root)


def test_describe(chexpert_root):
    text = chexpert(chexpert_root, uncertainty="ignore").describe()
    assert text.startswith("CheXpert: 57 images in train.csv, 7 in valid.csv, 14 labels")
    assert "U-Ignore" in text
