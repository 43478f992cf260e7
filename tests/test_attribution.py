"""Layer Integrated Gradients (paper Eq. 6): quadrature, Captum agreement, completeness, closed form.

All numerical comparisons run in float64 so that a mismatch is a definition error, not rounding.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn

from cxrsem.attribution.ig import layer_integrated_gradients
from cxrsem.attribution.quadrature import METHODS, captum_method, nodes_weights
from cxrsem.engine.split import split_at
from cxrsem.errors import UsageError
from cxrsem.testing import mini_densenet

LAYER = "features.denseblock4"

pytestmark = pytest.mark.usefixtures("one_thread")


def _mini(seed: int = 0, outputs: int = 3) -> nn.Module:
    return mini_densenet(seed, outputs).double()


def _perturb_batchnorm(model: nn.Module, seed: int, scale: float) -> nn.Module:
    """Give every batch norm non-trivial statistics and shifts, as training does.

    A freshly built DenseNet has running mean 0 and shift 0, which makes the tail after
    denseblock4 (norm5 -> relu -> pool -> linear) positively homogeneous in alpha: IG is then
    exact with any rule whose weights sum to 1.  Shifts put ReLU kinks inside (0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * scale)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * scale)
    return model


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [2, 7, 50])
def test_quadrature_is_captums(method, steps):
    step_sizes, alphas = approximation_parameters(captum_method(method))
    nodes, weights = nodes_weights(method, steps)
    assert nodes == alphas(steps)
    assert weights == step_sizes(steps)


def test_quadrature_rejects_bad_requests():
    with pytest.raises(UsageError, match="at least 2"):
        nodes_weights("gausslegendre", 1)
    with pytest.raises(UsageError, match="unknown integration method"):
        nodes_weights("simpson", 8)
    assert nodes_weights("riemann_left", 4) == nodes_weights("riemann-left", 4)


def _relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().sum() / b.detach().abs().sum())


@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_captum_integrated_gradients_on_the_tail(method):
    """Same definition: captum IG on the explicit sub-network after L, baseline 0."""
    model = _perturb_batchnorm(_mini(1), seed=1, scale=0.3)
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    steps, target = 8, 2
    ours = layer_integrated_gradients(model, LAYER, x, target, steps=steps, method=method,
                                      batch_size=9)
    split = split_at(model, LAYER, x[:1])
    acts, extras = split.head(x)
    assert extras == ()

    def tail(a):
        return split.tail(a, ())

    reference = IntegratedGradients(tail).attribute(
        acts, baselines=0.0, target=target, n_steps=steps, method=captum_method(method))
    assert reference.abs().sum() > 0
    assert _relative_l1(ours.attributions, reference) < 1e-5
    torch.testing.assert_close(ours.activations, acts, rtol=0, atol=0)


def test_agrees_with_captum_when_the_tail_needs_extras():
    """An inner dense layer: the tail also reads earlier features (passed to Captum as extra
    forward arguments, which it repeats over the steps just like the split does)."""
    model = _perturb_batchnorm(_mini(2), seed=2, scale=0.3)
    layer = "features.denseblock4.denselayer2.conv2"
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    ours = layer_integrated_gradients(model, layer, x, 0, steps=10, method="riemann-middle",
                                      batch_size=64)
    split = split_at(model, layer, x[:1])
    acts, extras = split.head(x)
    assert len(extras) > 0 and all(e.shape[0] == 2 for e in extras)

    def tail(a, *extra):
        return split.tail(a, extra)

    reference = IntegratedGradients(tail).attribute(
        acts, baselines=0.0, target=0, n_steps=10, method="riemann_middle",
        additional_forward_args=extras)
    assert _relative_l1(ours.attributions, reference) < 1e-5


def test_captum_agreement_can_fail():
    """The comparison is sharp: another step count is far from Captum's answer."""
    model = _perturb_batchnorm(_mini(1), seed=1, scale=0.3)
    x = torch.randn(1, 1, 64, 64, dtype=torch.float64)
    ours = layer_integrated_gradients(model, LAYER, x, 1, steps=3, method="riemann-left")
    split = split_at(model, LAYER, x)
    acts, _ = split.head(x)
    reference = IntegratedGradients(lambda a: split.tail(a, ())).attribute(
        acts, baselines=0.0, target=1, n_steps=4, method="riemann_left")
    assert _relative_l1(ours.attributions, reference) > 1e-3


@pytest.mark.parametrize("target", [0, 1, 2])
def test_completeness_64_gauss_legendre_on_densenet_mini(target):
    """Issue criterion: with 64 Gauss-Legendre steps the gap is < 1e-3 relative."""
    model = _mini(3)
    x = torch.rand(3, 1, 64, 64, dtype=torch.float64)
    result = layer_integrated_gradients(model, LAYER, x, target, steps=64)
    gap = (result.total - result.delta).abs() / result.delta.abs()
    assert (result.delta.abs() > 1e-3).all()
    assert (gap < 1e-3).all(), gap
    # f(A) is the model's own output and f(0) the tail at zero activations.
    torch.testing.assert_close(result.f_input, model(x)[:, target], rtol=0, atol=1e-12)
    torch.testing.assert_close(result.logits, model(x), rtol=0, atol=1e-12)


def test_completeness_gap_measures_the_quadrature_error():
    """With ReLU kinks inside the path (trained-like batch norm) the gap is the rule's error.

    The integrand (the gradient) jumps at every kink, so no rule converges fast: at 64
    Gauss-Legendre points gaps on this 64-px model are about 1e-4 to 5e-3 depending on weights
    and image (they shrink with more positions and steps).  2 left-Riemann points are far
    worse -- the check can fail.
    """
    model = _perturb_batchnorm(_mini(0), seed=0, scale=0.05)
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def gap(method, steps):
        r = layer_integrated_gradients(model, LAYER, x, 0, steps=steps, method=method)
        return ((r.total - r.delta).abs() / r.delta.abs()).max().item()

    fine = gap("gausslegendre", 64)
    assert 0 < fine < 1e-2
    assert gap("riemann-left", 2) > 10 * fine


class LinearTail(nn.Module):
    """conv -> tanh (before L) -> 1x1 conv -> global mean -> linear: f(alpha A) is affine in
    alpha, so Eq. 6 has the closed form s = A * d f / d A, independent of alpha."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.Tanh()  # L
        self.mix = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(self.act(self.conv(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["fx", "hook"])
def test_linear_tail_gives_the_closed_form(method, mode):
    torch.manual_seed(0)
    model = LinearTail().double().eval()
    x = torch.randn(3, 1, 6, 5, dtype=torch.float64)
    target = 1
    result = layer_integrated_gradients(model, "act", x, target, steps=5, method=method,
                                        split=mode)
    acts = torch.tanh(model.conv(x))
    # d f / d a_{k,i} = sum_c fc.weight[t, c] * mix.weight[c, k] / (h * w), for every i.
    per_unit = (model.fc.weight[target] @ model.mix.weight[:, :, 0, 0]) / (6 * 5)
    closed = (acts * per_unit.view(1, -1, 1, 1)).detach()
    # Captum's trapezoid weights sum to 1 - 1/n (its definition, kept for exact agreement).
    factor = 1 - 1 / 5 if method == "riemann-trapezoid" else 1.0
    torch.testing.assert_close(result.attributions, factor * closed, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(result.f_baseline, model.fc.bias[target] + (
        model.fc.weight[target] @ model.mix.bias).expand(3).detach(), rtol=1e-12, atol=1e-14)
    if method != "riemann-trapezoid":
        torch.testing.assert_close(result.total, result.delta, rtol=1e-12, atol=1e-14)


def test_unit_contribution_is_sum_of_absolute_values():
    model = _perturb_batchnorm(_mini(4), seed=4, scale=0.3)
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    result = layer_integrated_gradients(model, LAYER, x, [0, 1], steps=4)
    s = result.attributions
    expected = torch.stack([torch.stack([s[n, k].abs().sum() for k in range(s.shape[1])])
                            for n in range(2)])
    torch.testing.assert_close(result.unit_contributions, expected)
    # Per-image targets: image 1 explains output 1.
    single = layer_integrated_gradients(model, LAYER, x[1:], 1, steps=4)
    torch.testing.assert_close(single.attributions[0], s[1], rtol=1e-12, atol=1e-14)


def test_chunking_does_not_change_the_result():
    model = _perturb_batchnorm(_mini(5), seed=5, scale=0.3)
    x = torch.randn(3, 1, 64, 64, dtype=torch.float64)
    split = split_at(model, LAYER, x[:1])
    reference = layer_integrated_gradients(model, LAYER, x, 2, steps=5, batch_size=64, split=split)
    for batch_size in (1, 4):  # rows of one image spread over several tail passes
        chunked = layer_integrated_gradients(model, LAYER, x, 2, steps=5, batch_size=batch_size,
                                             split=split)
        torch.testing.assert_close(chunked.attributions, reference.attributions, rtol=1e-10,
                                   atol=1e-14)


def test_callable_target():
    model = _mini(6)
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    by_index = layer_integrated_gradients(model, LAYER, x, 1, steps=4)
    by_function = layer_integrated_gradients(model, LAYER, x, lambda logits: logits[:, 1], steps=4)
    torch.testing.assert_close(by_function.attributions, by_index.attributions)
    with pytest.raises(UsageError, match="2 images"):
        layer_integrated_gradients(model, LAYER, x, [0, 1, 2], steps=4)
