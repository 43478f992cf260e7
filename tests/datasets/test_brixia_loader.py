"""brixia (metadata_global_v2.csv + dicom_clean/) and brixia-cohen (the public subset)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cxrsem.default_plugins._io import DataWarning
from cxrsem.default_plugins.brixia import (
    make_brixia,
    make_brixia_cohen,
    parse_brixia_score,
)
from cxrsem.errors import DataError
from cxrsem.tasks import ZONE_NAMES


@pytest.mark.parametrize("raw,zones", [
    ("1", [0, 0, 0, 0, 0, 1]), ("000001", [0, 0, 0, 0, 0, 1]), ("10230", [0, 1, 0, 2, 3, 0]),
    ("10230.0", [0, 1, 0, 2, 3, 0]), ("0", [0] * 6), ("333333", [3] * 6),
    (" 3333 ", [0, 0, 3, 3, 3, 3]),
])
def test_brixia_score_lost_leading_zeros(raw, zones):
    assert parse_brixia_score(raw) == zones


@pytest.mark.parametrize("raw", ["", "4", "1234567", "12.5", "-1", "abc"])
def test_brixia_score_invalid(raw):
    assert parse_brixia_score(raw) is None


def brixia(root, split="train", **kw):
    return make_brixia(split=split, image_size=kw.pop("image_size", 16), root=root, seed=0, **kw)


def test_zone_targets_match_the_csv(brixia_root, fx):
    rows = {r["Filename"]: r for r in fx.brixia_rows()}
    for split in ("train", "val", "test"):
        ds = brixia(brixia_root, split)
        zones, total, binary = (ds.targets(t) for t in ("zones", "global-score", "binary"))
        assert zones.dtype == torch.int64 and zones.shape == (len(ds), 6)
        assert total.shape == binary.shape == (len(ds), 1)
        for k, name in enumerate(ds.ids):
            expected = fx.brixia_zones(rows[name]["BrixiaScore"])
            assert zones[k].tolist() == expected
            assert total[k, 0] == int(rows[name]["BrixiaScoreGlobal"]) == sum(expected)
            assert binary[k, 0] == (sum(expected) > 0)
    assert ds.outputs["zones"] == ZONE_NAMES


def test_splits(brixia_root, fx):
    rows = fx.brixia_rows()
    train, val, test = (brixia(brixia_root, s, val_fraction=0.25) for s in ("train", "val", "test"))
    assert sorted(test.ids) == sorted(r["Filename"] for r in rows if r["ConsensusTestset"] == "1")
    subject = {r["Filename"]: r["Subject"] for r in rows}
    tr, va = {subject[i] for i in train.ids}, {subject[i] for i in val.ids}
    assert not tr & va and len(va) == round(0.25 * 9)
    assert len(train) + len(val) + len(test) == len(rows)
    # subject 104 has a test image and a non-test image
    assert "1000007.dcm" in train.ids + val.ids
    excl = [brixia(brixia_root, s, exclude_test_patients=True, val_fraction=0.25)
            for s in ("train", "val")]
    assert "1000007.dcm" not in excl[0].ids + excl[1].ids


def test_dicom_pixels_monochrome1_inverted(brixia_root, fx):
    ds = brixia(brixia_root, "test", image_size=20)  # 20 columns: no resampling along x
    rows = {r["Filename"]: r for r in fx.brixia_rows()}
    for k, name in enumerate(ds.ids):
        image = ds[k]["image"][0]
        value = 100 * (int(rows[name]["BrixiaScoreGlobal"]) + 1) / 4095
        if rows[name]["PhotometricInterpretation"] == "MONOCHROME1":
            value = 1 - value
        assert abs(float(image[10, 10]) - value) < 1e-4


def test_converted_pngs_with_the_same_stem(tmp_path, fx):
    dicom_root = fx.build_brixia(tmp_path / "d")
    png_root = fx.build_brixia(tmp_path / "p", fmt="png")
    a, b = brixia(dicom_root, "test", image_size=20), brixia(png_root, "test", image_size=20)
    assert a.ids == b.ids and all(p.suffix == ".png" for p in b.paths)
    for k in range(len(a)):
        assert torch.allclose(a[k]["image"], b[k]["image"], atol=1 / 255)


def test_consensus_labels_for_the_test_split(brixia_root):
    ds = brixia(brixia_root, "test", test_labels="consensus")
    zones = dict(zip(ds.ids, ds.targets("zones").tolist(), strict=True))
    assert zones["1000005.dcm"] == [0, 0, 2, 3, 3, 3]
    assert zones["1000013.dcm"] == [3, 2, 1, 0, 0, 0]
    assert ds.targets("global-score")[ds.ids.index("1000006.dcm"), 0] == 13


def test_missing_files(tmp_path, fx):
    root = fx.build_brixia(tmp_path / "a", skip=("1000003.dcm",), with_consensus=False)
    with pytest.warns(DataWarning, match="not found, skipped: 1000003.dcm"):
        ds = brixia(root, "train", val_fraction=0.0)
    assert "1000003.dcm" not in ds.ids
    with pytest.raises(DataError, match="metadata_consensus_v1.csv not found"):
        brixia(root, "test", test_labels="consensus")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="metadata_global_v2.csv or metadata_global_v1.csv not "
                                        "found.*dicom_clean"):
        brixia(tmp_path / "empty")


def test_columns_are_read_by_name(tmp_path, fx):
    root = fx.build_brixia(tmp_path / "a")
    lines = (root / "metadata_global_v2.csv").read_text().splitlines()
    cells = [line.split(";") for line in lines]
    order = list(reversed(range(len(cells[0]))))
    (root / "metadata_global_v2.csv").write_text(
        "\n".join(";".join(row[i] for i in order) for row in cells) + "\n")
    assert brixia(root, "test").ids == brixia(fx.build_brixia(tmp_path / "b"), "test").ids


# --------------------------------------------------------------------------------------------
# brixia-cohen


def cohen(root, split="train", **kw):
    return make_brixia_cohen(split=split, image_size=16, root=root, seed=kw.pop("seed", 0), **kw)


def test_cohen_missing_images_warn_once_naming_them(cohen_root):
    with pytest.warns(DataWarning) as record:
        cohen(cohen_root)
    assert len(record) == 1
    assert "2 images listed in public-annotations.csv missing" in str(record[0].message)
    assert "lancet-case2b.jpg" in str(record[0].message)
    assert "covid-19-pneumonia-20.jpg" in str(record[0].message)


def _all(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [cohen(root, s, **kw) for s in ("train", "val", "test")]


def test_cohen_split_is_seeded_and_covers_every_present_image(cohen_root):
    parts = _all(cohen_root)
    ids = [i for p in parts for i in p.ids]
    assert len(ids) == len(set(ids)) == 18
    assert [len(p) for p in parts] == [len(p) for p in _all(cohen_root)]
    other = _all(cohen_root, seed=1)
    assert [p.ids for p in other] != [p.ids for p in parts]


def test_cohen_raters(cohen_root, fx):
    rows = {r["filename"]: r for r in fx.cohen_rows()}
    for rater in ("senior", "junior", "mean"):
        for ds in _all(cohen_root, rater=rater):
            for k, name in enumerate(ds.ids):
                s = [int(rows[name][f"S-{z}"]) for z in ZONE_NAMES]
                j = [int(rows[name][f"J-{z}"]) for z in ZONE_NAMES]
                mean = [int(np.floor((a + b) / 2 + 0.5)) for a, b in zip(s, j, strict=True)]
                want = {"senior": s, "junior": j, "mean": mean}
                assert ds.targets("zones")[k].tolist() == want[rater]
                assert ds.targets("global-score")[k, 0] == sum(want[rater])


def test_cohen_rounding_half_up_and_health(cohen_root):
    every = {}
    for rater in ("senior", "junior", "mean"):
        for ds in _all(cohen_root, rater=rater):
            for k, name in enumerate(ds.ids):
                every[rater, name] = (ds.targets("zones")[k].tolist(), ds.targets("binary")[k, 0])
    # S = 0 0 0 0 0 0, J = 0 1 0 0 0 0: senior healthy, junior and mean (0.5 -> 1) not
    name = "covid-19-pneumonia-7-PA.jpg"
    assert every["senior", name][1] == 0 and every["junior", name][1] == 1
    assert every["mean", name] == ([0, 1, 0, 0, 0, 0], 1)


def test_cohen_layout_errors(tmp_path):
    (tmp_path / "repo" / "data").mkdir(parents=True)
    with pytest.raises(DataError, match="public-annotations.csv not found.*expected layout"):
        cohen(tmp_path / "repo")
    (tmp_path / "repo" / "data" / "public-annotations.csv").write_text("filename\n")
    with pytest.raises(DataError, match="public-cohen-subset"):
        cohen(tmp_path / "repo")
