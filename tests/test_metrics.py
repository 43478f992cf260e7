"""Validation metrics against hand-computed values and naive (sklearn-free) references."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from cxrsem.errors import UsageError
from cxrsem.training.metrics import compute_metrics, primary_metric


def pairwise_auroc(scores, labels) -> float:
    """AUROC as P(score of a positive > score of a negative), ties counting 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def f1_by_hand(logits, labels) -> float:
    pred = [1 if z > 0 else 0 for z in logits]  # sigmoid(z) > 0.5  <=>  z > 0
    tp = sum(p == 1 and y == 1 for p, y in zip(pred, labels, strict=True))
    fp = sum(p == 1 and y == 0 for p, y in zip(pred, labels, strict=True))
    fn = sum(p == 0 and y == 1 for p, y in zip(pred, labels, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def assert_json_floats(metrics: dict):
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    json.dumps(metrics, allow_nan=False)


def test_primary_metrics():
    assert primary_metric("multilabel") == ("auroc_mean", "max")
    assert primary_metric("binary") == ("auroc", "max")
    assert primary_metric("global-score") == ("mae", "min")
    assert primary_metric("zones") == ("mae_mean", "min")
    with pytest.raises(UsageError):
        primary_metric("segmentation")


def test_auroc_tiny_example_by_hand():
    # pairs (positive, negative): .35>.1 yes, .35>.4 no, .8>.1 yes, .8>.4 yes -> 3/4
    probs = torch.tensor([0.1, 0.4, 0.35, 0.8])
    logits = torch.log(probs / (1 - probs))[:, None]
    m = compute_metrics("binary", logits, torch.tensor([[0.0], [0.0], [1.0], [1.0]]), ["sick"])
    assert m["auroc"] == pytest.approx(0.75)
    # predictions at 0.5: [0, 0, 0, 1] vs [0, 0, 1, 1]: tp 1, fn 1 -> F1 2/3, accuracy 3/4
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["auroc_undefined"] == 0.0
    assert_json_floats(m)


def test_multilabel_against_pairwise_reference_with_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, (40, 3), generator=g).float()  # many ties
    targets = (torch.rand(40, 3, generator=g) < 0.4).float()
    names = ["Atelectasis", "Edema", "Pneumonia"]
    m = compute_metrics("multilabel", logits, targets, names)
    aurocs, f1s = [], []
    for c, name in enumerate(names):
        ref = pairwise_auroc(logits[:, c].tolist(), targets[:, c].long().tolist())
        f1 = f1_by_hand(logits[:, c].tolist(), targets[:, c].long().tolist())
        assert m[f"auroc/{name}"] == pytest.approx(ref, abs=1e-6)
        assert m[f"f1/{name}"] == pytest.approx(f1, abs=1e-6)
        aurocs.append(ref)
        f1s.append(f1)
    assert m["auroc_mean"] == pytest.approx(sum(aurocs) / 3, abs=1e-6)
    assert m["f1_mean"] == pytest.approx(sum(f1s) / 3, abs=1e-6)
    assert m["auroc_undefined"] == 0.0
    assert_json_floats(m)


def test_multilabel_skips_single_valued_class():
    logits = torch.tensor([[2.0, 1.0], [-1.0, -2.0], [0.5, 3.0], [-0.5, 0.2]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # B: no positive
    m = compute_metrics("multilabel", logits, targets, ["A", "B"])
    assert "auroc/B" not in m
    assert m["auroc_undefined"] == 1.0
    assert m["auroc/A"] == pytest.approx(1.0)
    assert m["auroc_mean"] == pytest.approx(1.0)
    # F1 of A: predictions [1,0,1,0] == targets -> 1; B is reported but left out of the mean
    assert m["f1/A"] == pytest.approx(1.0)
    assert m["f1/B"] == 0.0
    assert m["f1_mean"] == pytest.approx(1.0)
    assert_json_floats(m)


def test_multilabel_respects_target_mask():
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-0.5], [9.0]])
    targets = torch.tensor([[1.0], [0.0], [0.0], [1.0], [-1.0]])
    mask = torch.tensor([[True], [True], [True], [True], [False]])
    m = compute_metrics("multilabel", logits, targets, ["A"], mask)
    ref = pairwise_auroc([2.0, -1.0, 0.5, -0.5], [1, 0, 0, 1])
    assert m["auroc/A"] == pytest.approx(ref)
    assert m["f1/A"] == pytest.approx(f1_by_hand([2.0, -1.0, 0.5, -0.5], [1, 0, 0, 1]))


def test_binary_single_label_value_omits_auroc():
    m = compute_metrics("binary", torch.tensor([[1.0], [-1.0]]), torch.ones(2, 1), ["sick"])
    assert "auroc" not in m and m["auroc_undefined"] == 1.0
    assert m["accuracy"] == pytest.approx(0.5)
    assert_json_floats(m)


def test_global_score_mae_and_pearson():
    pred = [1.0, 4.0, 6.0, 10.0]
    true = [2.0, 4.0, 5.0, 13.0]
    m = compute_metrics("global-score", torch.tensor(pred)[:, None], torch.tensor(true)[:, None],
                        ["global"])
    assert m["mae"] == pytest.approx((1 + 0 + 1 + 3) / 4)
    assert m["pearson"] == pytest.approx(float(np.corrcoef(pred, true)[0, 1]), abs=1e-6)
    assert_json_floats(m)


def test_global_score_constant_predictions_have_zero_pearson():
    m = compute_metrics("global-score", torch.full((5, 1), 3.0), torch.arange(5.0)[:, None],
                        ["global"])
    assert m["pearson"] == 0.0
    assert m["mae"] == pytest.approx((3 + 2 + 1 + 0 + 1) / 5)
    assert_json_floats(m)


def test_global_score_mask():
    m = compute_metrics("global-score", torch.tensor([[1.0], [5.0], [0.0]]),
                        torch.tensor([[2.0], [5.0], [float("nan")]]), ["global"],
                        torch.tensor([[True], [True], [False]]))
    assert m["mae"] == pytest.approx(0.5)


ZONES = ["A", "B", "C", "D", "E", "F"]


def test_zones_by_hand():
    # every zone's softmax is [.1, .2, .3, .4]: expected score 2.0, argmax class 3
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat(2, 6)
    targets = torch.tensor([[0, 1, 2, 3, 3, 2], [3, 3, 3, 0, 1, 2]])
    m = compute_metrics("zones", logits, targets, ZONES)
    for z, name in enumerate(ZONES):
        ys = targets[:, z].tolist()
        assert m[f"mae/{name}"] == pytest.approx(sum(abs(y - 2.0) for y in ys) / 2, abs=1e-5)
        assert m[f"accuracy/{name}"] == pytest.approx(sum(y == 3 for y in ys) / 2)
    # |y - 2| per zone: sample 1 -> 2,1,0,1,1,0; sample 2 -> 1,1,1,2,1,0
    assert m["mae_mean"] == pytest.approx((5 + 6) / 12, abs=1e-5)
    assert m["accuracy_mean"] == pytest.approx(5 / 12)  # class 3: zones D, E of 1; A, B, C of 2
    # global: predicted 12 for both; true sums 11 and 12
    assert m["global_mae"] == pytest.approx((1 + 0) / 2, abs=1e-5)
    assert_json_floats(m)


def test_zones_mask_drops_unknown_zones_and_incomplete_samples_from_global():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat(2, 6)
    targets = torch.tensor([[0, 1, 2, 3, 3, 2], [3, 3, 3, 0, 1, -1]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 5] = False
    m = compute_metrics("zones", logits, targets, ZONES, mask)
    assert m["mae/F"] == pytest.approx(0.0, abs=1e-5)  # only sample 1, target 2 == expected 2
    assert m["global_mae"] == pytest.approx(1.0, abs=1e-5)  # only sample 1: |12 - 11|


def test_shape_and_kind_errors():
    with pytest.raises(UsageError):
        compute_metrics("zones", torch.zeros(2, 20), torch.zeros(2, 6).long(), ZONES)
    with pytest.raises(UsageError):
        compute_metrics("multilabel", torch.zeros(2, 3), torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(UsageError):
        compute_metrics("regression", torch.zeros(2, 1), torch.zeros(2, 1), ["a"])


@pytest.mark.parametrize("kind", ["multilabel", "binary", "global-score", "zones"])
def test_primary_metric_is_reported(kind):
    g = torch.Generator().manual_seed(1)
    n = 32
    if kind == "multilabel":
        names, logits = ["a", "b"], torch.randn(n, 2, generator=g)
        targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(n // 2, 1)
    elif kind == "binary":
        names, logits = ["sick"], torch.randn(n, 1, generator=g)
        targets = torch.tensor([[1.0], [0.0]]).repeat(n // 2, 1)
    elif kind == "global-score":
        names, logits = ["global"], torch.randn(n, 1, generator=g)
        targets = torch.randint(0, 19, (n, 1), generator=g).float()
    else:
        names, logits = ZONES, torch.randn(n, 24, generator=g)
        targets = torch.randint(0, 4, (n, 6), generator=g)
    m = compute_metrics(kind, logits, targets, names)
    assert primary_metric(kind)[0] in m
    assert_json_floats(m)
