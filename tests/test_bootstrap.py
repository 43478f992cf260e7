"""Bootstrap over per-image sufficient statistics (cxrsem.statistics.bootstrap), against a naive
NumPy oracle of Eq. 5 on random masks, and the hand-computable cases the method must get right."""

from __future__ import annotations

import numpy as np
import pytest

from cxrsem.statistics.bootstrap import (
    holm,
    interval,
    p_value,
    resample,
    resample_weights,
    same_images,
)
from cxrsem.statistics.imagestats import ImageStats
from tests.bootstrap_fixtures import masks, naive_iou, stats_of


def test_resampled_ious_equal_the_naive_oracle_for_every_weighting():
    units, labels = masks(0)
    stats = stats_of(units, labels)
    weights = resample_weights(stats.groups, 7, seed=1)
    weights[0] = 1  # the identity resample: the point estimate
    result = resample(stats, weights, threshold=0.1)
    for b in range(len(weights)):
        oracle = naive_iou(units, labels, weights[b])
        np.testing.assert_allclose(result.best_iou[b], oracle.max(axis=1), rtol=1e-12)
        np.testing.assert_array_equal(result.best_concept[b], oracle.argmax(axis=1))
        detectors = oracle.max(axis=1) > 0.1
        assert result.detector[b].tolist() == detectors.tolist()
        expected = np.bincount(oracle.argmax(axis=1)[detectors], minlength=labels.shape[1])
        assert result.counts[b].tolist() == expected.tolist()


def test_weights_draw_groups_with_replacement():
    groups = np.array([0, 0, 1, 2, 2, 2])
    weights = resample_weights(groups, 200, seed=0)
    assert weights.shape == (200, 6)
    # Images of one patient always share their weight; three patients are drawn per resample.
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    per_group = weights[:, [0, 2, 3]]
    assert (per_group.sum(axis=1) == 3).all()
    np.testing.assert_array_equal(weights, resample_weights(groups, 200, seed=0))  # seeded
    assert not np.array_equal(weights, resample_weights(groups, 200, seed=1))


def test_a_unit_that_is_the_concept_mask_is_always_its_detector():
    units, labels = masks(2, k=2, c=2)
    units[:, 0] = labels[:, 1]  # unit 0 fires exactly on concept 1
    units[:, 1] = np.random.default_rng(3).random(units[:, 1].shape) < 0.5  # noise
    stats = stats_of(units, labels)
    result = resample(stats, resample_weights(stats.groups, 300, seed=0), threshold=0.04)
    low, high = interval(result.best_iou[:, 0])
    assert 0.9 <= low <= high <= 1.0
    assert result.detector[:, 0].mean() == 1.0 and (result.best_concept[:, 0] == 1).all()
    point = resample(stats, np.ones((1, stats.num_images)), threshold=0.04)
    low, high = interval(result.best_iou[:, 1])
    assert low <= point.best_iou[0, 1] <= high  # the noise unit's interval holds its estimate
    assert result.detector[:, 1].mean() == pytest.approx(float(point.detector[0, 1]), abs=0.05)


def test_a_model_compared_with_itself_differs_by_nothing():
    units, labels = masks(4)
    stats = stats_of(units, labels)
    weights = resample_weights(stats.groups, 100, seed=5)
    a, b = resample(stats, weights), resample(stats, weights)
    assert same_images(stats, stats) is None
    difference = a.counts - b.counts
    assert (difference == 0).all() and p_value(a.total - b.total) == 1.0
    low, high = interval(difference)
    assert (low == 0).all() and (high == 0).all()


def test_patient_grouping_is_what_duplicated_images_need():
    units, labels = masks(6, n=40)
    stats = stats_of(units, labels)
    # Every image twice, both copies of one patient.
    twice = stats_of(np.concatenate([units, units]), np.concatenate([labels, labels]),
                     groups=np.concatenate([np.arange(40), np.arange(40)]))
    ungrouped = stats_of(np.concatenate([units, units]), np.concatenate([labels, labels]))
    w = resample_weights(stats.groups, 400, seed=7)
    base = resample(stats, w, threshold=0.05)
    grouped = resample(twice, resample_weights(twice.groups, 400, seed=7), threshold=0.05)
    # Grouped by patient, the duplicates change nothing: the same draws, every sum doubled.
    np.testing.assert_allclose(grouped.best_iou, base.best_iou, rtol=1e-12)
    assert np.array_equal(grouped.counts, base.counts)
    # Taken as independent images, they pretend to twice the data: narrower intervals.
    loose = resample(ungrouped, resample_weights(ungrouped.groups, 400, seed=7), threshold=0.05)
    width = lambda r: np.subtract(*interval(r.best_iou)[::-1]).mean()  # noqa: E731
    assert width(loose) < 0.85 * width(base)


def test_p_value_and_holm_by_hand():
    assert p_value(np.array([1, 2, 3, 4])) == 0.0
    assert p_value(np.array([-1, 1, 2, 3])) == 0.5       # 2 * min(1/4, 3/4)
    assert p_value(np.array([0, 0, 0])) == 1.0
    # Holm: sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04).
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_unpaired_statistics_are_named():
    units, labels = masks(8)
    other_units, other_labels = masks(9)
    assert "images" in (same_images(stats_of(units, labels), stats_of(units[:10], labels[:10])))
    assert "annotations" in same_images(stats_of(units, labels),
                                        stats_of(other_units, other_labels))


def test_image_stats_round_trip_and_tally(tmp_path):
    units, labels = masks(10)
    stats = stats_of(units, labels)
    loaded = ImageStats.load(stats.save(tmp_path / "s.npz"))
    for name in ("label_area", "mask_image", "inter_value", "groups"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
    intersection, unit_area, label_area, images_with = stats.tally()
    present = labels.reshape(len(labels), labels.shape[1], -1).any(axis=2)
    for u in range(units.shape[1]):
        for j in range(labels.shape[1]):
            rows = present[:, j]
            assert intersection[u, j] == (units[rows, u] & labels[rows, j]).sum()
            assert unit_area[u, j] == units[rows, u].sum()
    assert label_area.tolist() == labels.sum(axis=(0, 2, 3)).tolist()
    assert images_with.tolist() == present.sum(axis=0).tolist()


def test_summary_of_one_identity_resample_is_the_point_estimate():
    from cxrsem.statistics.bootstrap import summarize

    units, labels = masks(11)
    stats = stats_of(units, labels)
    point = resample(stats, np.ones((1, stats.num_images)), threshold=0.1)
    block, per_unit = summarize(stats, resamples=50, seed=0, threshold=0.1, group_by="image")
    assert block["num_detectors"]["count"] == point.total[0]  # the estimate is the full set's
    assert block["num_detectors"]["low"] <= block["num_detectors"]["high"]
    for j, concept in enumerate(stats.concepts):
        assert block["detectors"][concept]["count"] == point.counts[0, j]
    assert len(per_unit) == stats.num_units
    assert all(0.0 <= u["p_detector"] <= 1.0 and u["iou_interval"][0] <= u["iou_interval"][1]
               for u in per_unit)
    # One image, one group: every resample is the identity, so the interval is the point.
    one = stats_of(units[:1], labels[:1])
    block, per_unit = summarize(one, resamples=5, threshold=0.1)
    single = resample(one, np.ones((1, 1)), threshold=0.1)
    assert block["num_detectors"] == {"count": single.total[0], "low": single.total[0],
                                      "high": single.total[0]}
    assert [u["p_detector"] for u in per_unit] == single.detector[0].astype(float).tolist()
