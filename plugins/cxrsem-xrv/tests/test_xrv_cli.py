"""End to end through the CLI: dissect and attribute ``xrv:`` models like any checkpoint."""

from __future__ import annotations

import json

import numpy as np
from cxrsem.testing import run_cli
from PIL import Image


def test_dissect_then_attribute_an_xrv_model(cache, tmp_path, capsys):
    out = tmp_path / "dissect"
    code, _, err = run_cli(["dissect", "--model", "xrv:densenet121-res224-all", "--layer", "denseblock4",
                            "--concepts", "phantom", "--concept-opt", "phantom.n_images=2", "--limit", "2",
                            "--seg-size", "28", "--quantile", "0.05", "--no-figures", "--quiet",
                            "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, err
    result_file = next(out.rglob("dissection.json"))
    result = json.loads(result_file.read_text())
    assert result["model"]["path"] == "xrv:densenet121-res224-all"
    assert result["layer"] == "features.denseblock4"
    assert len(result["units"]) == 1024  # DenseNet-121's denseblock4 channels

    image = tmp_path / "cxr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 256), dtype=np.uint8)).save(image)
    code, _, err = run_cli(["attribute", str(image), "--model", "xrv:densenet121-res224-all",
                            "--layer", "denseblock4", "--dissection", str(out), "--target", "Effusion",
                            "--steps", "4", "--device", "cpu", "--out", str(tmp_path / "attr")], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "attr" / "cxr.json").read_text())
    assert record["target"]["name"] == "Effusion"
    assert record["model"]["path"] == "xrv:densenet121-res224-all"


def test_missing_weights_are_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRSEM_XRV_CACHE", str(tmp_path))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    code, _, err = run_cli(["attribute", str(image), "--model", "xrv:densenet121-res224-rsna",
                            "--layer", "denseblock4", "--out", str(tmp_path / "a")], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:")
    assert str(tmp_path / "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt") in lines[0]
