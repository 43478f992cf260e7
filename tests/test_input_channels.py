"""Every stage feeds a checkpoint's model the input ``InputSpec.prepare`` makes (issue 12).

A ``channels: 3`` checkpoint (an RGB stem) gets the grey image repeated to three channels, then
normalised with one value or one per channel.  Dissection used to hand it the grey image, which
failed with one normalisation value and worked with three only because broadcasting expanded it.
"""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxrsem import plugins
from cxrsem.checkpoint import make_checkpoint, save_checkpoint
from cxrsem.engine.layers import capture
from cxrsem.engine.preprocess import InputSpec
from cxrsem.engine.runner import run_model
from cxrsem.imageio import load_image
from cxrsem.testing import TestKitPlugin, TinyConvNet, ToyBlobs, run_cli

SIZE, SEG = 32, 16
NORMALIZATIONS = {
    "one-value": {"mean": [0.449], "std": [0.226]},
    "per-channel": {"mean": [0.40, 0.45, 0.50], "std": [0.20, 0.25, 0.30]},
}


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def rgb_checkpoint(path, normalization) -> dict:
    torch.manual_seed(0)
    model = TinyConvNet(2, in_channels=3)
    checkpoint = make_checkpoint(model, arch="tiny-conv", arch_kwargs={}, task_kind="multilabel",
                                 outputs=["a", "b"], image_size=SIZE, normalization=normalization,
                                 channels=3)
    save_checkpoint(path, checkpoint)
    return checkpoint


@pytest.fixture
def stem_inputs():
    """Every tensor the first (3-channel) convolution of any model receives during the test."""
    seen: list[torch.Tensor] = []

    def hook(module, args):
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and isinstance(args[0],
                                                                                    torch.Tensor):
            seen.append(args[0].detach().clone())

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def contains(seen: list[torch.Tensor], expected: torch.Tensor) -> bool:
    """Some recorded model input holds every row of ``expected``, bit for bit."""
    return any(x.shape[1:] == expected.shape[1:] and all(any(torch.equal(r, e) for r in x)
                                                         for e in expected) for x in seen)


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_dissect_feeds_a_three_channel_model_the_prepared_input(tmp_path, capsys, stem_inputs,
                                                                norm):
    checkpoint = rgb_checkpoint(tmp_path / "rgb.pt", NORMALIZATIONS[norm])
    code, _, err = run_cli(["dissect", "--model", tmp_path / "rgb.pt", "--layer", "features",
                            "--concepts", "toy-blobs", "--seg-size", SEG, "--quantile", "0.05",
                            "--out", tmp_path / "d", "--quiet", "--no-figures"], capsys)
    assert code == 0, err
    assert (tmp_path / "d" / "rgb" / "features" / "dissection.json").is_file()
    blobs = ToyBlobs(SIZE, SEG, seed=0)
    images = torch.stack([blobs[i]["image"] for i in range(len(blobs))])
    expected = InputSpec.from_checkpoint(checkpoint).prepare(images)
    assert expected.shape == (len(blobs), 3, SIZE, SIZE)
    assert contains(stem_inputs, expected)


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_attribute_feeds_a_three_channel_model_the_prepared_input(tmp_path, capsys, stem_inputs,
                                                                  norm):
    checkpoint = rgb_checkpoint(tmp_path / "rgb.pt", NORMALIZATIONS[norm])
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8)).save(tmp_path / "cxr.png")
    code, _, err = run_cli(["attribute", tmp_path / "cxr.png", "--model", tmp_path / "rgb.pt",
                            "--layer", "features", "--steps", "4", "--out", tmp_path / "a"],
                           capsys)
    assert code == 0, err
    assert (tmp_path / "a" / "cxr.json").is_file()
    expected = InputSpec.from_checkpoint(checkpoint).prepare(load_image(tmp_path / "cxr.png",
                                                                        SIZE)[None])
    assert contains(stem_inputs, expected)


def test_one_and_three_equal_values_prepare_the_same_input():
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    one = InputSpec(SIZE, 3, {"mean": [0.449], "std": [0.226]}).prepare(images)
    three = InputSpec(SIZE, 3, {"mean": [0.449] * 3, "std": [0.226] * 3}).prepare(images)
    assert torch.equal(one, three) and one.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(one[:, 0], one[:, 2])


# -- the runner --------------------------------------------------------------------------------
def test_run_model_prepares_captures_and_passes_the_batch_through():
    torch.manual_seed(0)
    model = TinyConvNet(2, in_channels=3).eval()
    spec = InputSpec(SIZE, 3, NORMALIZATIONS["per-channel"])
    g = torch.Generator().manual_seed(1)
    batches = [{"image": torch.rand(b, 1, SIZE, SIZE, generator=g), "masks": torch.ones(b, 2)}
               for b in (3, 2)]
    passes = list(run_model(model, spec, batches, device="cpu", layers=["features", "features.0"]))
    assert not model.features._forward_hooks and not model.features[0]._forward_hooks
    assert len(passes) == 2
    for step, batch in zip(passes, batches, strict=True):
        assert step.batch is batch
        expected = spec.prepare(batch["image"])
        assert torch.equal(step.inputs, expected)
        with torch.no_grad(), capture(model, ["features"]) as store:
            outputs = model(expected)
        assert torch.equal(step.outputs, outputs)
        assert torch.equal(step.activations["features"], store["features"])
        assert step.activations["features.0"].shape == (len(expected), 8, SIZE // 2, SIZE // 2)


def test_run_model_leaves_grad_mode_alone_and_its_hooks_go_when_closed():
    model = TinyConvNet(2).eval()
    spec = InputSpec(SIZE)
    batches = ({"image": torch.zeros(1, 1, SIZE, SIZE)} for _ in range(3))
    with closing(run_model(model, spec, batches, device="cpu", layers=["features"])) as passes:
        step = next(passes)
        assert torch.is_grad_enabled()
        assert not step.outputs.requires_grad
        assert model.features._forward_hooks
    assert not model.features._forward_hooks


def test_the_activation_cache_is_not_shared_across_normalisations(tmp_path, capsys):
    args = ["--layer", "features", "--concepts", "toy-blobs", "--seg-size", SEG, "--quantile",
            "0.05", "--out", tmp_path / "d", "--quiet", "--no-figures"]
    thresholds = {}
    for norm in NORMALIZATIONS:  # the same weights, fed two ways, into one output folder
        rgb_checkpoint(tmp_path / "rgb.pt", NORMALIZATIONS[norm])
        code, _, err = run_cli(["dissect", "--model", tmp_path / "rgb.pt", *args], capsys)
        assert code == 0, err
        record = (tmp_path / "d" / "rgb" / "features" / "dissection.json").read_text()
        thresholds[norm] = [u["threshold"] for u in json.loads(record)["units"]]
    assert thresholds["one-value"] != thresholds["per-channel"]
