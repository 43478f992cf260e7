"""`cxrsem dissect` on the command line: argument hand-off, an end-to-end run, bad input."""

from __future__ import annotations

import json

import pytest

from cxrsem import plugins
from cxrsem.testing import TestKitPlugin, run_cli, tiny_checkpoint


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def test_command_hands_its_options_to_the_library(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_dissect(models, layers, **kwargs):
        seen.update(models=models, layers=layers, **kwargs)
        return []

    monkeypatch.setattr("cxrsem.cli.dissect.dissect", fake_dissect)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dissect]\nseg-size = 56\nquantile = 0.01\n[concepts.toy-blobs]\nn_images = 5\n')
    code, _, err = run_cli(["dissect", "--model", "a.pt", "--model", "b.pt", "--layer", "features",
                            "--concepts", "toy-blobs", "--quantile", "0.02", "--quantile-sample", "100",
                            "--concept-opt", "toy-blobs.order=reverse", "--data-root", "nih=/data/nih",
                            "--out", str(tmp_path / "o"), "--config", str(cfg), "--quiet"], capsys)
    assert code == 0, err
    assert seen["models"] == ["a.pt", "b.pt"] and seen["layers"] == ["features"]
    settings = seen["settings"]
    assert settings.quantile == 0.02 and settings.seg_size == 56 and settings.quantile_sample == 100
    assert seen["concept_options"] == {"toy-blobs": {"n_images": 5, "order": "reverse"}}
    assert seen["data_roots"] == {"nih": "/data/nih"}


def test_end_to_end_on_a_glob_of_epoch_checkpoints(tmp_path, capsys):
    for epoch in (0, 1):
        tiny_checkpoint(tmp_path / "run" / f"epoch-{epoch:03d}.pt", seed=epoch)
    code, out, err = run_cli(["dissect", "--model", str(tmp_path / "run" / "epoch-*.pt"), "--layer",
                              "features", "--concepts", "toy-blobs", "--seg-size", "16", "--quantile",
                              "0.05", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    assert code == 0, err
    for epoch in ("epoch-000", "epoch-001"):
        record = json.loads((tmp_path / "d" / epoch / "features" / "dissection.json").read_text())
        assert record["model"]["path"].endswith(f"{epoch}.pt")
    assert "blob-a" in out and "detectors of 8 units" in out


@pytest.mark.parametrize("args, fragment", [
    (["--layer", "feature"], "unknown layer 'feature'; did you mean 'features'?"),
    (["--layer", "classifier"], "outputs neither a feature map"),
    (["--layer", "features", "--concepts", "toy-blobz"], "did you mean 'toy-blobs'?"),
    (["--layer", "features", "--quantile", "1.5"], "--quantile must be in (0, 1)"),
    (["--layer", "features", "--concept-opt", "toy-blobs.n_images=0"], "hold no images"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, fragment):
    tiny_checkpoint(tmp_path / "m.pt")
    code, _, err = run_cli(["dissect", "--model", str(tmp_path / "m.pt"), "--concepts", "toy-blobs",
                            "--out", str(tmp_path / "d"), "--quiet", *args], capsys)
    last = err.strip().splitlines()[-1]
    assert code != 0 and last.startswith("Error: ") and fragment in last, err
    assert err.count("Error") == 1 and "Traceback" not in err
    assert not list((tmp_path / "d").rglob("dissection.json"))


def test_checkpoint_that_does_not_load(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    code, _, err = run_cli(["dissect", "--model", str(tmp_path / "bad.pt"), "--layer", "features",
                            "--concepts", "toy-blobs", "--out", str(tmp_path / "d")], capsys)
    assert code == 1 and "cannot read checkpoint" in err
    code, _, err = run_cli(["dissect", "--model", str(tmp_path / "none-*.pt"), "--layer", "features",
                            "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "matches no file" in err
