"""Splitting a model at a layer: the fx path and the hook fallback compute the same function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrsem.attribution.ig import layer_integrated_gradients
from cxrsem.engine.split import SplitError, split_at
from cxrsem.errors import UsageError
from cxrsem.testing import mini_densenet

pytestmark = pytest.mark.usefixtures("one_thread")


def _mini(seed: int = 0, outputs: int = 3) -> nn.Module:
    return mini_densenet(seed, outputs)


class ResidualToy(nn.Module):
    """A ResNet-like block whose skip connection bypasses ``block.conv1`` (an extra), plus a
    parameter-derived constant ``[4, 1, 1]`` that crosses the cut too: with 4 images its leading
    dimension equals the batch size, yet it must not be indexed per image."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.ModuleDict({"conv1": nn.Conv2d(4, 4, 3, padding=1),
                                    "conv2": nn.Conv2d(4, 4, 3, padding=1)})
        self.offset = nn.Parameter(torch.randn(2, 4, 1, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = torch.relu(self.stem(x))
        bias = self.offset.sum(0)  # computed before the layer, read after it
        h = torch.tanh(self.block["conv1"](identity))
        h = self.block["conv2"](h) + identity + bias
        return self.fc(torch.relu(h).mean(dim=(2, 3)))


class Branchy(nn.Module):
    """Control flow on a traced value: torch.fx cannot trace it; the hook path must take over."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        if h.shape[-1] > 8:  # data-dependent for the tracer (a Proxy in a condition)
            h = nn.functional.avg_pool2d(h, 2)
        h = torch.tanh(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


class Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.conv(x.repeat(1, 2, 1, 1)))
        return self.fc(h.mean(dim=(2, 3)))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("layer", ["features.denseblock4", "features.denseblock4.denselayer2.conv2",
                                   "features.transition3.conv", "features.norm5"])
def test_fx_split_reproduces_densenet(layer):
    model = _mini().double()
    x = torch.randn(3, 1, 64, 64, dtype=torch.float64)
    split = split_at(model, layer, x[:1])
    assert split.path == "fx" and split.reason is None
    a, extras = split.head(x)
    out = split.tail(a, split.rows(extras, torch.arange(3), 3))
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-12)
    # An inner dense layer's output is concatenated with earlier features: those are extras.
    assert (len(extras) > 0) == ("denselayer2" in layer)
    assert _no_hooks(model)


def _ig_both_paths(model, layer, x, target, steps=8, method="gausslegendre", batch_size=7):
    results = {}
    for mode in ("fx", "hook"):
        results[mode] = layer_integrated_gradients(model, layer, x, target, steps=steps,
                                                   method=method, batch_size=batch_size,
                                                   split=mode)
        assert results[mode].path == mode
    return results["fx"], results["hook"]


@pytest.mark.parametrize("layer", ["features.denseblock4", "features.denseblock4.denselayer2.conv2",
                                   "features.norm5"])
def test_fx_path_equals_hook_path_densenet(layer):
    model = _mini(1).double()
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    fx, hook = _ig_both_paths(model, layer, x, [0, 2], steps=4)
    torch.testing.assert_close(fx.attributions, hook.attributions, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fx.f_input, hook.f_input, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fx.f_baseline, hook.f_baseline, rtol=1e-12, atol=1e-14)
    assert fx.attributions.abs().sum() > 0
    assert _no_hooks(model)


def test_fx_path_equals_hook_path_with_skip_connection_and_constants():
    torch.manual_seed(3)
    model = ResidualToy().double().eval()
    x = torch.randn(4, 1, 9, 9, dtype=torch.float64)
    split = split_at(model, "block.conv1", x[:1])
    assert split.path == "fx"
    a, extras = split.head(x)
    # The identity (per image) and the parameter constant (not per image) both cross the cut.
    assert sorted(tuple(e.shape) for e in extras) == [(4, 1, 1), (4, 4, 9, 9)]
    rows = split.rows(extras, torch.tensor([3, 3, 0]), 4)
    assert sorted(tuple(e.shape) for e in rows) == [(3, 4, 9, 9), (4, 1, 1)]
    fx, hook = _ig_both_paths(model, "block.conv1", x, 1, steps=6, batch_size=5)
    torch.testing.assert_close(fx.attributions, hook.attributions, rtol=1e-12, atol=1e-14)
    # The tail really reads the identity: zeroing it changes the output.
    rows = split.rows(extras, torch.arange(4), 4)
    changed = split.tail(a, tuple(torch.zeros_like(e) if e.dim() == 4 else e for e in rows))
    assert not torch.allclose(changed, model(x))


def test_untraceable_model_falls_back_to_hook_and_is_correct():
    torch.manual_seed(0)
    model = Branchy().double().eval()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    split = split_at(model, "conv2", x[:1])
    assert split.path == "hook"
    assert "torch.fx" in split.reason
    a, extras = split.head(x)
    # The hook tail evaluates the model with conv2's output replaced: check it by hand.
    scaled = 0.3 * a
    expected = model.fc(torch.tanh(scaled).mean(dim=(2, 3)))
    torch.testing.assert_close(split.tail(scaled, split.rows(extras, torch.arange(3), 3)),
                               expected, rtol=0, atol=1e-12)
    with pytest.raises(UsageError, match="torch.fx"):
        split_at(model, "conv2", x[:1], mode="fx")
    assert _no_hooks(model)


def test_reused_layer_is_an_error_in_both_paths():
    model = Reuse().eval()
    x = torch.randn(1, 1, 8, 8)
    for mode in ("auto", "hook"):
        with pytest.raises(SplitError, match="runs 2 times"):
            split_at(model, "conv", x, mode=mode)
    assert _no_hooks(model)


def test_split_requires_eval_mode_and_a_known_layer():
    model = _mini().train()
    with pytest.raises(UsageError, match="training mode"):
        split_at(model, "features.denseblock4", torch.zeros(1, 1, 64, 64))
    model.eval()
    with pytest.raises(UsageError, match="no module"):
        split_at(model, "features.denseblock9", torch.zeros(1, 1, 64, 64))
    with pytest.raises(UsageError, match="split mode"):
        split_at(model, "features.denseblock4", torch.zeros(1, 1, 64, 64), mode="magic")


def test_split_leaves_the_model_unchanged():
    model = _mini(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 64, 64)
    reference = model(x)
    for mode in ("fx", "hook"):
        layer_integrated_gradients(model, "features.denseblock4", x, 0, steps=2, split=mode)
    assert _no_hooks(model) and not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


@pytest.mark.parametrize("path", ["fx", "hook"])
def test_head_once_reuses_a_batch_and_recomputes_on_any_change(path):
    from cxrsem.engine.split import HeadOnce

    torch.manual_seed(0)
    model = mini_densenet(seed=0).eval()
    x = torch.rand(3, 1, 32, 32)
    split = split_at(model, "features.denseblock4", x[:1], mode=path)
    once = HeadOnce(split)
    with torch.no_grad():
        a, _ = once.head(x)
        again, _ = once.head(x[0:128])  # a method's chunk of the same batch: the same view
        assert again is a and once.computed == 1
        assert torch.equal(a, split.head(x)[0])
        x.mul_(0.5)                     # the input changed in place: a new pass
        b, _ = once.head(x)
        assert once.computed == 2 and torch.allclose(b, split.head(x)[0])
        b.relu_().mul_(0.0)             # the activations changed (a tail acting in place)
        c, _ = once.head(x)
        assert once.computed == 3 and torch.allclose(c, split.head(x)[0]) and c.abs().sum() > 0
        once.head(x[1:])                # another batch
        assert once.computed == 4
    assert once.path == split.path and once.layer == split.layer


def test_layer_integrated_gradients_reuses_its_split_until_the_model_changes(monkeypatch):
    from cxrsem.attribution import ig

    calls = []
    real = ig.split_at

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ig, "split_at", counting)
    model = mini_densenet(seed=5).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    first = layer_integrated_gradients(model, "features.denseblock4", x, 0, steps=4)
    again = layer_integrated_gradients(model, "features.denseblock4", x, 0, steps=4)
    assert len(calls) == 1 and torch.equal(first.attributions, again.attributions)
    # Weights changed in place: the same split sees them (it shares the model's modules).
    with torch.no_grad():
        model.classifier.weight.mul_(2.0)
    doubled = layer_integrated_gradients(model, "features.denseblock4", x, 0, steps=4)
    assert len(calls) == 1
    assert torch.allclose(doubled.attributions, 2 * first.attributions, rtol=1e-4, atol=1e-6)
    # A replaced module, another input shape: split again.
    model.classifier = nn.Linear(model.classifier.in_features, 3)
    layer_integrated_gradients(model, "features.denseblock4", x, 0, steps=4)
    layer_integrated_gradients(model, "features.denseblock4", x[:, :, :16, :16], 0, steps=4)
    assert len(calls) == 3
    # The class holds the same cache for one model and layer.
    explainer = ig.LayerIntegratedGradients(model, "features.denseblock4")
    a = explainer.attribute(x, 1, steps=4)
    b = explainer.attribute(x, 1, steps=4)
    assert len(calls) == 4 and torch.equal(a.attributions, b.attributions)
