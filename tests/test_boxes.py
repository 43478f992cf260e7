"""Box annotations: the ``annotation`` field of concept sets, which channels are boxes, and the
inside fraction / max reachable IoU of :mod:`cxrsem.statistics.boxes` against a naive oracle and a
hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from bootstrap_fixtures import masks, naive_iou, stats_of

import cxrsem
from cxrsem import hookimpl
from cxrsem.components import ANNOTATIONS, ConceptSetInfo
from cxrsem.dissection.concepts import build_concept_source
from cxrsem.errors import UsageError
from cxrsem.plugins import get_concept_set
from cxrsem.statistics.boxes import box_fit, box_fit_all

PHANTOMS = {"phantom": {"n_images": 4}, "phantom-bbox": {"n_images": 4}}


# -- the oracle ---------------------------------------------------------------------------------
def naive_box_fit(units: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray,
                                                                                        np.ndarray]:
    """The definitions image by image: sums over the images containing c, image x counted
    weights[x] times."""
    n, k = units.shape[:2]
    c = labels.shape[1]
    inside, max_iou = np.zeros((k, c)), np.zeros((k, c))
    for u in range(k):
        for j in range(c):
            hit = area = low = high = 0
            for x in range(n):
                box = int(labels[x, j].sum())
                if not box:
                    continue
                a = int(units[x, u].sum())
                hit += weights[x] * int((units[x, u] & labels[x, j]).sum())
                area += weights[x] * a
                low += weights[x] * min(a, box)
                high += weights[x] * max(a, box)
            inside[u, j] = hit / area if area else 0.0
            max_iou[u, j] = low / high if high else 0.0
    return inside, max_iou


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_concept_matches_the_naive_oracle(seed):
    units, labels = masks(seed)
    inside, max_iou = box_fit_all(stats_of(units, labels))
    expected_inside, expected_max = naive_box_fit(units, labels, np.ones(len(units), dtype=int))
    np.testing.assert_allclose(inside, expected_inside, rtol=0, atol=1e-12)
    np.testing.assert_allclose(max_iou, expected_max, rtol=0, atol=1e-12)


def test_one_concept_per_unit_and_weighted_images_match_the_oracle():
    units, labels = masks(3, p_concept=0.4)
    stats = stats_of(units, labels)
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 4, size=len(units))
    concept = rng.integers(0, labels.shape[1], size=units.shape[1])
    inside, max_iou = box_fit(stats, concept, weights)
    expected_inside, expected_max = naive_box_fit(units, labels, weights)
    rows = np.arange(len(concept))
    np.testing.assert_allclose(inside, expected_inside[rows, concept], rtol=0, atol=1e-12)
    np.testing.assert_allclose(max_iou, expected_max[rows, concept], rtol=0, atol=1e-12)
    assert inside.dtype == max_iou.dtype == np.float64


@pytest.mark.parametrize("seed", [4, 5])
def test_no_unit_beats_its_max_reachable_iou(seed):
    units, labels = masks(seed)
    _, max_iou = box_fit_all(stats_of(units, labels))
    iou = naive_iou(units, labels, np.ones(len(units), dtype=int))
    assert (iou <= max_iou + 1e-12).all()


# -- by hand ------------------------------------------------------------------------------------
def two_images() -> tuple[np.ndarray, np.ndarray]:
    """4 x 4 masks, 2 units, 2 concepts.

    image 0: c0 = rows 0-1 x cols 0-1 (4 px), c1 absent;
             unit 0 = row 0 (4 px, 2 inside c0), unit 1 silent.
    image 1: c0 = rows 0-2 x cols 0-2 (9 px), c1 = row 3 (4 px);
             unit 0 = pixel (0, 0) (1 px, inside c0), unit 1 = rows 2-3 (8 px: 3 inside c0, 4 in c1).
    """
    units = np.zeros((2, 2, 4, 4), dtype=bool)
    labels = np.zeros((2, 2, 4, 4), dtype=bool)
    labels[0, 0, :2, :2] = True
    units[0, 0, 0, :] = True
    labels[1, 0, :3, :3] = True
    labels[1, 1, 3, :] = True
    units[1, 0, 0, 0] = True
    units[1, 1, 2:, :] = True
    return units, labels


def test_a_hand_computed_two_image_case():
    inside, max_iou = box_fit_all(stats_of(*two_images()))
    expected_inside = [[(2 + 1) / (4 + 1),   # unit 0, c0: both images
                        0 / 1],              # unit 0, c1: image 1 only, its pixel is outside
                       [(0 + 3) / (0 + 8),   # unit 1, c0: silent on image 0
                        4 / 8]]
    expected_max = [[(min(4, 4) + min(1, 9)) / (max(4, 4) + max(1, 9)),   # 5 / 13
                     min(1, 4) / max(1, 4)],                              # 1 / 4
                    [(0 + min(8, 9)) / (max(0, 4) + max(8, 9)),           # silent: adds 0 and 4 -> 8 / 13
                     min(8, 4) / max(8, 4)]]                              # 1 / 2
    np.testing.assert_allclose(inside, [[0.6, 0.0], [0.375, 0.5]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(inside, expected_inside, rtol=0, atol=1e-15)
    np.testing.assert_allclose(max_iou, [[5 / 13, 0.25], [8 / 13, 0.5]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(max_iou, expected_max, rtol=0, atol=1e-15)
    best_inside, best_max = box_fit(stats_of(*two_images()), np.array([0, 1]))
    np.testing.assert_allclose(best_inside, [0.6, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(best_max, [5 / 13, 0.5], rtol=0, atol=1e-15)


def test_a_silent_unit_and_an_absent_concept_give_zero():
    units, labels = two_images()
    units = np.concatenate([units, np.zeros_like(units[:, :1])], axis=1)      # unit 2 never fires
    labels = np.concatenate([labels, np.zeros_like(labels[:, :1])], axis=1)   # concept 2 in no image
    inside, max_iou = box_fit_all(stats_of(units, labels))
    assert (inside[2] == 0).all() and (max_iou[2] == 0).all()
    assert (inside[:, 2] == 0).all() and (max_iou[:, 2] == 0).all()
    assert np.isfinite(inside).all() and np.isfinite(max_iou).all()


def test_images_with_no_concept_change_nothing():
    units, labels = two_images()
    empty_units = np.ones_like(units[:1])   # fires everywhere, on an image that holds no concept
    more = stats_of(np.concatenate([units, empty_units]), np.concatenate([labels, np.zeros_like(labels[:1])]))
    for got, expected in zip(box_fit_all(more), box_fit_all(stats_of(units, labels)), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_bad_concept_indices_are_refused():
    stats = stats_of(*two_images())
    with pytest.raises(UsageError, match="one integer concept index per unit"):
        box_fit(stats, np.array([0]))
    with pytest.raises(UsageError, match="0..1"):
        box_fit(stats, np.array([0, 2]))
    with pytest.raises(UsageError, match="weights"):
        box_fit(stats, np.array([0, 1]), weights=np.ones(3))


# -- which sets and channels are boxes -----------------------------------------------------------
def test_the_built_in_box_sets_declare_boxes_and_every_set_a_known_kind():
    kinds = {name: get_concept_set(name).annotation for name in cxrsem.list_concept_sets()}
    assert set(kinds.values()) <= set(ANNOTATIONS)
    assert kinds["nih-bbox"] == kinds["phantom-bbox"] == "boxes"
    assert kinds["phantom"] == kinds["covid-seg"] == "masks"


def test_an_unknown_annotation_kind_is_refused():
    with pytest.raises(ValueError, match="annotation must be one of masks, boxes"):
        ConceptSetInfo(name="odd", factory=lambda **_: None, annotation="polygons")


def source(names, **kw):
    return build_concept_source(names, image_size=32, mask_size=16, seed=0, **kw)


def test_box_concepts_are_exactly_the_box_sets_channels():
    both = source(["phantom", "phantom-bbox"], options=PHANTOMS)
    flags = both.box_concepts()
    assert len(flags) == len(both.concepts)
    box_channels = set(both.channel_maps[1])
    assert box_channels and all(both.concepts[i].startswith("phantom-bbox/") for i in box_channels)
    assert flags == [i in box_channels for i in range(len(both.concepts))]
    assert both.annotations == ["masks", "boxes"]


def test_a_channel_merged_from_a_box_set_and_a_mask_set_counts_as_masks():
    merged = source(["phantom", "phantom-bbox"], options=PHANTOMS,
                    concept_map={"phantom/Nodule": "Nodule", "phantom-bbox/Nodule": "Nodule",
                                 "phantom-bbox/Mass": "Lump"})
    flags = dict(zip(merged.concepts, merged.box_concepts(), strict=True))
    assert flags["Nodule"] is False      # outlines and boxes mixed
    assert flags["Lump"] is True         # renamed, still only boxes
    assert flags["phantom-bbox/Atelectasis"] is True and flags["Left Lung"] is False


def test_a_third_party_set_without_the_field_has_masks(register_plugin):
    from cxrsem.testing import ToyBlobs

    class Plugin:
        @staticmethod
        @hookimpl
        def register_concept_sets(register):
            register(ConceptSetInfo(name="blobs-3p", factory=lambda image_size, mask_size, root, seed:
                                    ToyBlobs(image_size, mask_size, seed, n_images=3)))

    register_plugin(Plugin(), "blobs-plugin")
    assert get_concept_set("blobs-3p").annotation == "masks"
    mixed = source(["blobs-3p", "phantom-bbox"], options={"phantom-bbox": {"n_images": 4}})
    assert mixed.box_concepts() == [False] * 3 + [True] * 8


def test_a_source_built_by_hand_without_annotations_is_all_masks():
    both = source(["phantom", "phantom-bbox"], options=PHANTOMS)
    both.annotations = []
    assert not any(both.box_concepts())
