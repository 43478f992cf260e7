"""Chance baselines (cxrsem.statistics.nulls, cxrsem.dissection.nulls) against naive NumPy oracles
and hand computations: the pairing, the permuted intersections, the expected IoU, the p-values
and their Benjamini-Hochberg adjustment, the released code's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrsem.dissection.nulls import ShuffledNull, definitions_summary
from cxrsem.dissection.run import DissectSettings, merge_concepts
from cxrsem.dissection.tally import IoUTally
from cxrsem.errors import UsageError
from cxrsem.statistics.nulls import (
    benjamini_hochberg,
    empirical_p,
    identity_partners,
    parse_null,
    random_rotation,
    shuffled_partners,
)
from tests.bootstrap_fixtures import masks


def _tallied(units: np.ndarray, labels: np.ndarray, partners: np.ndarray, batch: int = 7):
    """Tally unit masks given directly (activations at the seg size, T = 0.5: the upsampling is
    the identity and M_k = the given mask) with the shuffled null fed from the tally's masks."""
    n, k = units.shape[:2]
    tally = IoUTally.zeros(k, labels.shape[1])
    null = ShuffledNull.create(k, torch.from_numpy(labels), partners)
    thresholds = torch.full((k,), 0.5, dtype=torch.float64)
    for start in range(0, n, batch):
        acts = torch.from_numpy(units[start:start + batch].astype(np.float32))
        null.update(tally.update(acts, thresholds, torch.from_numpy(labels[start:start + batch]),
                                 image_offset=start))
    return tally, null


def test_the_pairing_is_a_seeded_derangement_within_each_concept():
    _, labels = masks(1, n=40)
    present = labels.reshape(40, 3, -1).any(axis=2)
    partners = shuffled_partners(present, 25, seed=3)
    assert partners.shape == (25, 3, 40)
    np.testing.assert_array_equal(partners, shuffled_partners(present, 25, seed=3))
    assert not np.array_equal(partners, shuffled_partners(present, 25, seed=4))
    for c in range(3):
        holders = np.flatnonzero(present[:, c])
        assert (partners[:, c, ~present[:, c]] == -1).all()
        for p in range(25):
            row = partners[p, c, holders]
            assert sorted(row) == sorted(holders)          # a permutation of the holders
            assert (row != holders).all()                    # nobody keeps its own mask
    lonely = np.zeros((5, 1), dtype=bool)
    lonely[2] = True
    assert (shuffled_partners(lonely, 3, seed=0)[:, 0, 2] == 2).all()  # no one else to pair with


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuted_intersections_equal_the_naive_oracle(seed):
    units, labels = masks(seed, n=23, k=6, c=3, size=8)
    present = labels.reshape(23, 3, -1).any(axis=2)
    partners = shuffled_partners(present, 9, seed=seed)
    tally, null = _tallied(units, labels, partners)
    oracle = np.zeros((9, 6, 3), dtype=np.int64)
    for p in range(9):
        for c in range(3):
            for x in np.flatnonzero(present[:, c]):
                partner = labels[partners[p, c, x], c]
                oracle[p, :, c] += (units[x] & partner[None]).reshape(6, -1).sum(axis=1)
    np.testing.assert_array_equal(null.intersection.numpy(), oracle)
    # The union's terms are unchanged: the partners hold the concept too.
    union = tally.unit_area.numpy() + tally.label_area.numpy()[None] - oracle
    expected = np.where(union > 0, oracle / np.maximum(union, 1), 0.0)
    np.testing.assert_allclose(null.null_iou(tally), expected, rtol=1e-15)


def test_the_identity_pairing_reproduces_the_real_ious_exactly():
    units, labels = masks(5, n=19, k=4)
    present = labels.reshape(19, 3, -1).any(axis=2)
    tally, null = _tallied(units, labels, identity_partners(present, 2))
    for p in range(2):
        np.testing.assert_array_equal(null.intersection[p].numpy(), tally.intersection.numpy())
        np.testing.assert_array_equal(null.null_iou(tally)[p], tally.iou())


def test_expected_intersection_is_the_mean_over_the_other_images():
    units, labels = masks(7, n=17, k=5)
    present = labels.reshape(17, 3, -1).any(axis=2)
    tally, null = _tallied(units, labels, identity_partners(present))
    oracle = np.zeros((5, 3))
    for c in range(3):
        holders = np.flatnonzero(present[:, c])
        for x in holders:
            others = [y for y in holders if y != x]
            overlaps = [(units[x] & labels[y, c][None]).reshape(5, -1).sum(axis=1) for y in others]
            oracle[:, c] += np.mean(overlaps, axis=0)
    np.testing.assert_allclose(null.expected_intersection(tally), oracle, rtol=1e-12)


def test_empirical_p_and_benjamini_hochberg_by_hand():
    # observed 0.5 against nulls [0.1, 0.5, 0.7]: two draws >= 0.5 -> (1 + 2) / (1 + 3)
    np.testing.assert_allclose(empirical_p([0.5, 0.9], [[0.1, 0.2], [0.5, 0.3], [0.7, 0.4]]),
                               [0.75, 0.25])
    # p = 0.01, 0.04, 0.03, 0.2 (m = 4): sorted 0.01, 0.03, 0.04, 0.2 -> x4/1, x4/2, x4/3, x4/4 =
    # 0.04, 0.06, 0.0533, 0.2; step-up minimum from the right: 0.04, 0.0533, 0.0533, 0.2.
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.2]),
                               [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.8]), [0.9, 0.9])
    assert benjamini_hochberg([]).size == 0


def test_random_rotations_are_orthogonal_and_seeded():
    q = random_rotation(12, seed=4)
    np.testing.assert_allclose(q @ q.T, np.eye(12), atol=1e-12)
    np.testing.assert_array_equal(q, random_rotation(12, seed=4))
    assert not np.allclose(q, random_rotation(12, seed=5))


def test_merge_concepts_keeps_the_highest_concept_of_each_pixel():
    labels = torch.zeros(1, 3, 2, 3, dtype=torch.bool)
    labels[0, 0] = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    labels[0, 1] = torch.tensor([[0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    labels[0, 2] = torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    # The label map max(c + 1) is [[1, 2, 3], [2, 3, 0]]: each pixel for its highest concept.
    merged = merge_concepts(labels)[0].int().tolist()
    assert merged == [[[1, 0, 0], [0, 0, 0]], [[0, 1, 0], [1, 0, 0]], [[0, 0, 1], [0, 1, 0]]]


def test_iou_over_all_images_by_hand():
    """3 images of 4 pixels; the concept on images 0 and 1 only.  Unit mask areas 2, 1, 3;
    intersections 1, 1, 0; label areas 2, 1, 0.  Paper (images holding c): 2 / ((2+1) + (2+1) - 2)
    = 0.5.  Released code (all images): 2 / ((2+1+3) + 3 - 2) = 2/7."""
    units = np.zeros((3, 1, 2, 2), dtype=bool)
    units[0, 0] = [[1, 1], [0, 0]]
    units[1, 0] = [[0, 0], [0, 1]]
    units[2, 0] = [[1, 1], [1, 0]]
    labels = np.zeros((3, 1, 2, 2), dtype=bool)
    labels[0, 0] = [[1, 0], [1, 0]]
    labels[1, 0] = [[0, 0], [0, 1]]
    tally = IoUTally.zeros(1, 1)
    tally.update(torch.from_numpy(units.astype(np.float32)), torch.tensor([0.5], dtype=torch.float64),
                 torch.from_numpy(labels), all_images=True)
    assert tally.iou()[0, 0] == pytest.approx(0.5)
    assert tally.iou("all")[0, 0] == pytest.approx(2 / 7)


def test_definitions_summary_names_the_units_that_move():
    settings = DissectSettings(iou_over="all")
    here = np.array([[0.05, 0.0], [0.01, 0.02], [0.0, 0.09]])
    paper = np.array([[0.06, 0.0], [0.05, 0.01], [0.10, 0.0]])
    block = definitions_summary(here, paper, ["a", "b"], settings)
    assert block["paper_num_detectors"] == 3 and block["paper_detectors"] == {"a": 3, "b": 0}
    assert block["only_paper"] == [1] and block["only_this"] == [] and block["relabelled"] == [2]


@pytest.mark.parametrize("spec, expected", [("shuffle", ("shuffle", 100)),
                                            ("random-init", ("random-init", 5)),
                                            ("rotation:3", ("rotation", 3))])
def test_null_specs(spec, expected):
    assert parse_null(spec) == expected


@pytest.mark.parametrize("spec", ["shufle", "rotation:x", "random-init:0", "rotation:-1"])
def test_bad_null_specs_say_what_is_allowed(spec):
    with pytest.raises(UsageError):
        parse_null(spec)


def test_two_halves_of_the_shuffled_null_merge_to_one_pass():
    units, labels = masks(9, n=26, k=4)
    present = labels.reshape(26, 3, -1).any(axis=2)
    partners = shuffled_partners(present, 6, seed=1)
    _, whole = _tallied(units, labels, partners)
    halves = []
    for rows in (slice(0, 13), slice(13, 26)):
        tally = IoUTally.zeros(4, 3)
        null = ShuffledNull.create(4, torch.from_numpy(labels), partners)
        start = rows.start
        null.update(tally.update(torch.from_numpy(units[rows].astype(np.float32)),
                                 torch.full((4,), 0.5, dtype=torch.float64),
                                 torch.from_numpy(labels[rows]), image_offset=start))
        halves.append(null)
    merged = halves[0].merge(halves[1])
    np.testing.assert_array_equal(merged.intersection.numpy(), whole.intersection.numpy())
    np.testing.assert_array_equal(merged.pooled.numpy(), whole.pooled.numpy())
    restored = ShuffledNull.create(4, torch.from_numpy(labels), partners).load_sums(merged.state_dict())
    np.testing.assert_array_equal(restored.intersection.numpy(), whole.intersection.numpy())
