"""The ``mask-folder`` concept set, created by name through cxrsem's registry as a user would."""

from __future__ import annotations

import warnings

import cxrsem
import numpy as np
import pytest
import torch
from cxrsem.errors import DataError
from cxrsem.imageio import load_image

from cxrsem_example.mask_folder import MaskFolderWarning

pytestmark = pytest.mark.usefixtures("example")

W, H = 40, 20  # non-square on purpose: the image and its masks are stretched to a square


@pytest.fixture
def root(tmp_path, write_png):
    """images a (40x20 PNG), b (40x20 PNG), c (JPEG); masks: lung for a and b, heart for a only."""
    root = tmp_path / "masks-data"
    rng = np.random.default_rng(0)
    for stem, suffix in (("a", ".png"), ("b", ".png"), ("c", ".jpg")):
        write_png(root / "images" / f"{stem}{suffix}", rng.integers(0, 256, (H, W)))
    box = np.zeros((H, W), dtype=bool)
    box[1:5, 12:30] = True  # rows 1-4, columns 12-29
    write_png(root / "masks" / "lung" / "a.png", box)
    write_png(root / "masks" / "lung" / "b.png", np.ones((H, W), dtype=bool))
    thin = np.zeros((H, W), dtype=bool)
    thin[12, 3] = True  # one pixel, between the cell centres of a 4x4 grid
    write_png(root / "masks" / "heart" / "a.png", thin)
    return root


def create(root, mask_size=4, image_size=16):
    return cxrsem.create_concept_set("mask-folder", image_size=image_size, mask_size=mask_size,
                                     data_roots={"mask-folder": root})


def test_registered_as_a_mask_concept_set():
    info = cxrsem.plugins.get_concept_set("mask-folder")
    assert info.needs_root


def test_items_honour_the_concept_set_contract(root):
    cs = create(root)
    assert cs.concepts == ["heart", "lung"]  # sub-folder names, sorted
    assert len(cs) == 3
    seen = dict.fromkeys(cs.concepts, 0)
    for i in range(len(cs)):
        item = cs[i]
        assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
        assert 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
        assert item["masks"].shape == (2, 4, 4) and item["masks"].dtype == torch.bool
        for concept, channel in zip(cs.concepts, item["masks"], strict=True):
            seen[concept] += bool(channel.any())
    assert [cs[i]["id"] for i in range(3)] == ["a", "b", "c"]
    assert torch.equal(cs[0]["image"], load_image(root / "images" / "a.png", 16))
    assert not cs[2]["masks"].any()  # c has no masks: empty channels, still an item
    assert seen == cs.concept_counts() == {"heart": 1, "lung": 2}
    assert cs.describe().startswith("mask-folder: 3 images, 2 concepts")


def test_masks_are_sampled_at_cell_centres_of_the_stretched_image(root):
    # 4x4 grid over a 40x20 image: cell centres at x = 5, 15, 25, 35 and y = 2.5, 7.5, 12.5, 17.5.
    # The box covers x in [12, 30) and y in [1, 5): centres x = 15, 25 and y = 2.5.  (Sampling at
    # the cells' corners instead, x = 0, 10, 20, 30 and y = 0, 5, ..., would find nothing.)
    lung_a = create(root)[0]["masks"][1]
    assert lung_a.tolist() == [[False, True, True, False]] + [[False] * 4] * 3
    # At 8x8 (centres x = 2.5, 7.5, 12.5, ... and y = 1.25, 3.75, 6.25, ...): columns 2-5, rows 0-1.
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:2, 2:6] = True
    assert torch.equal(create(root, mask_size=8)[0]["masks"][1], expected)


def test_an_annotation_thinner_than_a_cell_is_kept(root):
    # Pixel (x=3, y=12) misses every centre; it lies in cell column 3*4/40 = 0, row 12*4/20 = 2.
    heart_a = create(root)[0]["masks"][0]
    assert heart_a.nonzero().tolist() == [[2, 0]]


def test_masks_without_an_image_give_one_warning(root, write_png):
    write_png(root / "masks" / "lung" / "zz.png", np.ones((H, W), dtype=bool))
    write_png(root / "masks" / "heart" / "yy.png", np.ones((H, W), dtype=bool))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cs = create(root)
    messages = [str(w.message) for w in caught if w.category is MaskFolderWarning]
    assert len(messages) == 1
    assert messages[0].startswith("mask-folder: 2 masks in ")
    assert messages[0].endswith("were ignored: heart/yy.png, lung/zz.png")
    assert len(cs) == 3


def test_missing_layout_is_a_data_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks not found; expected ROOT/images/<stem>\.png and"):
        create(tmp_path)
