"""covid-seg on a copy of the repository layout: structure.csv + cropped RGBA masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cxrsem.default_plugins._io import DataWarning
from cxrsem.default_plugins.covid_seg import COVID_CONCEPTS, make_covid_seg
from cxrsem.errors import DataError


def covid(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_covid_seg(image_size=kw.pop("image_size", 32),
                              mask_size=kw.pop("mask_size", 16), root=root, seed=0, **kw)


def canvas_oracle(fx, filename, concept, size, m):
    """Paste every crop of (filename, concept) onto a full canvas, then sample cell centres."""
    width, height = size
    canvas = np.zeros((height, width), bool)
    for row in fx.covid_rows():
        if row["Filename"] == filename and row["Template Name"] == concept and row["Mask"]:
            crop = fx.covid_crop(row)
            top, left = int(row["Top"]), int(row["Left"])
            canvas[top:top + crop.shape[0], left:left + crop.shape[1]] |= crop
    rows = ((np.arange(m) + 0.5) * height / m).astype(int)
    cols = ((np.arange(m) + 0.5) * width / m).astype(int)
    return canvas[np.ix_(rows, cols)]


def test_concepts_and_counts(covid_root):
    cs = covid(covid_root)
    assert cs.concepts == COVID_CONCEPTS and len(cs.concepts) == 13
    assert len(cs) == 3  # absent.jpg skipped
    counts = cs.concept_counts()
    assert counts["Left Lung"] == counts["Right Lung"] == 3
    assert counts["Ground Glass Opacities"] == counts["Consolidation"] == 1
    assert counts["Monitoring Probes"] == 0  # its only row has an empty Mask
    assert counts["Airways"] == 0 and sum(counts.values()) == 10


def test_chest_tube_option(covid_root):
    cs = covid(covid_root, include_chest_tube=True)
    assert len(cs.concepts) == 14 and cs.concepts[-2:] == ["Chest Tube", "Tubings"]
    assert cs.concept_counts()["Chest Tube"] == 0
    assert not cs[0]["masks"][cs.concepts.index("Chest Tube")].any()


def test_missing_image_warns(covid_root):
    with pytest.warns(DataWarning, match="annotated images not found in images/.*absent.jpg"):
        make_covid_seg(image_size=8, mask_size=8, root=covid_root, seed=0)


@pytest.mark.parametrize("m", [16, 64])
def test_masks_match_full_canvas_oracle(covid_root, fx, m):
    cs = covid(covid_root, mask_size=m)
    sizes = {name: size for name, _, size in fx.COVID_IMAGES}
    for i in range(len(cs)):
        item = cs[i]
        assert item["masks"].shape == (13, m, m) and item["masks"].dtype == torch.bool
        for c, concept in enumerate(cs.concepts):
            expected = canvas_oracle(fx, item["id"], concept, sizes[item["id"]], m)
            if concept == "Nosogastric Tube":
                continue  # a 1-pixel line: checked in test_thin_tube_is_kept
            np.testing.assert_array_equal(item["masks"][c].numpy(), expected,
                                          err_msg=f"{item['id']} {concept}")


def test_duplicate_concept_is_merged_and_overlaps_kept(covid_root, fx):
    cs = covid(covid_root, mask_size=40)
    item = cs[cs.ids.index("case-a-PA.jpg")]
    right = item["masks"][cs.concepts.index("Right Lung")].numpy()
    # two Right Lung crops: rows 5-20 and 18-34 of a 40-row image: both halves present
    assert right[:20].any() and right[20:].any()
    ggo = item["masks"][cs.concepts.index("Ground Glass Opacities")]
    left = item["masks"][cs.concepts.index("Left Lung")]
    assert ggo.any() and bool((ggo & left).any())  # a lesion pixel is also a lung pixel


def test_thin_tube_is_kept(covid_root):
    for m in (4, 16, 64):
        cs = covid(covid_root, mask_size=m)
        masks = cs[cs.ids.index("case-a-PA.jpg")]["masks"]
        assert masks[cs.concepts.index("Nosogastric Tube")].any()
        present = [c for c, ch in zip(cs.concepts, masks, strict=True) if ch.any()]
        assert present == ["Left Lung", "Right Lung", "Ground Glass Opacities", "Nosogastric Tube"]


def test_masks_align_with_image_pixels(covid_root):
    # the lungs are painted white in the fixture images (RGB JPEG, L PNG and RGBA PNG)
    cs = covid(covid_root, image_size=64, mask_size=64)
    for i in range(len(cs)):
        item = cs[i]
        lungs = item["masks"][0] | item["masks"][1]
        image = item["image"][0]
        assert float(image[lungs].mean()) > 0.9 and float(image[~lungs].mean()) < 0.1


def test_limit_and_errors(covid_root, tmp_path):
    assert len(covid(covid_root, limit=2)) == 2
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="structure.csv not found.*expected layout"):
        covid(tmp_path / "x")


def test_unknown_concept_kept_with_warning(tmp_path, fx):
    root = fx.build_covid_seg(tmp_path / "c")
    text = (root / "structure.csv").read_text().replace('"Consolidation",,', '"Lung Nodule",,')
    text = "".join(line for line in text.splitlines(True) if "absent.jpg" not in line)
    (root / "structure.csv").write_text(text)
    with pytest.warns(DataWarning, match="unknown concept names.*'Lung Nodule'"):
        cs = make_covid_seg(image_size=8, mask_size=8, root=root, seed=0)
    assert cs.concepts[-1] == "Lung Nodule" and cs.concept_counts()["Lung Nodule"] == 1
    assert cs.concept_counts()["Consolidation"] == 0


def test_exclude_leaves_the_named_images_out(covid_root):
    everything = covid(covid_root)
    left_out = everything.ids[0]
    cs = covid(covid_root, exclude=f" {left_out} ,")
    assert cs.ids == everything.ids[1:]
    # the kept images keep their own masks (the annotations stay aligned with the images)
    assert np.array_equal(cs[0]["masks"], everything[1]["masks"])
    assert any("1 excluded" in line for line in cs.summary)
    with pytest.warns(UserWarning, match="images to exclude that the set does not hold: nope.png"):
        make_covid_seg(image_size=32, mask_size=16, root=covid_root, seed=0,
                       exclude=f"{left_out},nope.png")
    with pytest.raises(DataError, match="exclude leaves no image"):
        covid(covid_root, exclude=",".join(everything.ids))
