"""Model sources (``--model NAME:SPEC``): a plugin hands cxrsem a ready-made model as a checkpoint
dict, and dissect/attribute treat it exactly like a checkpoint file."""

from __future__ import annotations

import json

import pytest
import torch

from cxrsem import plugins
from cxrsem.checkpoint import load_checkpoint, load_model, make_checkpoint, source_prefix
from cxrsem.components import ModelSourceInfo
from cxrsem.errors import CheckpointError
from cxrsem.hookspecs import hookimpl
from cxrsem.testing import TestKitPlugin, TinyConvNet, run_cli, tiny_checkpoint

CALLS: list[str] = []


def zoo_model(*, spec: str) -> dict:
    CALLS.append(spec)
    if spec == "broken":
        return {"format": "something-else"}
    torch.manual_seed(len(spec))
    model = TinyConvNet(2, 1)
    return make_checkpoint(model, arch="tiny-conv", arch_kwargs={}, task_kind="multilabel",
                           outputs=["Effusion", "Mass"], image_size=32,
                           normalization={"mean": [0.5], "std": [0.25]})


class ZooPlugin:
    @staticmethod
    @hookimpl
    def register_model_sources(register):
        register(ModelSourceInfo(name="zoo", factory=zoo_model, specs=("tiny-a", "broken"),
                                 description="tiny ready-made models; for tests"))


@pytest.fixture(autouse=True)
def zoo():
    plugins.register_plugin(TestKitPlugin(), "testkit")
    plugins.register_plugin(ZooPlugin(), "zoo")
    CALLS.clear()


def test_source_prefix_tells_specs_from_paths(tmp_path):
    assert source_prefix("xrv:densenet121-res224-all") == "xrv"
    assert source_prefix("runs/a/best.pt") is None
    assert source_prefix("C:\\runs\\best.pt") is None  # a Windows drive letter is not a source
    existing = tmp_path / "odd:name.pt"
    existing.write_bytes(b"")
    assert source_prefix(str(existing)) is None  # an existing file always wins


def test_load_model_goes_through_the_source_and_validates(tmp_path):
    checkpoint = load_model("zoo:tiny-a")
    assert CALLS == ["tiny-a"]
    assert checkpoint["task"]["outputs"] == ["Effusion", "Mass"]
    path = tiny_checkpoint(tmp_path / "m.pt")
    assert load_model(str(path))["arch"] == load_checkpoint(path)["arch"]
    with pytest.raises(CheckpointError, match="unknown zoo model 'tiny-b'.*did you mean 'tiny-a'"):
        load_model("zoo:tiny-b")
    with pytest.raises(CheckpointError, match="not a cxrsem checkpoint"):
        load_model("zoo:broken")
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor .*unknown model source 'zo0'"):
        load_model("zo0:tiny-a")


def test_dissect_and_attribute_a_source_model(tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, err = run_cli(["dissect", "--model", "zoo:tiny-a", "--layer", "features",
                                 "--concepts", "toy-blobs", "--seg-size", "16", "--quantile", "0.05",
                                 "--no-figures", "--quiet", "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(next(out.rglob("dissection.json")).read_text())
    assert result["model"]["path"] == "zoo:tiny-a"
    assert next(out.rglob("dissection.json")).parent.parent.name == "zoo-tiny-a"

    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((torch.rand(40, 40) * 255).byte().numpy()).save(image)
    code, stdout, err = run_cli(["attribute", str(image), "--model", "zoo:tiny-a", "--layer", "features",
                                 "--target", "Mass", "--steps", "8", "--device", "cpu",
                                 "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "a" / "x.json").read_text())
    assert record["target"]["name"] == "Mass"
    assert record["model"]["path"] == "zoo:tiny-a"


def test_plugins_lists_the_source_and_its_specs(capsys):
    code, stdout, _ = run_cli(["plugins", "--details"], capsys)
    assert code == 0
    assert "model sources: zoo" in stdout
    assert "--model zoo:SPEC with SPEC one of tiny-a, broken" in stdout


def test_a_state_dict_that_does_not_fit_is_named_in_one_line():
    from cxrsem.checkpoint import build_model

    checkpoint = load_model("zoo:tiny-a")
    state = dict(checkpoint["state_dict"])
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(1)
    state["features.0.weight"] = torch.zeros(3, 1, 3, 3)
    with pytest.raises(CheckpointError) as info:
        build_model({**checkpoint, "state_dict": state}, source="zoo:tiny-a")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("zoo:tiny-a does not fit architecture 'tiny-conv': 1 missing (classifier.bias); "
            "1 unexpected (extra.weight); 1 of another shape (features.0.weight (3, 1, 3, 3) vs "
            "(8, 1, 3, 3))")
