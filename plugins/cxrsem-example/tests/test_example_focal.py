"""The ``focal`` loss, created by name through cxrsem's registry as the training loop does."""

from __future__ import annotations

import cxrsem
import pytest
import torch
import torch.nn.functional as F
from cxrsem.errors import UsageError

pytestmark = pytest.mark.usefixtures("example")

# A 2x2 batch: (sample, label) -> logit z, target y.
LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 1.5]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
# FL = -alpha_t (1 - p_t)^gamma log(p_t), p = sigmoid(z), p_t = p if y = 1 else 1 - p,
# alpha_t = alpha if y = 1 else 1 - alpha; here alpha = 0.25, gamma = 2:
#   z=0,   y=1: p_t = 0.5,      alpha_t = 0.25: 0.25 * 0.5^2      * 0.693147 = 0.043322
#   z=2,   y=0: p_t = 0.119203, alpha_t = 0.75: 0.75 * 0.880797^2 * 2.126928 = 1.237559
#   z=-1,  y=0: p_t = 0.731059, alpha_t = 0.75: 0.75 * 0.268941^2 * 0.313262 = 0.016994
#   z=1.5, y=1: p_t = 0.817574, alpha_t = 0.25: 0.25 * 0.182426^2 * 0.201413 = 0.001676
PER_LABEL = torch.tensor([[0.043322, 1.237559], [0.016994, 0.001676]])


def test_registered_for_both_classification_tasks():
    info = cxrsem.plugins.get_loss("focal")
    assert info.tasks == ("multilabel", "binary")
    assert info.defaults() == {"gamma": 2.0, "alpha": 0.25}


def test_matches_the_hand_computed_2x2_example():
    loss = cxrsem.create_loss("focal")
    assert loss(LOGITS, TARGETS).item() == pytest.approx(PER_LABEL.mean().item(), abs=1e-6)
    assert PER_LABEL.mean().item() == pytest.approx(0.324888, abs=1e-6)


def test_gamma_zero_without_alpha_is_binary_cross_entropy():
    loss = cxrsem.create_loss("focal", gamma=0.0, alpha=-1.0)
    expected = F.binary_cross_entropy_with_logits(LOGITS, TARGETS)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unknown_labels_do_not_count_and_send_no_gradient():
    known = torch.tensor([[True, False], [True, True]])  # the z=2 label is unknown
    targets = TARGETS.clone()
    targets[0, 1] = float("nan")  # an unknown target may hold anything
    logits = LOGITS.clone().requires_grad_(True)
    value = cxrsem.create_loss("focal")(logits, targets, known)
    assert value.item() == pytest.approx((0.043322 + 0.016994 + 0.001676) / 3, abs=1e-6)
    value.backward()
    assert logits.grad[0, 1] == 0
    assert torch.all(logits.grad[known] != 0)


def test_a_batch_with_nothing_known_is_zero_and_still_differentiable():
    logits = LOGITS.clone().requires_grad_(True)
    value = cxrsem.create_loss("focal")(logits, TARGETS, torch.zeros(2, 2, dtype=torch.bool))
    value.backward()
    assert value.item() == 0 and torch.equal(logits.grad, torch.zeros(2, 2))


def test_works_on_phantom_targets_of_both_tasks(tiny_phantom):
    loss = cxrsem.create_loss("focal", gamma=1.0)
    for task in ("multilabel", "binary"):
        targets = tiny_phantom.targets(task)
        assert torch.isfinite(loss(torch.randn(targets.shape), targets))


@pytest.mark.parametrize(("options", "message"), [
    ({"gamma": -1.0}, "'gamma' must be >= 0"),
    ({"alpha": 1.5}, "'alpha' must be at most 1"),
])
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        cxrsem.create_loss("focal", **options)


def test_mismatched_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="one shape"):
        cxrsem.create_loss("focal")(LOGITS, TARGETS[:, :1])
