"""``dissect --precision fp32|bf16|fp16``: fp32 unchanged bit for bit, reduced precision under
torch.autocast (checked against a manual autocast forward), recorded, never sharing a cache entry
with fp32, and clear errors for what cannot run."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
import torch
from torch import nn

from cxrsem import plugins
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.engine import precision as precision_module
from cxrsem.engine.precision import channels_last, supported_precision
from cxrsem.engine.preprocess import InputSpec
from cxrsem.engine.runner import run_model
from cxrsem.errors import UsageError
from cxrsem.testing import TestKitPlugin, mini_densenet, run_cli, tiny_checkpoint

# bf16 keeps 8 significand bits (2^-8 = 3.9e-3 relative per rounding), fp16 11 (4.9e-4).  On this
# seeded densenet-mini (12 phantom images) the thresholds move by at most 4.9e-3 (bf16) and 7.9e-4
# (fp16) of the layer's largest threshold, the IoUs by 2.1e-3 and 1.1e-4 (measured, torch 2.14
# CPU): the bounds are 10x that, a margin for other CPUs' kernels.
TOLERANCE = {"bf16": 5e-2, "fp16": 1e-2}
IOU_TOLERANCE = 2e-2


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("precision") / "m.pt",
                           mini_densenet(0, outputs=2), arch="densenet-mini", image_size=32)


def _dissect(model_path, out, **settings):
    return dissect(model_path, "denseblock4", concepts=["phantom"],
                   concept_options={"phantom": {"n_images": 12}}, out=out, figures=False,
                   device="cpu", settings=DissectSettings(seg_size=16, batch_size=4, **settings))


def _record(out):
    folder = next(out.rglob("dissection.json")).parent
    return (json.loads((folder / "dissection.json").read_text()),
            tomllib.loads((folder / "config.toml").read_text()))


def test_fp32_is_the_default_pass_bit_for_bit(model_path, tmp_path):
    default = _dissect(model_path, tmp_path / "a")
    explicit = _dissect(model_path, tmp_path / "b", precision="fp32")
    a, b = default.layers[0], explicit.layers[0]
    assert a.thresholds.tobytes() == b.thresholds.tobytes()
    assert a.iou.tobytes() == b.iou.tobytes()
    # An fp32 entry keeps the cache key it had before --precision existed.
    assert "precision" not in default.cache.description
    assert default.cache.dir.name == explicit.cache.dir.name
    record, config = _record(tmp_path / "b")
    assert record["settings"]["precision"] == "fp32" and config["dissect"]["precision"] == "fp32"


def test_run_model_fp32_leaves_the_plain_forward_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    spec = InputSpec(size=16, channels=1, normalization={"mean": [0.5], "std": [0.25]})
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = model[0](spec.prepare(images))
    for kwargs in ({}, {"precision": "fp32"}):
        (step,) = run_model(model, spec, [{"image": images}], device="cpu", layers=["0"], **kwargs)
        assert torch.equal(step.activations["0"], expected)


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_capture_equals_a_manual_autocast_forward(name, dtype):
    """The independent reference: torch.autocast written out by hand around the same conv."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3)).eval()
    spec = InputSpec(size=16, channels=1, normalization={"mean": [0.5], "std": [0.25]})
    images = torch.rand(2, 1, 16, 16)
    inputs = spec.prepare(images)
    with torch.no_grad():
        exact = model[2](model[1](model[0](inputs)))
        with torch.autocast("cpu", dtype=dtype):
            manual = model[2](model[1](model[0](inputs)))
    assert manual.dtype == dtype
    (step,) = run_model(model, spec, [{"image": images}], device="cpu", layers=["2"],
                        precision=name)
    captured = step.activations["2"]
    assert captured.dtype == torch.float32 and captured.is_contiguous()
    assert torch.equal(captured, manual.float())
    assert not torch.equal(captured, exact)  # it did run in reduced precision
    assert step.outputs.dtype == torch.float32
    assert torch.equal(step.inputs, inputs)  # what the caller gets is the prepared batch


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_reduced_dissection_is_close_to_fp32_and_recorded(model_path, tmp_path, name):
    base = _dissect(model_path, tmp_path / "fp32").layers[0]
    result = _dissect(model_path, tmp_path / name, precision=name)
    layer = result.layers[0]
    scale = np.abs(base.thresholds).max()
    error = np.abs(layer.thresholds - base.thresholds).max() / scale
    assert error <= TOLERANCE[name], error
    assert error > 0  # the forward pass was not fp32
    assert np.abs(layer.iou - base.iou).max() <= IOU_TOLERANCE
    assert result.cache.description["precision"] == name
    record, config = _record(tmp_path / name)
    assert record["settings"]["precision"] == name
    assert config["dissect"]["precision"] == name


def test_a_cache_entry_is_never_shared_between_precisions(model_path, tmp_path):
    out = tmp_path / "d"
    fp32 = _dissect(model_path, out)
    bf16 = _dissect(model_path, out, precision="bf16")
    assert not bf16.cache_reused and bf16.cache.dir != fp32.cache.dir
    assert not np.array_equal(bf16.layers[0].thresholds, fp32.layers[0].thresholds)
    again = _dissect(model_path, out)
    assert again.cache_reused and again.cache.dir == fp32.cache.dir
    assert again.layers[0].thresholds.tobytes() == fp32.layers[0].thresholds.tobytes()
    bf16_again = _dissect(model_path, out, precision="bf16")
    assert bf16_again.cache_reused and bf16_again.cache.dir == bf16.cache.dir


def test_channels_last_puts_the_models_own_tensors_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))  # 2 channels: formats differ
    model.register_buffer("grid", torch.rand(1, 2, 3, 3))
    weight = model[0].weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffer = model.grid
    with channels_last(model) as inside:
        assert inside[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not inside[0].weight.is_contiguous()
        assert inside.grid.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight is weight and model[0].weight.is_contiguous()
    assert model.grid is buffer
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) and value.stride() == before[key].stride(), key


def test_unknown_precision_is_one_line(model_path, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"unknown precision 'fp8'; use fp32, bf16, fp16"):
        DissectSettings(precision="fp8").validate()
    code, _, err = run_cli(["dissect", "--model", model_path, "--concepts", "toy-blobs",
                            "--precision", "bfloat16", "--out", tmp_path / "d", "--quiet"], capsys)
    last = err.strip().splitlines()[-1]
    assert code != 0 and last == "Error: unknown precision 'bfloat16'; use fp32, bf16, fp16", err
    assert err.count("Error") == 1 and "Traceback" not in err


def test_unsupported_precision_is_refused_before_the_forward_pass(model_path, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(precision_module, "_cpu_autocast_works", lambda dtype: False)
    with pytest.raises(UsageError, match="cannot autocast to torch.float16 on the CPU"):
        _dissect(model_path, tmp_path / "d", precision="fp16")
    assert not list((tmp_path / "d").rglob("dissection.json"))
    monkeypatch.setattr(precision_module, "_cuda_bf16", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(UsageError, match="Tesla T4 has no native bfloat16; use --precision fp16"):
        supported_precision("bf16", torch.device("cuda"))
    assert supported_precision("fp16", torch.device("cuda")) == "fp16"


def test_cli_hands_the_precision_to_the_library(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_dissect(models, layers, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr("cxrsem.cli.dissect.dissect", fake_dissect)
    args = ["dissect", "--model", "a.pt", "--layer", "features", "--out", tmp_path / "o", "--quiet"]
    code, _, err = run_cli([*args, "--precision", "bf16"], capsys)
    assert code == 0, err
    assert seen["settings"].precision == "bf16"
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert seen["settings"].precision == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reduced_precision_uses_channels_last_and_restores_the_model(model_path, tmp_path):
    base = _dissect(model_path, tmp_path / "cpu").layers[0]
    name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    result = dissect(model_path, "denseblock4", concepts=["phantom"],
                     concept_options={"phantom": {"n_images": 12}}, out=tmp_path / "cuda",
                     figures=False, device="cuda",
                     settings=DissectSettings(seg_size=16, batch_size=4, precision=name))
    error = np.abs(result.layers[0].thresholds - base.thresholds).max()
    assert error <= TOLERANCE[name] * np.abs(base.thresholds).max()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).to("cuda").eval()  # 3 channels: formats differ
    weight = model[0].weight
    spec = InputSpec(size=16, channels=3)
    (step,) = run_model(model, spec, [{"image": torch.rand(2, 1, 16, 16)}], device="cuda",
                        layers=["0"], precision=name)
    activation = step.activations["0"]
    assert activation.dtype == torch.float32 and activation.is_contiguous()
    assert model[0].weight is weight and weight.is_contiguous()


def test_amp_and_a_reduced_precision_together_are_an_error():
    model = nn.Conv2d(1, 1, 1)
    spec = InputSpec(size=4, channels=1)
    with pytest.raises(ValueError, match="not both"):
        next(run_model(model, spec, [{"image": torch.rand(1, 1, 4, 4)}], device="cpu",
                       amp=True, precision="bf16"))


def test_the_channels_last_path_feeds_channels_last_and_restores_the_model(monkeypatch):
    """The CUDA path (channels_last) exercised on the CPU, where it is otherwise off."""
    monkeypatch.setattr("cxrsem.engine.runner.uses_channels_last", lambda device, name: True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    weight = model[0].weight
    seen = {}

    def look(module, args):
        seen["input"] = args[0].is_contiguous(memory_format=torch.channels_last)
        seen["weight"] = module.weight.is_contiguous(memory_format=torch.channels_last)

    handle = model[0].register_forward_pre_hook(look)
    spec = InputSpec(size=16, channels=3)
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        exact = model[2](model[1](model[0](spec.prepare(images))))
    (step,) = run_model(model, spec, [{"image": images}], device="cpu", layers=["2"],
                        precision="bf16")
    handle.remove()
    assert seen == {"input": True, "weight": True}
    assert model[0].weight is weight and weight.is_contiguous()
    captured = step.activations["2"]
    assert captured.dtype == torch.float32 and captured.is_contiguous()
    assert step.inputs.is_contiguous()
    assert (captured - exact).abs().max() <= TOLERANCE["bf16"] * exact.abs().max()
