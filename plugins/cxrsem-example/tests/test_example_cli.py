"""The installed plugin, found through its ``cxrsem`` entry point, end to end on the command line."""

from __future__ import annotations

import importlib.metadata
import json

import cxrsem
import pytest
from cxrsem.cli import main

from cxrsem_example.demo import write_demo

try:
    importlib.metadata.distribution("cxrsem-example")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("cxrsem-example is not installed (pip install -e plugins/cxrsem-example)",
                allow_module_level=True)


@pytest.fixture(autouse=True)
def _entry_points_only(monkeypatch, cxrsem_fresh_registry):
    monkeypatch.delenv("CXRSEM_DISABLE_PLUGINS", raising=False)


def run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0


def test_cxrsem_plugins_lists_the_entry_point(capsys):
    run(["plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["example"]["source"] == "cxrsem-example"
    assert listed["example"]["error"] is None
    assert listed["example"]["components"] == {
        "architecture": ["resnet50"], "concept_set": ["mask-folder"], "dataset": ["csv-folder"],
        "loss": ["focal"]}


def test_disabled_by_its_entry_point_name(monkeypatch):
    assert "csv-folder" in cxrsem.list_datasets()
    monkeypatch.setenv("CXRSEM_DISABLE_PLUGINS", "example")
    cxrsem.plugins.reset()
    assert "csv-folder" not in cxrsem.list_datasets()
    assert "resnet50" not in cxrsem.list_architectures()


@pytest.mark.slow
def test_train_with_focal_resnet50_on_a_csv_folder_then_dissect_layer4(tmp_path, one_thread):
    csv_root, mask_root = write_demo(tmp_path / "data", images=12, size=64)
    run(["train", "--dataset", "csv-folder", "--loss", "focal", "--arch", "resnet50",
         "--data-root", f"csv-folder={csv_root}", "--dataset-opt", "val_fraction=0.3",
         "--dataset-opt", "test_fraction=0", "--image-size", "64", "--epochs", "1",
         "--batch-size", "16", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1
    run(["dissect", "--model", str(tmp_path / "run" / "best.pt"), "--layer", "layer4",
         "--concepts", "mask-folder", "--data-root", f"mask-folder={mask_root}", "--seg-size", "16",
         "--device", "cpu", "--no-figures", "--quiet", "--out", str(tmp_path / "dissect")])
    result = json.loads(next((tmp_path / "dissect").rglob("dissection.json")).read_text())
    assert result["layer"] == "layer4"
    assert len(result["units"]) == 2048
    assert result["concept_sets"] == [{"name": "mask-folder", "concepts": [
        "Cardiomediastinum", "Consolidation", "Pleural Effusion"]}]
    images_with = {c["name"]: c["images"] for c in result["concepts"]}
    assert images_with["Cardiomediastinum"] == 12  # the heart shadow is in every phantom
