"""Attribution methods as registered components: a plugin's method through ``cxrsem attribute
--method`` and ``cxrsem report`` with no core change, ``--rule``, the deprecated ``--method RULE``,
and the contract checks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import cxrsem
from cxrsem.attribution import integrated_gradients
from cxrsem.attribution.methods import LayerAttribution, unit_scores
from cxrsem.components import AttributionMethodInfo, Option
from cxrsem.hookspecs import hookimpl
from cxrsem.testing import attribution_assets, run_cli
from cxrsem.testing.contracts import check_attribution_method
from tests.report_fixtures import dissection_doc, write_dissection

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "features.denseblock4"


def act_times_one(scale: float = 1.0):
    def method(split, images, *, values, columns, batch_size, progress=None):
        with torch.no_grad():
            acts, _ = split.head(images)
        return LayerAttribution(attributions=scale * acts)
    return method


class ActTimesOne:
    """A throwaway third-party plugin: ``s = A`` (each unit scored by ``sum |A_k|``)."""

    @staticmethod
    @hookimpl
    def register_attribution_methods(register):
        register(AttributionMethodInfo(
            name="act-times-one", factory=act_times_one,
            options=(Option("scale", float, 1.0, "factor on the activations"),),
            description="s = A"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return attribution_assets(tmp_path_factory.mktemp("methods"), picture_shape=(64, 64))


def _args(assets, out, *extra):
    return ["attribute", assets["images"], "--model", assets["ckpt"], "--layer", "denseblock4",
            "--out", out, *extra]


def test_a_plugin_method_runs_through_attribute_and_report(assets, tmp_path, capsys,
                                                           register_plugin):
    register_plugin(ActTimesOne(), "act-times-one-plugin")
    assert "act-times-one" in cxrsem.list_attribution_methods()
    dissect = tmp_path / "dis"
    doc = dissection_doc([("Nodule" if k % 2 else None, 0.3) for k in range(69)],
                         model_path=assets["ckpt"], sha256=assets["sha"], layer=LAYER)
    write_dissection(dissect, "model", doc, figures=False)
    out = tmp_path / "attr"
    code, stdout, stderr = run_cli(_args(assets, out, "--method", "act-times-one", "--method-opt",
                                         "scale=2", "--dissection", dissect), capsys)
    assert code == 0, stderr
    assert "2 attribution(s)" in stdout and "undefined" in stdout and "Warning" not in stderr
    data = json.loads((out / "cxr0.json").read_text())
    assert data["attribution_method"] == "act-times-one" and data["method"] == "act-times-one"
    assert data["method_options"] == {"scale": 2.0} and data["steps"] is None
    assert data["baseline"] is None and data["f_input"] is None
    assert data["completeness"]["delta"] is None and data["completeness"]["sum_s"] is not None
    # s = 2 A: the unit scores are 2 sum |A_k| of the image as the model sees it.
    from cxrsem.engine.preprocess import InputSpec
    from cxrsem.imageio import read_image, to_tensor

    picture = to_tensor(read_image(assets["images"] / "cxr0.png"), 64)[None]
    x = InputSpec(64).prepare(picture)
    acts = {}
    handle = dict(assets["model"].named_modules())[LAYER].register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        logits = assets["model"](x)
    handle.remove()
    np.testing.assert_allclose(data["units"], unit_scores(2 * acts["a"].double())[0].numpy(),
                               rtol=1e-5)
    # The logits the core filled in give the prediction and the default target.
    probs = torch.sigmoid(logits)[0]
    assert data["target"]["name"] == ["effusion", "edema"][int(probs.argmax())]
    assert data["prediction"]["effusion"] == pytest.approx(float(probs[0]), rel=1e-5)
    assert 'method = "act-times-one"' in (out / "config.toml").read_text()

    code, stdout, stderr = run_cli(["report", dissect, "--attributions", out, "--out",
                                    tmp_path / "r.html"], capsys)
    assert code == 0, stderr
    page = (tmp_path / "r.html").read_text()
    assert "cxr0.png" in page and "cxr1.png" in page and "Nodule" in page
    assert "method act-times-one (scale=2.0)" in page  # the report says which method explained


def test_the_report_names_the_method_of_each_record():
    from cxrsem.formats.attribution import describe_method

    assert describe_method({"attribution_method": "ig", "method": "gausslegendre", "steps": 8,
                            "method_options": {"rule": "gausslegendre", "steps": 8}}) == (
        "ig (gausslegendre, 8 steps)")
    # A record written before methods were components: its "method" was IG's rule.
    assert describe_method({"method": "riemann-left", "steps": 32}) == "ig (riemann-left, 32 steps)"
    assert describe_method({"attribution_method": "grad", "method_options": {}}) == "grad"


def test_method_gausslegendre_is_deprecated_and_means_ig(assets, tmp_path, capsys):
    code, _, stderr = run_cli(_args(assets, tmp_path / "old", "--steps", "4", "--method",
                                    "gausslegendre"), capsys)
    assert code == 0, stderr
    warned = [line for line in stderr.splitlines() if "deprecated" in line]
    assert warned == ["Warning: --method gausslegendre is deprecated; use --rule gausslegendre "
                      "(--method now names the attribution method, default ig)"]
    old = json.loads((tmp_path / "old" / "cxr0.json").read_text())
    code, _, stderr = run_cli(_args(assets, tmp_path / "new", "--steps", "4"), capsys)
    assert code == 0 and "deprecated" not in stderr
    new = json.loads((tmp_path / "new" / "cxr0.json").read_text())
    assert old["units"] == new["units"] and old["attribution_method"] == "ig"
    assert (old["method"], old["steps"], old["baseline"]) == ("gausslegendre", 4, "zero activations")


def test_python_api_method_rule_is_deprecated(assets):
    image = assets["images"] / "cxr0.png"
    with pytest.warns(DeprecationWarning, match="use --rule riemann-left"):
        old = cxrsem.attribute(image, assets["ckpt"], "denseblock4", steps=4,
                               method="riemann-left")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = cxrsem.attribute(image, assets["ckpt"], "denseblock4", steps=4, rule="riemann_left")[0]
    assert old.data["units"] == new.data["units"]
    assert new.data["method"] == "riemann-left" and new.data["method_options"] == {
        "rule": "riemann-left", "steps": 4}
    with pytest.raises(cxrsem.CxrsemError, match="contradicts"):
        cxrsem.attribute(image, assets["ckpt"], "denseblock4", method="riemann-left",
                         rule="riemann-middle")


def test_rule_reaches_integrated_gradients(assets, tmp_path, capsys, monkeypatch):
    seen = []
    original = cxrsem.attribution.ig._integrate

    def spy(split, images, quadrature, **kwargs):
        seen.append((quadrature.rule, quadrature.steps))
        return original(split, images, quadrature, **kwargs)

    monkeypatch.setattr("cxrsem.attribution.ig._integrate", spy)
    code, _, stderr = run_cli(_args(assets, tmp_path / "o", "--rule", "riemann-left", "--steps",
                                    "32"), capsys)
    assert code == 0, stderr
    assert seen == [("riemann-left", 32)]
    data = json.loads((tmp_path / "o" / "cxr1.json").read_text())
    assert (data["method"], data["steps"]) == ("riemann-left", 32)
    # The same numbers as integrated_gradients called directly with that rule.
    from cxrsem.attribution.targets import default_columns, values_function
    from cxrsem.engine.preprocess import InputSpec
    from cxrsem.engine.split import split_at
    from cxrsem.imageio import read_image, to_tensor

    x = InputSpec(64).prepare(to_tensor(read_image(assets["images"] / "cxr1.png"), 64)[None])
    direct = integrated_gradients(split_at(assets["model"], LAYER, x), x,
                                  values=values_function("multilabel", 2),
                                  columns=default_columns("multilabel"), steps=32,
                                  method="riemann-left")
    np.testing.assert_allclose(data["units"], direct.unit_contributions[0].double().numpy(),
                               rtol=1e-4, atol=1e-8)  # float32, a batch of two vs one image


def test_contract_checks_pass_for_a_good_method_and_fail_for_bad_ones(register_plugin):
    def bad_shape(**options):
        def method(split, images, *, values, columns, batch_size, progress=None):
            acts, _ = split.head(images)
            return LayerAttribution(attributions=acts.flatten(2).detach())
        return method

    def batch_dependent(**options):
        def method(split, images, *, values, columns, batch_size, progress=None):
            acts, _ = split.head(images)
            return LayerAttribution(attributions=(acts - acts.mean(0, keepdim=True)).detach())
        return method

    def half_completeness(**options):
        def method(split, images, *, values, columns, batch_size, progress=None):
            acts, _ = split.head(images)
            return LayerAttribution(attributions=acts.detach(), f_input=torch.zeros(len(images)))
        return method

    class Bad:
        @staticmethod
        @hookimpl
        def register_attribution_methods(register):
            register(AttributionMethodInfo(name="bad-shape", factory=bad_shape))
            register(AttributionMethodInfo(name="batch-dependent", factory=batch_dependent))
            register(AttributionMethodInfo(name="half", factory=half_completeness))

    register_plugin(ActTimesOne(), "good")
    register_plugin(Bad(), "bad")
    result = check_attribution_method("act-times-one", scale=3.0)
    assert result.f_input is None
    with pytest.raises(AssertionError, match="'bad-shape': attributions have shape"):
        check_attribution_method("bad-shape")
    with pytest.raises(AssertionError, match="'batch-dependent': depends on batch_size or on"):
        check_attribution_method("batch-dependent")
    with pytest.raises(AssertionError, match="'half': gives one of f_input and f_baseline"):
        check_attribution_method("half")
