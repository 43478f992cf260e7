"""``cxrsem verify``: deletion/insertion curves per attribution method over a dataset split and
concept ablation against random units, checked against independent computations (a forward hook
that zeroes the units, torchmetrics through ``compute_metrics``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrsem.api import create_dataset
from cxrsem.attribution.verify import VerifySettings, verify
from cxrsem.engine.preprocess import InputSpec
from cxrsem.testing import mini_densenet, run_cli, tiny_checkpoint
from cxrsem.training.metrics import compute_metrics

OUTPUTS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Ground Glass Opacities", "Mass",
           "Nodule", "Pleural Effusion", "Pneumothorax"]


@pytest.fixture
def model(tmp_path):
    return tiny_checkpoint(tmp_path / "m.pt", mini_densenet(seed=1, outputs=8), arch="densenet-mini",
                           image_size=48, outputs=OUTPUTS)


@pytest.fixture
def dissected(tmp_path, model, capsys):
    out = tmp_path / "d"
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "denseblock4", "--concept-opt",
                            "phantom.n_images=40", "--seg-size", 24, "--quantile", 0.02,
                            "--iou-threshold", 0.02, "--no-figures", "--out", out, "--quiet"],
                           capsys)
    assert code == 0, err
    return out / "m"


SETTINGS = dict(methods=("ig", "activation"), ks=(1, 4, 10_000), random_draws=3, steps=4, limit=12,
                batch_size=6, resamples=50)


def test_curves_end_where_every_unit_is_zeroed(model):
    result = verify(model, "denseblock4", "phantom", dataset_options={"n_val": 12}, device="cpu",
                    settings=VerifySettings(**SETTINGS))
    assert result.images == 12 and [c.method for c in result.curves] == ["ig", "activation"]
    # Zeroing every unit removes the same thing whatever the ranking: f(A) - f(0), for each
    # method and for the random sets; keeping every unit keeps it all.
    last = [c.deletion[-1].value for c in result.curves + [result.random]]
    assert np.allclose(last, last[0], rtol=1e-6)
    kept = [c.insertion[-1].value for c in result.curves + [result.random]]
    assert np.allclose(kept, last, rtol=1e-6)
    for c in result.curves:
        assert c.aopc.value == pytest.approx(np.mean([e.value for e in c.deletion]), rel=1e-9)
        assert c.aopc.low <= c.aopc.value <= c.aopc.high


def test_concept_ablation_equals_zeroing_the_units_with_a_hook(model, dissected):
    result = verify(model, "denseblock4", "phantom", dissection=dissected,
                    dataset_options={"n_val": 12}, device="cpu", settings=VerifySettings(**SETTINGS))
    record = json.loads(next(dissected.glob("*/dissection.json")).read_text())
    expected = {}
    for unit in record["units"]:
        if unit["detector"]:
            expected.setdefault(unit["concept"], []).append(unit["unit"])
    assert {c.concept: c.units for c in result.concepts} == expected and expected
    # The independent computation: the whole model, a forward hook zeroing the units.
    from cxrsem.checkpoint import build_model, load_model

    checkpoint = load_model(str(model))
    net = build_model(checkpoint)
    spec = InputSpec.from_checkpoint(checkpoint)
    data = create_dataset("phantom", split="val", image_size=48, n_val=12)
    images = torch.stack([data[i]["image"] for i in range(12)])
    targets = torch.stack([data[i]["targets"]["multilabel"] for i in range(12)])
    layer = dict(net.named_modules())["features.denseblock4"]

    def metric(units):
        handle = layer.register_forward_hook(
            lambda _m, _i, out: out.index_fill(1, torch.tensor(units, dtype=torch.long), 0.0)
            if units else out)
        try:
            with torch.no_grad():
                logits = net(spec.prepare(images, device=torch.device("cpu"), dtype=torch.float32))
        finally:
            handle.remove()
        return compute_metrics("multilabel", logits, targets, OUTPUTS)["auroc_mean"]

    base = metric([])
    assert result.metric == "auroc_mean" and result.metric_value == pytest.approx(base, abs=1e-6)
    for concept in result.concepts:
        assert concept.change.value == pytest.approx(metric(concept.units) - base, abs=1e-6)
        # The paired difference against random units is the difference of the two estimates.
        assert concept.excess.value == pytest.approx(concept.change.value - concept.random_change.value,
                                                     abs=1e-12)
        assert concept.excess.low <= concept.excess.value <= concept.excess.high
        assert 0.0 <= concept.excess_p <= 1.0


def test_verify_cli_writes_its_record_and_refuses_bad_input(tmp_path, model, capsys):
    out = tmp_path / "v"
    code, stdout, err = run_cli(["verify", "--model", model, "--layer", "denseblock4", "--dataset",
                                 "phantom", "--dataset-opt", "n_val=8", "--limit", 8, "--methods",
                                 "ig,gradcam", "--steps", 4, "--ablate-k", "1,2", "--ablate-random",
                                 2, "--resamples", 20, "--out", out, "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "verify.json").read_text())
    assert record["schema"] == "cxrsem-verify/1" and record["images"] == 8
    assert [c["method"] for c in record["curves"]] == ["ig", "gradcam"]
    assert "AOPC" in stdout and record["sentences"][0].startswith("AOPC")
    for bad in (["--methods", "nope"], ["--ablate-k", "0"], ["--resamples", "0"]):
        code, _, err = run_cli(["verify", "--model", model, "--layer", "denseblock4", "--dataset",
                                "phantom", *bad], capsys)
        assert code == 2 and err.count("\n") == 1, (bad, err)


def test_localisation_on_the_phantom_s_masks_through_the_cli(tmp_path, model, dissected, capsys):
    out = tmp_path / "v"
    code, stdout, err = run_cli(["verify", "--model", model, "--layer", "denseblock4", "--dataset",
                                 "phantom", "--dataset-opt", "n_val=6", "--limit", 16, "--methods",
                                 "ig,activation", "--steps", 4, "--ablate-k", "1",
                                 "--ablate-random", 1, "--resamples", 20, "--dissection", dissected,
                                 "--concepts", "phantom", "--concept-opt", "phantom.n_images=20",
                                 "--out", out, "--quiet"],
                                capsys)
    assert code == 0, err
    local = json.loads((out / "verify.json").read_text())["localisation"]
    assert local["concept_sets"] == ["phantom"] and local["images"] == 16  # --limit holds
    assert local["options"]["phantom"]["n_images"] == 20 and local["mask_size"] == 24
    assert [m["method"] for m in local["methods"]] == ["ig", "activation"]
    # Whether an image counts depends on its annotations, not on the method.
    counted = {row["images"] for row in local["methods"]}
    assert len(counted) == 1 and 0 < counted.pop() <= 16
    for row in local["methods"]:
        assert sum(row["concepts"].values()) == row["images"]
        for measure in ("pointing_game", "relevance_mass"):
            estimate = row[measure]
            assert 0 <= estimate["low"] <= estimate["value"] <= estimate["high"] <= 1
    text = " ".join(stdout.split())
    assert "pointing game" in text and "relevance mass" in text and "images counted" in text
    for bad, message in ((["--concepts", "phantom"], "needs --dissection"),
                         (["--concept-opt", "phantom.n_images=4"], "without --concepts")):
        code, _, err = run_cli(["verify", "--model", model, "--layer", "denseblock4", "--dataset",
                                "phantom", *bad], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (bad, err)


def test_undefined_values_are_null_in_the_record():
    from cxrsem.attribution.verify import Estimate

    assert Estimate(float("nan"), 0.1, float("inf")).to_json() == {"value": None, "low": 0.1,
                                                                  "high": None}


def test_aopc_comparisons_are_paired_differences_of_the_methods_aopc(model):
    from cxrsem.attribution.verify import _comparisons, _resamples
    from cxrsem.statistics.bootstrap import holm

    result = verify(model, "denseblock4", "phantom", dataset_options={"n_val": 12}, device="cpu",
                    settings=VerifySettings(**SETTINGS))
    by_pair = {(c.first, c.second): c for c in result.comparisons}
    assert list(by_pair) == [("ig", "activation"), ("ig", "random"), ("activation", "random")]
    aopc = {c.method: c.aopc.value for c in result.curves + [result.random]}
    for (a, b), c in by_pair.items():
        # The mean of per-image differences is the difference of the means.
        assert c.difference.value == pytest.approx(aopc[a] - aopc[b], rel=1e-9, abs=1e-12)
        assert c.difference.low <= c.difference.value <= c.difference.high
    assert [c.p_adjusted for c in result.comparisons] == pytest.approx(
        holm([c.p_value for c in result.comparisons]))

    # Against a naive computation: image 0 of one method is larger by 1 than the other's.
    per_image = {"x": np.array([1.0, 0.0, 0.0, 0.0]), "y": np.zeros(4)}
    draws = _resamples(4, 400, seed=3)
    (c,) = _comparisons(per_image, draws, 0.95)
    boot = np.array([np.mean([1.0 if i == 0 else 0.0 for i in row]) for row in draws])
    assert c.difference.value == 0.25
    assert (c.difference.low, c.difference.high) == pytest.approx(
        tuple(np.percentile(boot, [2.5, 97.5])))
    assert c.p_value == pytest.approx(min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))))
