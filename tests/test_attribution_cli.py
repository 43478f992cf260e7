"""``cxrsem attribute`` end to end: outputs, terminal table, config merge, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cxrsem.testing import attribution_assets, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return attribution_assets(tmp_path_factory.mktemp("cli"), picture_shape=(70, 60))


def _base(assets, out, *images):
    return ["attribute", *images, "--model", assets["ckpt"], "--layer", "denseblock4",
            "--steps", "6", "--out", out]


def test_attribute_folder_end_to_end(assets, tmp_path, capsys):
    out = tmp_path / "attr"
    code, stdout, stderr = run_cli(_base(assets, out, assets["images"]), capsys)
    assert code == 0, stderr
    assert "features.denseblock4" in stdout and "fx path" in stdout
    assert "cxr0.png" in stdout and "cxr1.png" in stdout
    assert "2 attribution(s)" in stdout
    for stem in ("cxr0", "cxr1"):
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["schema"] == "cxrsem-attribution/1" and data["steps"] == 6
        assert (out / f"{stem}.png").is_file()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert "steps = 6" in (out / "config.toml").read_text()


def test_corrupt_image_in_folder_is_skipped_with_a_warning(assets, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "good.png").write_bytes((assets["images"] / "cxr0.png").read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = tmp_path / "attr"
    code, stdout, stderr = run_cli(_base(assets, out, folder), capsys)
    assert code == 0
    assert "Warning: skipped" in stderr and "corrupt.png" in stderr
    assert "1 image(s) skipped" in stdout
    rows = {Path(r["image"]).name: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["corrupt.png"]["status"] == "skipped" and rows["good.png"]["status"] == "ok"


def _assert_one_line_error(code, stderr, expected_code, *fragments):
    assert code == expected_code
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr


def test_single_corrupt_image_is_an_error(assets, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    out = tmp_path / "attr"
    code, _, stderr = run_cli(_base(assets, out, bad), capsys)
    _assert_one_line_error(code, stderr, 1, "cannot read image", "bad.png")
    assert not out.exists()


@pytest.mark.parametrize("extra, code, fragments", [
    (["--target", "pneumonia"], 2, ["'pneumonia' is not an output", "effusion, edema"]),
    (["--target", "score"], 2, ["effusion, edema"]),
    (["--steps", "1"], 2, ["--steps must be an integer of at least 2"]),
    (["--rule", "simpson"], 2, ["unknown integration method 'simpson'"]),
    (["--method", "simpson"], 2, ["unknown attribution method 'simpson'", "ig"]),
    (["--method-opt", "stpes=4"], 2, ["option for attribution method 'ig'", "did you mean 'steps'"]),
    (["--layer", "denseblok4"], 2, ["unknown layer 'denseblok4'", "did you mean"]),
    (["--model", "missing.pt"], 1, ["checkpoint not found"]),
])
def test_bad_input_is_one_line_and_writes_nothing(assets, tmp_path, capsys, extra, code,
                                                  fragments):
    out = tmp_path / "attr"
    code_got, _, stderr = run_cli(_base(assets, out, assets["images"] / "cxr0.png") + extra, capsys)
    _assert_one_line_error(code_got, stderr, code, *fragments)
    assert not out.exists()


def test_dissection_of_another_model_is_an_error(assets, tmp_path, capsys):
    dissection = tmp_path / "dissection.json"
    dissection.write_text(json.dumps({
        "schema": "cxrsem-dissection/1", "model": {"path": "other.pt", "sha256": "ab" * 32},
        "layer": "features.denseblock4", "num_units": 69, "settings": {"iou_threshold": 0.04},
        "units": []}))
    out = tmp_path / "attr"
    code, _, stderr = run_cli(
        _base(assets, out, assets["images"] / "cxr0.png") + ["--dissection", dissection], capsys)
    _assert_one_line_error(code, stderr, 2, "computed for another model", "dissect this")
    assert not out.exists()


def test_with_dissection_the_table_names_concepts(assets, tmp_path, capsys):
    dissection = tmp_path / "dissect" / "model" / "features.denseblock4" / "dissection.json"
    dissection.parent.mkdir(parents=True)
    dissection.write_text(json.dumps({
        "schema": "cxrsem-dissection/1", "model": {"path": "model.pt", "sha256": assets["sha"]},
        "layer": "features.denseblock4", "num_units": 69, "settings": {"iou_threshold": 0.04},
        "units": [{"unit": u, "concept": "cardiomegaly", "iou": 0.2, "detector": True}
                  for u in range(69)]}))
    out = tmp_path / "attr"
    code, stdout, _ = run_cli(_base(assets, out, assets["images"] / "cxr1.png")
                              + ["--dissection", tmp_path / "dissect"], capsys)
    assert code == 0
    assert "cardiomegaly" in stdout
    data = json.loads((out / "cxr1.json").read_text())
    assert data["concepts"] == [{"concept": "cardiomegaly", "contribution": pytest.approx(
        sum(data["units"])), "share": pytest.approx(1.0), "units": 69}]


def test_config_file_fills_options_and_cli_wins(assets, tmp_path, monkeypatch, capsys):
    calls = {}

    class FakeRun(list):
        layer, path, out, summary_csv, skipped = "features.denseblock4", "fx", tmp_path, None, []

    def fake_attribute(images, model, layer, **kwargs):
        calls.update(images=images, model=model, layer=layer, **kwargs)
        return FakeRun()

    monkeypatch.setattr("cxrsem.cli.attribute.run_attribution", fake_attribute)
    config = tmp_path / "cxrsem.toml"
    config.write_text('[attribute]\nsteps = 50\nmethod = "riemann-middle"\ntop-k = 5\n')
    code, _, stderr = run_cli(["attribute", assets["images"] / "cxr0.png", "--model", "m.pt",
                               "--layer", "denseblock4", "--out", tmp_path / "o", "--steps", "9",
                               "--config", config], capsys)
    assert code == 0, stderr
    assert calls["steps"] == 9 and calls["method"] == "riemann-middle" and calls["top_k"] == 5
    assert calls["images"] == [assets["images"] / "cxr0.png"] and calls["layer"] == "denseblock4"
    assert calls["target"] is None and calls["device"] == "auto"
