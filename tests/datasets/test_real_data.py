"""The loaders on the two real datasets in ../shared/data (set CXRSEM_DATA_DIR to that folder).

Only a handful of images are decoded, so this stays fast.  Skipped, with the reason, when the
variable is unset or the folder is not there.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxrsem
from cxrsem.default_plugins._io import DataWarning
from cxrsem.tasks import ZONE_NAMES

_DIR = os.environ.get("CXRSEM_DATA_DIR", "")
DATA = Path(_DIR) if _DIR else None
COVID = DATA / "covid-19-chest-xray-segmentations-dataset" if DATA else None
COHEN = DATA / "brixia-cohen" if DATA else None

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not _DIR, reason="CXRSEM_DATA_DIR is not set (point it at ../shared/data "
                                        "to test the loaders on the real datasets)"),
    pytest.mark.skipif(bool(_DIR) and not (COVID.is_dir() and COHEN.is_dir()),
                       reason=f"CXRSEM_DATA_DIR={_DIR} lacks covid-19-chest-xray-segmentations-"
                              "dataset/ or brixia-cohen/"),
]

EXPECTED_COUNTS = {
    "Left Lung": 99, "Right Lung": 99, "Cardiomediastinum": 100, "Airways": 99,
    "Ground Glass Opacities": 93, "Consolidation": 32, "Pleural Effusion": 2, "Pneumothorax": 1,
    "Endotracheal Tube": 13, "Central Venous Line": 11, "Monitoring Probes": 12,
    "Nosogastric Tube": 10, "Tubings": 16,
}
MISSING_COHEN = {
    "7E335538-2F86-424E-A0AB-6397783A38D0.jpeg", "covid-19-pneumonia-24-day6.jpg",
    "chlamydia-pneumonia-PA.png", "2C10A413-AABE-4807-8CCE-6A2025594067.jpeg",
    "cavitating-pneumonia-4-day28-PA.png", "E1724330-1866-4581-8CD8-CEC9B8AFEDDE.jpeg",
}


def covid_seg(**kw):
    return cxrsem.create_concept_set("covid-seg", data_roots={"covid-seg": COVID}, **kw)


def cohen(split, **kw):
    return cxrsem.create_dataset("brixia-cohen", split=split, image_size=kw.pop("image_size", 64),
                                 data_roots={"brixia-cohen": COHEN}, **kw)


def test_covid_seg_finds_100_images_and_13_concepts_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        cs = covid_seg(image_size=64, mask_size=32)
    assert len(cs) == 100
    assert cs.concept_counts() == EXPECTED_COUNTS
    text = cs.describe()
    assert text.startswith("Covid-CXR segmentations: 100 images, 588 masks, 13 concepts")
    assert "14 rows without a mask skipped: Monitoring Probes 14" in text
    with_tube = covid_seg(include_chest_tube=True)
    assert len(with_tube.concepts) == 14 and with_tube.concept_counts()["Chest Tube"] == 0


def test_covid_seg_masks_follow_structure_csv_and_the_anatomy():
    cs = covid_seg(image_size=128, mask_size=128)
    with open(COVID / "structure.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Mask"]]
    listed = {}
    for r in rows:
        listed.setdefault(r["Filename"], set()).add(r["Template Name"])
    lung_l, lung_r = cs.concepts.index("Left Lung"), cs.concepts.index("Right Lung")
    heart = cs.concepts.index("Cardiomediastinum")
    for i in (0, 17, 42, 63, 88):
        item = cs[i]
        present = {c for c, ch in zip(cs.concepts, item["masks"], strict=True) if ch.any()}
        assert present == listed[item["id"]], item["id"]
        image, masks = item["image"][0].numpy(), item["masks"].numpy()
        lungs = masks[lung_l] | masks[lung_r]
        if lungs.any() and masks[heart].any():  # air-filled lungs are darker than the mediastinum
            assert image[lungs].mean() < image[masks[heart]].mean(), item["id"]
        if masks[lung_l].any() and masks[lung_r].any():  # patient's left lung is on image right
            cols = np.arange(masks.shape[-1])
            assert (cols * masks[lung_l].sum(0)).sum() / masks[lung_l].sum() > \
                   (cols * masks[lung_r].sum(0)).sum() / masks[lung_r].sum(), item["id"]


def test_covid_seg_mask_equals_the_pasted_file_at_full_resolution():
    name = "31BA3780-2323-493F-8AED-62081B9C383B.jpeg"  # 1024 x 1024: cell = pixel
    assert Image.open(COVID / "images" / name).size == (1024, 1024)
    cs = covid_seg(image_size=32, mask_size=1024)
    masks = cs[cs.ids.index(name)]["masks"].numpy()
    with open(COVID / "structure.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Filename"] == name and r["Mask"]]
    assert rows
    for concept in {r["Template Name"] for r in rows}:
        canvas = np.zeros((1024, 1024), bool)
        for r in rows:
            if r["Template Name"] != concept:
                continue
            rgba = np.asarray(Image.open(COVID / r["Mask"]).convert("RGBA"))
            crop = (rgba[..., :3].max(-1) > 0) & (rgba[..., 3] > 0)
            top, left = int(r["Top"]), int(r["Left"])
            region = canvas[top:top + crop.shape[0], left:left + crop.shape[1]]
            region |= crop[: region.shape[0], : region.shape[1]]
        np.testing.assert_array_equal(masks[cs.concepts.index(concept)], canvas, err_msg=concept)


def test_brixia_cohen_finds_186_images_and_warns_once_naming_the_6_missing():
    with pytest.warns(DataWarning) as record:
        train = cohen("train")
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("brixia-cohen: 6 images listed in public-annotations.csv missing")
    assert all(name in message for name in MISSING_COHEN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val, test = cohen("val"), cohen("test")
    ids = train.ids + val.ids + test.ids
    assert len(ids) == len(set(ids)) == 186 and not set(ids) & MISSING_COHEN
    assert train.describe().startswith("BrixIA (Cohen subset): 192 scored images in "
                                       "public-annotations.csv, 186 found (6 missing)")


def test_brixia_cohen_targets_match_the_csv():
    with open(COHEN / "data" / "public-annotations.csv", newline="", encoding="utf-8-sig") as fh:
        rows = {r["filename"]: r for r in csv.DictReader(fh)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rater, prefix in (("senior", "S"), ("junior", "J")):
            ds = cohen("test", rater=rater)
            for k in range(0, len(ds), 5):
                row = rows[ds.ids[k]]
                zones = [int(row[f"{prefix}-{z}"]) for z in ZONE_NAMES]
                assert ds.targets("zones")[k].tolist() == zones
                assert ds.targets("global-score")[k, 0] == int(row[f"{prefix}-Global"])
        ds = cohen("val", image_size=96)
        for k in (0, 1, 2):  # decode a few real images
            item = ds[k]
            assert item["image"].shape == (1, 96, 96) and float(item["image"].std()) > 0.02


def test_71_images_overlap_between_brixia_cohen_and_covid_seg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored = {i for s in ("train", "val", "test") for i in cohen(s).ids}
    assert len(scored & set(covid_seg().ids)) == 71


def test_prepared_real_images_match_the_decoded_ones(tmp_path):
    from cxrsem.prepare import prepare_images

    roots = {"covid-seg": COVID}
    options = {"limit": 6}  # a seeded sample: real images are large to decode
    (result,) = prepare_images("covid-seg", sizes=(64,), data_roots=roots, cache_dir=tmp_path,
                               concept_options=options)
    assert result.images == 6 and not result.failed
    raw = cxrsem.create_concept_set("covid-seg", image_size=64, mask_size=16, data_roots=roots,
                                    cache_dir="off", **options)
    cached = cxrsem.create_concept_set("covid-seg", image_size=64, mask_size=16, data_roots=roots,
                                       cache_dir=tmp_path, **options)
    assert cached.image_cache_state["images"] == 6
    for i in range(6):
        assert (raw[i]["image"] - cached[i]["image"]).abs().max().item() <= 0.5 / 255 + 1e-6
