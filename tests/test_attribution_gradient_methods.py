"""The built-in one-point methods ``grad-x-act``, ``activation`` and ``gradcam``
(:mod:`cxrsem.attribution.gradient_methods`) against hand computations on a tiny model whose tail
is known in closed form, and end to end through ``cxrsem attribute --method``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import cxrsem
from cxrsem.attribution.methods import unit_scores
from cxrsem.engine.split import split_at
from cxrsem.testing import attribution_assets, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ("grad-x-act", "activation", "gradcam")

# One image by hand: 3 units on a 2 x 2 map (h w = 4).
A_HAND = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],
                       [[0.0, 1.0], [0.0, 1.0]],
                       [[2.0, 2.0], [2.0, 2.0]]], dtype=torch.float64)
W = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
B = 0.25


class Tiny(nn.Module):
    """``A = features(x) = x`` (a 1x1 identity conv), then output 0 is
    ``linear``: ``f = sum_k w_k mean_i a_k^i + b`` or
    ``square``: ``f = sum_k w_k mean_i (a_k^i)^2 + b``;
    output 1 is ``-f`` (a second column to explain)."""

    def __init__(self, tail: str = "linear", w: torch.Tensor = W, b: float = B) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        self.fc = nn.Linear(3, 1)
        self.tail = tail
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.fc.weight.copy_(w.view(1, 3))
            self.fc.bias.fill_(b)
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        if self.tail == "square":
            a = a * a
        f = self.fc(a.mean(dim=(2, 3)))
        return torch.cat([f, -f], dim=1)


def _images(extra: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rest = torch.rand(extra, 3, 2, 2, generator=g, dtype=torch.float64) * 3 - 1
    return torch.cat([A_HAND[None], rest])


def _logits(logits: torch.Tensor) -> torch.Tensor:
    return logits


def _run(name: str, tail: str = "linear", images: torch.Tensor | None = None, *,
         columns=None, batch_size: int = 8, mode: str = "auto", **options):
    images = _images() if images is None else images
    model = Tiny(tail)
    split = split_at(model, "features", images[:1], mode=mode)
    method = cxrsem.create_attribution_method(name, **options)
    cols = torch.zeros(len(images), dtype=torch.long) if columns is None else columns
    return method(split, images, values=_logits, columns=cols, batch_size=batch_size), images


def test_the_three_are_registered_like_ig():
    from cxrsem import plugins

    registry = plugins.get_registry()
    owners = {name: registry.owners[("attribution_method", name)] for name in METHODS}
    assert set(owners.values()) == {"cxrsem.default_plugins.attribution_methods"}
    assert {"ig", *METHODS} <= set(cxrsem.list_attribution_methods())
    infos = {name: registry.get("attribution_method", name) for name in METHODS}
    assert infos["grad-x-act"].baseline == "zero activations (one point)"
    assert infos["activation"].baseline is None and infos["gradcam"].baseline is None
    assert all(info.options == () and info.description for info in infos.values())


def test_linear_tail_by_hand():
    # df/da_k^i = w_k / (h w) = w_k / 4 at every position.
    gxa, images = _run("grad-x-act")
    cam, _ = _run("gradcam")
    act, _ = _run("activation")
    expected = images * (W / 4).view(1, 3, 1, 1)
    torch.testing.assert_close(gxa.attributions, expected)
    torch.testing.assert_close(gxa.attributions[0, 0], torch.tensor(
        [[0.125, 0.25], [0.375, 0.5]], dtype=torch.float64))
    # Grad-CAM: alpha_k = mean_i w_k / 4 = w_k / 4, so it equals grad x act for a mean-pool tail.
    torch.testing.assert_close(cam.attributions, gxa.attributions)
    torch.testing.assert_close(act.attributions, images)
    # Scores: |w_k| / 4 * sum_i |a_k^i| = 0.125 * 10, 0.25 * 2, 0.5 * 8; activation sum |a| = 10, 2, 8.
    torch.testing.assert_close(gxa.unit_contributions[0], torch.tensor(
        [1.25, 0.5, 4.0], dtype=torch.float64))
    torch.testing.assert_close(act.unit_contributions[0], torch.tensor(
        [10.0, 2.0, 8.0], dtype=torch.float64))
    # f(A) = 0.5 * 2.5 - 1 * 0.5 + 2 * 2 + 0.25 = 5, f(0) = b; one point is exact for an affine tail.
    assert float(gxa.f_input[0]) == pytest.approx(5.0)
    assert float(gxa.f_baseline[0]) == pytest.approx(0.25)
    torch.testing.assert_close(gxa.total, gxa.delta)
    assert float(gxa.total[0]) == pytest.approx(4.75)
    # Neither gradcam nor activation claims completeness.
    for result in (cam, act):
        assert result.f_input is None and result.f_baseline is None and result.delta is None
    # Logits at A and the columns explained are filled in by every method.
    for result in (gxa, cam, act):
        assert float(result.logits[0, 0]) == pytest.approx(5.0)
        assert result.columns.tolist() == [0, 0, 0]
        assert result.path == "fx"


def test_square_tail_by_hand():
    # f = sum_k w_k mean_i (a_k^i)^2 + b:  df/da_k^i = 2 w_k a_k^i / 4 = w_k a_k^i / 2.
    gxa, images = _run("grad-x-act", "square")
    cam, _ = _run("gradcam", "square")
    grad = (W / 2).view(1, 3, 1, 1) * images
    torch.testing.assert_close(gxa.attributions, images * grad)
    torch.testing.assert_close(gxa.attributions[0], torch.tensor(
        [[[0.25, 1.0], [2.25, 4.0]], [[0.0, -0.5], [0.0, -0.5]], [[4.0, 4.0], [4.0, 4.0]]],
        dtype=torch.float64))
    # Grad-CAM: alpha_k = w_k mean_i(a_k^i) / 2 = 0.625, -0.25, 2 for the hand image.
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(cam.attributions, alpha * images)
    torch.testing.assert_close(cam.attributions[0, 0], torch.tensor(
        [[0.625, 1.25], [1.875, 2.5]], dtype=torch.float64))
    assert not torch.allclose(cam.attributions, gxa.attributions)  # the gradient varies in space
    # Scores: grad x act sum_i |w_k| (a_k^i)^2 / 2 = 7.5, 1, 16; gradcam |alpha_k| sum_i |a_k^i|.
    torch.testing.assert_close(gxa.unit_contributions[0], torch.tensor(
        [7.5, 1.0, 16.0], dtype=torch.float64))
    torch.testing.assert_close(cam.unit_contributions[0], torch.tensor(
        [6.25, 0.5, 16.0], dtype=torch.float64))
    # f(A) = 0.5 * 7.5 - 1 * 0.5 + 2 * 4 + 0.25 = 11.5, f(0) = 0.25: delta = 11.25.  The tail is
    # homogeneous of degree 2 after b, so sum s = 2 * delta (Euler): the gap is delta itself --
    # the first-order Taylor remainder, reported rather than hidden.
    assert float(gxa.f_input[0]) == pytest.approx(11.5)
    assert float(gxa.f_baseline[0]) == pytest.approx(0.25)
    assert float(gxa.total[0]) == pytest.approx(22.5)
    torch.testing.assert_close(gxa.total, 2 * gxa.delta)
    # IG integrates 2 alpha over [0, 1]: exact completeness where the one point is off by 2x.
    ig, _ = _run("ig", "square", steps=4)
    torch.testing.assert_close(ig.total, ig.delta)
    torch.testing.assert_close(ig.attributions, gxa.attributions / 2)


def test_activation_does_not_depend_on_the_explained_output():
    first, _ = _run("activation", "square", columns=torch.tensor([0, 0, 0]))
    second, _ = _run("activation", "linear", columns=torch.tensor([1, 1, 1]))
    torch.testing.assert_close(first.attributions, second.attributions)
    # The gradient methods flip sign with the explained output (-f), the scores stay.
    plus, _ = _run("grad-x-act", columns=torch.tensor([0, 0, 0]))
    minus, _ = _run("grad-x-act", columns=torch.tensor([1, 1, 1]))
    torch.testing.assert_close(minus.attributions, -plus.attributions)
    torch.testing.assert_close(minus.unit_contributions, plus.unit_contributions)


def test_a_highly_activated_decoy_is_first_only_for_the_activation_map():
    # Unit 1 fires strongly but the output ignores it (w = 0); unit 0 carries the prediction.
    w = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    a = torch.tensor([[[1.0, 1.0], [1.0, 1.0]],
                      [[9.0, 9.0], [9.0, 9.0]],
                      [[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64)[None]
    model = Tiny("linear", w=w, b=0.0)
    split = split_at(model, "features", a)
    ranks = {}
    for name, options in (("activation", {}), ("grad-x-act", {}), ("gradcam", {}),
                          ("ig", {"steps": 4})):
        method = cxrsem.create_attribution_method(name, **options)
        result = method(split, a, values=_logits, columns=torch.tensor([0]), batch_size=1)
        ranks[name] = result.unit_contributions[0].argsort(descending=True).tolist()
    assert ranks["activation"][0] == 1
    assert ranks["ig"] == ranks["grad-x-act"] == ranks["gradcam"] == [0, 2, 1]


def test_columns_as_a_function_of_the_logits_and_batching():
    images = _images(extra=4)
    fixed, _ = _run("grad-x-act", "square", images, batch_size=5)
    # Explain the larger of f, -f: the column follows the sign of f per image.
    for name in METHODS:
        whole, _ = _run(name, "square", images, columns=lambda logits: logits.argmax(dim=1))
        parts, _ = _run(name, "square", images, columns=lambda logits: logits.argmax(dim=1),
                        batch_size=2)
        torch.testing.assert_close(parts.attributions, whole.attributions)
        assert whole.columns.tolist() == (fixed.logits[:, 0] < 0).long().tolist()
        assert parts.columns.tolist() == whole.columns.tolist()


def test_the_hook_path_gives_the_same_attributions():
    for name in METHODS:
        fx, _ = _run(name, "square")
        hook, _ = _run(name, "square", mode="hook")
        assert (fx.path, hook.path) == ("fx", "hook")
        torch.testing.assert_close(hook.attributions, fx.attributions)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("mode", ["fx", "hook"])
@pytest.mark.parametrize("name", METHODS)
def test_the_model_is_left_unchanged(name, mode):
    images = _images()
    model = Tiny("square")
    model.fc.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    split = split_at(model, "features", images[:1], mode=mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    hooks = _hooks(model)
    method = cxrsem.create_attribution_method(name)
    method(split, images, values=_logits, columns=torch.zeros(3, dtype=torch.long), batch_size=2)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _hooks(model) == hooks and not model.training


@pytest.mark.parametrize("name", METHODS)
def test_contract(name):
    from cxrsem.testing.contracts import check_attribution_method

    result = check_attribution_method(name)
    assert (result.f_input is None) == (name != "grad-x-act")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return attribution_assets(tmp_path_factory.mktemp("gradient-methods"), picture_shape=(64, 64))


@pytest.mark.parametrize("name", METHODS)
def test_cli_end_to_end(name, assets, tmp_path, capsys):
    from cxrsem.attribution.targets import default_columns, values_function
    from cxrsem.engine.preprocess import InputSpec
    from cxrsem.imageio import read_image, to_tensor

    out = tmp_path / "attr"
    code, stdout, stderr = run_cli(["attribute", assets["images"], "--model", assets["ckpt"],
                                    "--layer", "denseblock4", "--method", name, "--out", out],
                                   capsys)
    assert code == 0, stderr
    assert "2 attribution(s)" in stdout and "Warning" not in stderr
    data = json.loads((out / "cxr0.json").read_text())
    assert data["attribution_method"] == name and data["method"] == name
    assert data["method_options"] == {} and data["steps"] is None
    assert data["baseline"] == ("zero activations (one point)" if name == "grad-x-act" else None)
    assert (out / "cxr0.png").is_file() and f'method = "{name}"' in (out / "config.toml").read_text()
    completeness = data["completeness"]
    if name == "grad-x-act":
        assert completeness["delta"] == pytest.approx(data["f_input"] - data["f_baseline"])
        # A fresh densenet-mini's tail (norm5 with zero shifts -> relu -> pool -> linear) is
        # positively homogeneous after the bias: one point is exact up to float32 rounding.
        assert completeness["rel_gap"] < 1e-4
    else:
        assert data["f_input"] is None and completeness["delta"] is None
        assert completeness["rel_gap"] is None and completeness["sum_s"] is not None
    # The recorded unit scores are the method's own on the image as the model sees it.
    x = InputSpec(64).prepare(to_tensor(read_image(assets["images"] / "cxr0.png"), 64)[None])
    split = split_at(assets["model"], "features.denseblock4", x)
    direct = cxrsem.create_attribution_method(name)(
        split, x, values=values_function("multilabel", 2), columns=default_columns("multilabel"),
        batch_size=1)
    np.testing.assert_allclose(data["units"], unit_scores(direct.attributions)[0].double().numpy(),
                               rtol=1e-4, atol=1e-8)
