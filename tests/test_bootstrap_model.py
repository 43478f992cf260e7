"""``dissect --bootstrap`` through a real model pass on the hand-built model of
:mod:`tests.chance_models`: the intervals must say what the units are -- unit 0's IoU interval
lies inside [0.9, 1] with P(detector) = 1, the noise unit's interval holds its own estimate and it
is (almost) never a detector."""

from __future__ import annotations

import json

from cxrsem.testing import run_cli
from tests.chance_models import MASK, MaskPlugin, mask_reader_checkpoint


def test_a_unit_that_is_the_mask_and_a_noise_unit_through_the_model(tmp_path, capsys, register_plugin):
    register_plugin(MaskPlugin(), "mask-plugin")
    model = mask_reader_checkpoint(tmp_path / "reader.pt")
    # q = 0.01 is below the mask's share of all pixels (12 of 48 images, 20 of 256 pixels: 2%), so
    # T_0 is 1 and unit 0's mask (activation >= T_0) is exactly the Consolidation mask; the noise
    # unit's top 1% fall anywhere.
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "features", "--concepts",
                            "mask-channel", "--seg-size", MASK, "--quantile", 0.01,
                            "--bootstrap", 400, "--no-figures", "--out", tmp_path / "d", "--quiet"],
                           capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "d" / "reader" / "features" / "dissection.json").read_text())
    mask_unit, noise_unit, _location = record["units"]
    assert mask_unit["concept"] == "Consolidation" and mask_unit["iou"] == 1.0
    low, high = mask_unit["iou_interval"]
    assert 0.9 <= low <= high <= 1.0 and mask_unit["p_detector"] == 1.0
    low, high = noise_unit["iou_interval"]
    assert low <= noise_unit["iou"] <= high and noise_unit["iou"] < 0.04
    assert noise_unit["p_detector"] <= 0.1
    assert record["bootstrap"]["detectors"]["Consolidation"] == {"count": 1.0, "low": 1.0, "high": 1.0}
