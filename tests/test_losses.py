"""Built-in losses (Eq. 1-4 of Khakzar et al. 2021) against hand-computed values and NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cxrsem
from cxrsem.default_plugins.losses import batch_beta, score_weights
from cxrsem.errors import DataError, UsageError
from cxrsem.plugins import get_registry
from cxrsem.tasks import expected_zone_score


def nlog_sig(z: float) -> float:
    """-log sigmoid(z), written out by hand."""
    return math.log(1.0 + math.exp(-z))


def nlog_one_minus_sig(z: float) -> float:
    """-log(1 - sigmoid(z))."""
    return math.log(1.0 + math.exp(z))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def loss(name: str, **kw):
    return cxrsem.create_loss(name, **kw)


# -- registration ----------------------------------------------------------------------------------


def test_registered_with_tasks_and_options():
    reg = get_registry()
    expected = {
        "bce": ("multilabel", "binary"),
        "weighted-bce": ("multilabel", "binary"),
        "mse": ("global-score",),
        "weighted-mse": ("global-score",),
        "mae-scce": ("zones",),
        "weak-bce": ("binary",),
    }
    for name, tasks in expected.items():
        info = reg.get("loss", name)
        assert info.tasks == tasks, name
        assert info.description
    assert reg.get("loss", "mae-scce").defaults() == {"alpha": 0.7}
    assert reg.get("loss", "weak-bce").defaults() == {"weighted": False}


# -- Eq. 1: BCE ------------------------------------------------------------------------------------


def test_bce_hand_computed_sum_over_classes_mean_over_batch():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sample1 = nlog_sig(0.0) + nlog_one_minus_sig(2.0)
    sample2 = nlog_one_minus_sig(-1.0) + nlog_sig(0.5)
    got = loss("bce")(logits, targets)
    assert got.item() == pytest.approx((sample1 + sample2) / 2, rel=1e-6)


def test_weighted_bce_beta_is_neg_over_pos_per_class_in_batch():
    # class 0: 1 positive / 3 negatives -> beta 3; class 1: 2 / 2 -> beta 1
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert batch_beta(targets, torch.ones_like(targets, dtype=torch.bool)).tolist() == [3.0, 1.0]

    logits = torch.tensor([[0.3, -0.2], [0.1, 1.0], [-0.4, 0.2], [0.6, -1.5]])
    class0 = 3 * nlog_sig(0.3) + nlog_one_minus_sig(0.1) + nlog_one_minus_sig(-0.4) \
        + nlog_one_minus_sig(0.6)
    class1 = nlog_sig(-0.2) + nlog_sig(1.0) + nlog_one_minus_sig(0.2) + nlog_one_minus_sig(-1.5)
    got = loss("weighted-bce")(logits, targets)
    assert got.item() == pytest.approx((class0 + class1) / 4, rel=1e-6)
    # and plain BCE on the same batch weighs the positive by 1
    plain = (nlog_sig(0.3) + nlog_one_minus_sig(0.1) + nlog_one_minus_sig(-0.4)
             + nlog_one_minus_sig(0.6) + class1) / 4
    assert loss("bce")(logits, targets).item() == pytest.approx(plain, rel=1e-6)


def test_weighted_bce_no_positive_in_batch_is_finite():
    logits = torch.tensor([[0.5], [-2.0], [1.0]], requires_grad=True)
    targets = torch.zeros(3, 1)
    got = loss("weighted-bce")(logits, targets)
    expected = (nlog_one_minus_sig(0.5) + nlog_one_minus_sig(-2.0) + nlog_one_minus_sig(1.0)) / 3
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_weighted_bce_all_positive_class_has_beta_zero_as_eq1_defines():
    targets = torch.tensor([[1.0], [1.0]])
    assert batch_beta(targets, torch.ones_like(targets, dtype=torch.bool)).tolist() == [0.0]
    assert loss("weighted-bce")(torch.tensor([[0.2], [-0.3]]), targets).item() == 0.0


def test_bce_target_mask_excludes_labels_and_their_beta():
    # class 0 labels 1,0,0,0 known + one unknown positive: beta must be 3 (not 3/2)
    logits = torch.tensor([[0.3], [0.1], [-0.4], [0.6], [5.0]], requires_grad=True)
    targets = torch.tensor([[1.0], [0.0], [0.0], [0.0], [float("nan")]])
    mask = torch.tensor([[True], [True], [True], [True], [False]])
    got = loss("weighted-bce")(logits, targets, mask)
    expected = (3 * nlog_sig(0.3) + nlog_one_minus_sig(0.1) + nlog_one_minus_sig(-0.4)
                + nlog_one_minus_sig(0.6)) / 4  # 4 samples with a known label
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[4].item() == 0.0
    assert logits.grad[:4].abs().min() > 0


def test_bce_masked_label_in_multilabel_sample():
    logits = torch.tensor([[0.7, -0.3]])
    targets = torch.tensor([[1.0, -1.0]])  # -1: CheXpert "uncertain", masked out
    mask = torch.tensor([[True, False]])
    assert loss("bce")(logits, targets, mask).item() == pytest.approx(nlog_sig(0.7), rel=1e-6)


def test_bce_nothing_known_is_zero_and_backpropagates():
    logits = torch.randn(3, 2, requires_grad=True)
    got = loss("weighted-bce")(logits, torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool))
    assert got.item() == 0.0
    got.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 2))


def test_bce_is_stable_for_huge_logits():
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    got = loss("bce")(logits, torch.tensor([[0.0, 1.0]]))
    assert got.item() == pytest.approx(400.0, rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()


def naive_bce(logits: np.ndarray, targets: np.ndarray, weighted: bool) -> float:
    p = 1.0 / (1.0 + np.exp(-logits))
    beta = np.ones(targets.shape[1])
    if weighted:
        pos = targets.sum(axis=0)
        neg = (1 - targets).sum(axis=0)
        beta = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    per = -(beta * targets * np.log(p) + (1 - targets) * np.log(1 - p))
    return float(per.sum(axis=1).mean())


@pytest.mark.parametrize("weighted", [False, True])
def test_bce_matches_naive_numpy(weighted):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(16, 5))
    targets = (rng.random((16, 5)) < 0.3).astype(np.float64)
    name = "weighted-bce" if weighted else "bce"
    got = loss(name)(torch.tensor(logits), torch.tensor(targets))
    assert got.item() == pytest.approx(naive_bce(logits, targets, weighted), rel=1e-9)


def test_weak_bce_option_switches_beta():
    logits = torch.tensor([[0.3], [0.1], [-0.4], [0.6]])
    targets = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    unweighted = (nlog_sig(0.3) + nlog_one_minus_sig(0.1) + nlog_one_minus_sig(-0.4)
                  + nlog_one_minus_sig(0.6)) / 4
    weighted = unweighted + 2 * nlog_sig(0.3) / 4
    assert loss("weak-bce")(logits, targets).item() == pytest.approx(unweighted, rel=1e-6)
    assert loss("weak-bce", weighted="true")(logits, targets).item() == pytest.approx(weighted,
                                                                                     rel=1e-6)


def test_bce_shape_mismatch_is_a_usage_error():
    with pytest.raises(UsageError, match="same shape"):
        loss("bce")(torch.zeros(2, 3), torch.zeros(2, 4))


# -- Eq. 2: MSE ------------------------------------------------------------------------------------


def test_mse_hand_computed():
    got = loss("mse")(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [3.5]]))
    assert got.item() == pytest.approx((1.0 + 0.25) / 2)


def test_weighted_mse_uses_inverse_training_frequency():
    train = torch.tensor([0.0] * 6 + [1.0] * 4 + [2.0] * 2)[:, None]
    # counts 6, 4, 2 -> inverse frequency 1/6, 1/4, 1/2, scaled so the largest is 1: 1/3, 1/2, 1
    assert score_weights(train) == pytest.approx({0: 1 / 3, 1: 0.5, 2: 1.0})
    fn = loss("weighted-mse", train_targets=train)
    targets = torch.tensor([[0.0], [1.2], [2.0], [5.0]])  # 1.2 rounds to 1; 5 never seen -> 1
    logits = torch.tensor([[1.0], [2.2], [4.0], [7.0]], requires_grad=True)
    got = fn(logits, targets)
    assert got.item() == pytest.approx((1 / 3 * 1 + 0.5 * 1 + 1.0 * 4 + 1.0 * 4) / 4, rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()
    # d/df of beta (f - y)^2 / N = 2 beta (f - y) / N
    assert logits.grad.flatten().tolist() == pytest.approx([1 / 6, 1 / 4, 1.0, 1.0])


def test_weighted_mse_needs_train_targets():
    with pytest.raises(UsageError, match="train"):
        loss("weighted-mse")
    with pytest.raises(UsageError):
        loss("weighted-mse", train_targets=torch.tensor([[float("nan")]]))


def test_mse_mask_drops_samples_from_n():
    logits = torch.tensor([[1.0], [3.0], [10.0]])
    targets = torch.tensor([[2.0], [3.5], [float("nan")]])
    mask = torch.tensor([[True], [True], [False]])
    assert loss("mse")(logits, targets, mask).item() == pytest.approx(0.625)


# -- Eq. 3 + 4: SCCE + differentiable MAE ----------------------------------------------------------


PROBS = [0.1, 0.2, 0.3, 0.4]  # expected severity 0*.1 + 1*.2 + 2*.3 + 3*.4 = 2.0


def zone_batch():
    logits = torch.log(torch.tensor(PROBS)).repeat(6).reshape(1, 24)
    targets = torch.tensor([[0, 1, 2, 3, 3, 2]])
    scce = sum(-math.log(PROBS[y]) for y in [0, 1, 2, 3, 3, 2]) / 6
    mae = sum(abs(y - 2.0) for y in [0, 1, 2, 3, 3, 2]) / 6
    return logits, targets, scce, mae


def test_expected_score_of_eq4():
    logits, *_ = zone_batch()
    assert expected_zone_score(logits)[0].tolist() == pytest.approx([2.0] * 6)


@pytest.mark.parametrize("alpha", [0.7, 1.0, 0.0, 0.5])
def test_mae_scce_hand_computed(alpha):
    logits, targets, scce, mae = zone_batch()
    fn = loss("mae-scce") if alpha == 0.7 else loss("mae-scce", alpha=alpha)
    got = fn(logits, targets)
    assert got.item() == pytest.approx(alpha * scce + (1 - alpha) * mae, rel=1e-6)


def test_mae_scce_mask_and_gradients():
    logits, targets, *_ = zone_batch()
    logits = logits.clone().requires_grad_(True)
    targets = targets.clone()
    targets[0, 5] = -1  # unknown zone
    mask = torch.tensor([[True, True, True, True, True, False]])
    got = loss("mae-scce")(logits, targets, mask)
    ys = [0, 1, 2, 3, 3]
    scce = sum(-math.log(PROBS[y]) for y in ys) / 5
    mae = sum(abs(y - 2.0) for y in ys) / 5
    assert got.item() == pytest.approx(0.7 * scce + 0.3 * mae, rel=1e-6)
    got.backward()
    grad = logits.grad.reshape(6, 4)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[5], torch.zeros(4))
    assert grad[:5].abs().sum() > 0


def test_mae_term_alone_is_differentiable():
    logits, targets, *_ = zone_batch()
    logits = logits.clone().requires_grad_(True)
    loss("mae-scce", alpha=0.0)(logits, targets).backward()
    assert logits.grad.abs().sum() > 0  # an argmax MAE would give exactly zero here


def test_mae_scce_rejects_bad_alpha_and_targets():
    with pytest.raises(UsageError, match="alpha"):
        loss("mae-scce", alpha=1.5)
    logits, targets, *_ = zone_batch()
    with pytest.raises(DataError, match="0..3"):
        loss("mae-scce")(logits, targets + 1)
    with pytest.raises(UsageError):
        loss("mae-scce")(logits[:, :20], targets)


@pytest.mark.parametrize("name", ["bce", "weighted-bce", "mse", "mae-scce", "weak-bce"])
def test_every_loss_gives_finite_gradients_on_random_batches(name):
    batch = 8
    if name == "mae-scce":
        logits = torch.randn(batch, 24, requires_grad=True)
        targets = torch.randint(0, 4, (batch, 6))
    elif name == "mse":
        logits = torch.randn(batch, 1, requires_grad=True)
        targets = torch.randint(0, 19, (batch, 1)).float()
    else:
        width = 1 if name == "weak-bce" else 4
        logits = torch.randn(batch, width, requires_grad=True)
        targets = (torch.rand(batch, width) < 0.3).float()
    value = loss(name)(logits, targets)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
