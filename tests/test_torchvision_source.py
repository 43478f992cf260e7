"""``--model torchvision:NAME`` / ``timm:NAME`` with local weights (issue 17): every torchvision
classification model, the user's weights in any of the usual wrappings, nothing downloaded, and
one clear line for every mismatch."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torchvision

import cxrsem
from cxrsem.checkpoint import build_model, load_model
from cxrsem.dissection import DissectSettings
from cxrsem.errors import CheckpointError, UsageError
from cxrsem.testing import run_cli


@pytest.fixture
def resnet_weights(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    return net, tmp_path


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp"])
def test_weights_in_every_usual_wrapping_load_exactly(resnet_weights, wrap):
    net, tmp = resnet_weights
    state = net.state_dict()
    data = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
            "model": {"model": state}, "ddp": {f"module.{k}": v for k, v in state.items()}}[wrap]
    torch.save(data, tmp / "w.pt")
    checkpoint = load_model("torchvision:resnet18", {"weights": str(tmp / "w.pt"), "input_size": 64})
    assert checkpoint["task"]["outputs"] == ["output0", "output1", "output2"]  # from fc's size
    assert checkpoint["input"] == {"size": 64, "channels": 3, "normalization": {
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert checkpoint["arch"]["layer"] == "layer4"
    rebuilt = build_model(checkpoint)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), net.eval()(x), atol=1e-6)


def test_mismatches_and_missing_files_are_one_line(resnet_weights):
    net, tmp = resnet_weights
    torch.save(net.state_dict(), tmp / "w.pt")
    with pytest.raises(CheckpointError, match=r"1 of another shape|2 of another shape") as info:
        load_model("torchvision:resnet18", {"weights": str(tmp / "w.pt"), "num_outputs": 5})
    assert "fc.weight (3, 512) vs (5, 512)" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="missing"):
        load_model("torchvision:resnet34", {"weights": str(tmp / "w.pt")})
    with pytest.raises(CheckpointError, match="not found .*local files only"):
        load_model("torchvision:resnet18", {"weights": str(tmp / "nope.pt")})
    with pytest.raises(UsageError, match="did you mean 'resnet18'"):
        load_model("torchvision:resnet81", {"num_outputs": 2})
    with pytest.raises(UsageError, match="how many outputs"):
        load_model("torchvision:resnet18")
    torch.save({"a": 1}, tmp / "junk.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model("torchvision:resnet18", {"weights": str(tmp / "junk.pt")})
    with pytest.raises(CheckpointError, match="apply to model sources"):
        load_model(str(tmp / "w.pt"), {"num_outputs": 2})


def test_a_grey_one_channel_stem_gives_what_the_rgb_stem_gave_the_grey_image():
    from cxrsem.default_plugins.torchvision_models import build_torchvision, set_input_channels

    torch.manual_seed(1)
    rgb = build_torchvision(num_outputs=2, model="resnet18").eval()
    grey = set_input_channels(build_torchvision(num_outputs=2, model="resnet18"), 1).eval()
    grey.load_state_dict({**rgb.state_dict(), "conv1.weight": rgb.conv1.weight.sum(1, keepdim=True)})
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5)
    # set_input_channels itself keeps that sum: the mean over inputs, repeated, times 3 / 1.
    fresh = build_torchvision(num_outputs=2, model="resnet18")
    summed = fresh.conv1.weight.detach().sum(1, keepdim=True)
    assert torch.allclose(set_input_channels(fresh, 1).conv1.weight, summed, atol=1e-6)


def test_dissect_and_attribute_a_torchvision_model_from_the_cli(resnet_weights, capsys):
    net, tmp = resnet_weights
    torch.save(net.state_dict(), tmp / "w.pt")
    options = {"weights": str(tmp / "w.pt"), "input_size": 64}
    result = cxrsem.dissect("torchvision:resnet18", "layer4", "phantom", model_options=options,
                            concept_options={"phantom": {"n_images": 16}},
                            settings=DissectSettings(seg_size=16, quantile=0.02), device="cpu")
    assert result.layers[0].layer == "layer4" and result.layers[0].thresholds.shape == (512,)
    images = torch.rand(1, 1, 64, 64)
    (item,) = cxrsem.attribute(images, "torchvision:resnet18", "layer4", model_options=options,
                               steps=4, device="cpu")
    assert len(item.data["units"]) == 512 and np.isfinite(item.data["units"]).all()


def test_timm_models_when_timm_is_there(resnet_weights, monkeypatch):
    net, tmp = resnet_weights
    calls = []

    def create_model(name, pretrained, num_classes, in_chans):
        calls.append((name, pretrained, num_classes, in_chans))
        return torchvision.models.resnet18(num_classes=num_classes)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    torch.save(net.state_dict(), tmp / "w.pt")
    checkpoint = load_model("timm:resnet18", {"weights": str(tmp / "w.pt"), "num_outputs": 3})
    assert checkpoint["arch"] == {"name": "timm", "kwargs": {"model": "resnet18"}, "layer": "layer4"}
    assert all(pretrained is False for _n, pretrained, *_ in calls)  # never a download
    build_model(checkpoint)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UsageError, match=r"pip install 'cxrsem\[timm\]'"):
        load_model("timm:resnet18", {"num_outputs": 3})


def test_plugins_lists_the_sources(capsys):
    code, out, _ = run_cli(["plugins"], capsys)
    assert code == 0 and "torchvision" in out and "timm" in out


def test_the_cli_dissects_a_torchvision_model_with_its_weights_as_typed(resnet_weights, capsys,
                                                                       monkeypatch):
    net, tmp = resnet_weights
    torch.save({"state_dict": net.state_dict()}, tmp / "w.pt")
    monkeypatch.chdir(tmp)
    code, out, err = run_cli(["dissect", "--model", "torchvision:resnet18", "--weights", "w.pt",
                              "--input-size", 64, "--concept-opt", "phantom.n_images=12",
                              "--seg-size", 16, "--no-figures", "--quiet"], capsys)
    assert code == 0, err
    record = tmp / "runs" / "dissect" / "torchvision-resnet18" / "torchvision-resnet18" / "layer4"
    assert (record / "dissection.json").is_file(), out   # the default layer: the last stage
    code, _, err = run_cli(["dissect", "--model", "torchvision:resnet18", "--weights", "nope.pt",
                            "--quiet"], capsys)
    assert code != 0 and "nope.pt not found" in err and "Traceback" not in err


def test_attribute_records_the_model_source_options_in_its_config(resnet_weights, tmp_path, capsys):
    import tomllib

    net, tmp = resnet_weights
    torch.save(net.state_dict(), tmp / "w.pt")
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp / "x.png")
    code, _, err = run_cli(["attribute", tmp / "x.png", "--model", "torchvision:resnet18",
                            "--weights", tmp / "w.pt", "--input-size", 64, "--steps", 4,
                            "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    config = tomllib.loads((tmp_path / "a" / "config.toml").read_text())["attribute"]
    assert config["weights"] == str(tmp / "w.pt") and config["input_size"] == 64
    assert config["layer"] == "layer4"
