"""nih and nih-bbox on format-faithful copies of the distributed files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cxrsem
from cxrsem.default_plugins._io import DataWarning
from cxrsem.default_plugins.nih import BOX_CONCEPTS, NIH_LABELS, make_nih, make_nih_bbox
from cxrsem.errors import DataError

V2020_SEX_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,"
                    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def nih(root, split="train", **kw):
    return make_nih(split=split, image_size=kw.pop("image_size", 32), root=root,
                    seed=kw.pop("seed", 0), **kw)


def patients(ds):
    return {i.split("_")[0] for i in ds.ids}


def test_splits_follow_the_official_lists_and_are_patient_wise(nih_root, fx):
    train, val, test = (nih(nih_root, s) for s in ("train", "val", "test"))
    listed_test = (fx.FIXTURES / "nih" / "test_list.txt").read_text().split()
    listed_tv = (fx.FIXTURES / "nih" / "train_val_list.txt").read_text().split()
    assert sorted(test.ids) == sorted(listed_test)
    assert sorted(train.ids + val.ids) == sorted(listed_tv)
    assert len(val) > 0
    assert not patients(train) & patients(val)
    assert not (patients(train) | patients(val)) & patients(test)


def test_labels_from_finding_labels(nih_root):
    parts = [nih(nih_root, s) for s in ("train", "val", "test")]
    ids = [i for p in parts for i in p.ids]
    multi = torch.cat([p.targets("multilabel") for p in parts])
    binary = torch.cat([p.targets("binary") for p in parts])
    assert multi.shape == (31, 14) and binary.shape == (31, 1)
    k = ids.index("00000001_001.png")
    assert {NIH_LABELS[j] for j in torch.nonzero(multi[k])[:, 0].tolist()} == {"Cardiomegaly",
                                                                              "Emphysema"}
    assert binary[k, 0] == 1
    assert multi.sum(0)[NIH_LABELS.index("Hernia")] == 8
    k = ids.index("00010277_000.png")  # six findings, Pleural_Thickening with its underscore
    assert multi[k].sum() == 6 and multi[k, NIH_LABELS.index("Pleural_Thickening")] == 1
    healthy = [k for k, i in enumerate(ids) if i in ("00000002_000.png", "00000006_000.png")]
    assert len(healthy) == 2 and all(binary[k, 0] == 0 and multi[k].sum() == 0 for k in healthy)
    assert int((binary == 0).sum()) == 8  # the 8 "No Finding" rows


def test_items_follow_the_contract(nih_root):
    ds = nih(nih_root, "test", image_size=24)
    item = ds[0]
    assert item["image"].shape == (1, 24, 24) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    assert item["targets"]["multilabel"].shape == (14,) and "target_masks" not in item
    assert torch.equal(item["targets"]["multilabel"], ds.targets("multilabel")[0])
    assert ds.outputs == {"multilabel": NIH_LABELS, "binary": ["unhealthy"]}
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_nested_layout_gives_the_same_dataset(nih_root, nih_nested_root):
    flat, nested = nih(nih_root, "train"), nih(nih_nested_root, "train")
    assert flat.ids == nested.ids
    assert {p.parent.parent.name for p in nested.paths} == {"images_001", "images_002"}
    assert torch.equal(flat[3]["image"], nested[3]["image"])


def test_v2020_header_variant_and_old_file_name(tmp_path, fx):
    root = fx.build_nih(tmp_path / "a", entry_name="Data_Entry_2017.csv", header=V2020_SEX_HEADER,
                        box_image_size=64)
    ds = nih(root, "test")
    assert len(ds) == 11 and ds.describe().startswith("NIH: 31 images, 15 boxes on 9 images")


def test_file_names_never_come_from_id_columns(tmp_path, fx):
    # a row whose Patient ID / Follow-up # do not match its Image Index still finds its file
    root = fx.build_nih(tmp_path / "a", box_image_size=64,
                        extra_rows=("renamed-scan.png,Mass,0,6,81,M,PA,2500,2048,0.171,0.171",))
    images, listing = root / "images", root / "train_val_list.txt"
    (images / "renamed-scan.png").write_bytes((images / "00000006_000.png").read_bytes())
    listing.write_text(listing.read_text() + "renamed-scan.png\n")
    ids = nih(root, "train").ids + nih(root, "val").ids
    assert "renamed-scan.png" in ids


def test_missing_and_unreadable_images_warn_once(tmp_path, fx):
    root = fx.build_nih(tmp_path / "a", skip=("00000005_003.png", "00000005_004.png"),
                        corrupt=("00000002_000.png",), rgba=("00000006_000.png",),
                        box_image_size=64)
    with pytest.warns(DataWarning) as record:
        train = nih(root, "train", val_fraction=0.0)
    missing = [str(w.message) for w in record if "not found on disk" in str(w.message)]
    assert len(missing) == 1 and "00000005_003.png, 00000005_004.png" in missing[0]
    assert "00000005_003.png" not in train.ids
    k = train.ids.index("00000002_000.png")
    with pytest.warns(DataWarning, match="unreadable image skipped.*00000002_000.png"):
        item = train[k]
    assert item["id"] == train.ids[k + 1]  # the next readable image is served in its place
    rgba = train[train.ids.index("00000006_000.png")]["image"]
    assert rgba.shape == (1, 32, 32)


def test_unknown_labels_warn_and_are_ignored(tmp_path, fx):
    root = fx.build_nih(tmp_path / "a", box_image_size=64, extra_rows=(
        "00000006_000.png,Mass|Spaceship,0,6,81,M,PA,2500,2048,0.171,0.171",))
    with pytest.warns(DataWarning, match="unknown labels.*'Spaceship'"):
        nih(root, "train")


def test_missing_files_are_one_data_error_with_the_layout(tmp_path, fx):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv or Data_Entry_2017.csv not "
                                        r"found.*expected layout: ROOT/Data_Entry"):
        nih(tmp_path / "empty")
    root = fx.build_nih(tmp_path / "a", box_image_size=64)
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt not found"):
        nih(root)
    root = fx.build_nih(tmp_path / "b", box_image_size=64)
    for p in (root / "images").iterdir():
        p.unlink()
    (root / "images").rmdir()
    with pytest.raises(DataError, match="no images found"):
        nih(root)


def test_without_split_files_falls_back_to_patient_split(tmp_path, fx):
    root = fx.build_nih(tmp_path / "a", with_lists=False, box_image_size=64)
    with pytest.warns(DataWarning, match="official split files missing"):
        parts = [nih(root, s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 31
    assert not patients(parts[0]) & patients(parts[2])


def test_view_option(nih_root):
    ap = nih(nih_root, "train", view="ap", val_fraction=0.0)
    assert len(ap) == 3 and all(i.startswith(("00000004", "00000005")) for i in ap.ids)


def test_through_the_api_and_env_var(nih_root, monkeypatch):
    ds = cxrsem.create_dataset("nih", split="test", image_size=16, data_roots={"nih": nih_root})
    assert len(ds) == 11
    monkeypatch.setenv("CXRSEM_DATA_NIH", str(nih_root))
    assert len(cxrsem.create_dataset("nih", split="test", image_size=16, val_fraction="0.2")) == 11


# --------------------------------------------------------------------------------------------
# nih-bbox


def bbox(root, **kw):
    return make_nih_bbox(image_size=kw.pop("image_size", 64), mask_size=kw.pop("mask_size", 32),
                         root=root, seed=0, **kw)


def test_bbox_counts_and_alias(nih_root):
    cs = bbox(nih_root)
    assert cs.concepts == BOX_CONCEPTS and "Infiltration" in cs.concepts
    assert len(cs) == 9
    assert cs.concept_counts() == {"Atelectasis": 2, "Cardiomegaly": 1, "Effusion": 3,
                                   "Infiltration": 3, "Mass": 2, "Nodule": 1, "Pneumonia": 2,
                                   "Pneumothorax": 1}
    assert cs.describe().splitlines()[0] == "NIH: 31 images, 15 boxes on 9 images, 8 box concepts"


@pytest.mark.parametrize("mask_size", [7, 56, 224])
def test_masks_present_exactly_when_annotated(nih_root, fx, mask_size):
    cs = bbox(nih_root, mask_size=mask_size)
    boxes = {}
    for name, rows in fx.nih_boxes().items():
        boxes[name] = {"Infiltration" if c == "Infiltrate" else c for c, _ in rows}
    counts = dict.fromkeys(cs.concepts, 0)
    for i in range(len(cs)):
        masks = cs._masks(i)
        assert masks.shape == (8, mask_size, mask_size) and masks.dtype == bool
        present = {c for c, m in zip(cs.concepts, masks, strict=True) if m.any()}
        assert present == boxes[cs.ids[i]]
        for c in present:
            counts[c] += 1
    assert counts == cs.concept_counts()


@pytest.mark.parametrize("box_image_size", [1024, 256])
def test_boxes_align_with_the_pixels(tmp_path, fx, box_image_size):
    # box images are black with white boxes; a down-scaled copy must still line up
    root = fx.build_nih(tmp_path / "a", box_image_size=box_image_size)
    cs = bbox(root, image_size=128, mask_size=128)
    for i in range(len(cs)):
        item = cs[i]
        inside = item["masks"].any(0)
        image = item["image"][0]
        assert float(image[inside].mean()) > 0.9
        assert float(image[~inside].mean()) < 0.05


def test_bbox_limit_and_missing_images(tmp_path, fx):
    root = fx.build_nih(tmp_path / "a", box_image_size=64, skip=("00000072_000.png",))
    with pytest.warns(DataWarning, match="boxed images not found on disk.*00000072_000.png"):
        cs = bbox(root)
    assert len(cs) == 8 and cs.concept_counts()["Atelectasis"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = bbox(root, limit=3)
    assert len(small) == 3 and sum(small.concept_counts().values()) >= 3


def test_bbox_item_contract(nih_root):
    item = bbox(nih_root, image_size=40, mask_size=20)[0]
    assert set(item) == {"image", "masks", "id"}
    assert item["image"].shape == (1, 40, 40) and item["masks"].shape == (8, 20, 20)
    assert item["masks"].dtype == torch.bool
    assert np.isfinite(item["image"].numpy()).all()
