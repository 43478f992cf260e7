"""The ``xrv`` model source: local files only, outputs and predictions equal to xrv's own models,
and weight files read without running code from them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from cxrsem.checkpoint import build_model, load_model
from cxrsem.engine.preprocess import normalize
from cxrsem.errors import CheckpointError
from cxrsem.imageio import load_image
from PIL import Image

from cxrsem_xrv import CACHE_ENV, read_state_dict
from xrv_fakes import random_densenet, weights_path


def xrv_reference(xrv, spec: str, folder) -> torch.nn.Module:
    """xrv's own model for ``spec`` from the same file, calibration off (logits out)."""
    model = xrv.models.get_model(spec, cache_dir=str(folder))
    model.op_threshs = None
    return model.eval()


def test_checkpoint_describes_the_xrv_model(checkpoints, xrv):
    checkpoint = checkpoints("densenet121-res224-all")
    assert checkpoint["arch"] == {"name": "xrv-densenet121", "kwargs": {}}
    assert checkpoint["task"] == {"kind": "multilabel",
                                  "outputs": xrv.models.model_urls["densenet121-res224-all"]["labels"]}
    assert checkpoint["input"] == {"size": 224, "channels": 1,
                                   "normalization": {"mean": [0.5], "std": [1 / 2048]}}
    assert "op_threshs" not in checkpoint["state_dict"]


def test_untrained_outputs_get_placeholder_names(checkpoints):
    outputs = checkpoints("densenet121-res224-nih")["task"]["outputs"]
    assert outputs[:2] == ["Atelectasis", "Consolidation"]
    assert outputs[13:] == ["Hernia", "unused-14", "unused-15", "unused-16", "unused-17"]


def test_a_pre_1_6_pickle_gives_its_weights(checkpoints, fakes):
    # The nih fake is pickled the way torch < 1.6 did, without num_batches_tracked buffers.
    state = checkpoints("densenet121-res224-nih")["state_dict"]
    expected = fakes.state
    torch.testing.assert_close({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
                               {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")})
    assert state["features.norm0.num_batches_tracked"].item() == 0  # filled in, as torch does


def test_predictions_equal_xrvs_own_densenet(checkpoints, cache, xrv, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, size=(224, 224), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)

    checkpoint = checkpoints("densenet121-res224-all")
    model = build_model(checkpoint)
    with torch.no_grad():
        ours = model(normalize(load_image(path, 224)[None], checkpoint["input"]["normalization"]))

    reference = xrv_reference(xrv, "densenet121-res224-all", cache)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(xrv.datasets.normalize(pixels, 255))[None, None])
    assert ((ours < 0) | (ours > 1)).any()  # logits, not probabilities
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_resnet50_weights_equal_xrvs_own_resnet(tmp_path, monkeypatch, xrv):
    from cxrsem_xrv.models import build_resnet50

    torch.manual_seed(2)
    saved = build_resnet50(num_outputs=18)
    # xrv publishes the ResNet-50 weights as a state dict, not a pickled module
    torch.save(saved.state_dict(), weights_path(xrv, tmp_path, "resnet50-res512-all"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    checkpoint = load_model("xrv:resnet50-res512-all")
    assert checkpoint["arch"]["name"] == "xrv-resnet50" and checkpoint["input"]["size"] == 512
    model = build_model(checkpoint)
    reference = xrv_reference(xrv, "resnet50-res512-all", tmp_path)
    x = (torch.rand(1, 1, 64, 64) - 0.5) * 2048
    with torch.no_grad():
        # xrv's forward is its inner torchvision model after resizing to 512; compare that part at
        # 64 px to keep the test fast (cxrsem resizes to the checkpoint's 512 itself).
        torch.testing.assert_close(model(x), reference.model(x))


def test_missing_file_names_path_and_url_and_never_downloads(tmp_path, monkeypatch, xrv):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    expected = weights_path(xrv, tmp_path, "densenet121-res224-chex")
    url = xrv.models.model_urls["densenet121-res224-chex"]["weights_url"]
    with pytest.raises(CheckpointError) as info:
        load_model("xrv:densenet121-res224-chex")
    message = str(info.value)
    assert str(expected) in message and url in message and "\n" not in message
    assert not expected.exists() and os.listdir(tmp_path) == []


def test_a_file_of_other_weights_is_one_error_naming_what_does_not_fit(tmp_path, monkeypatch, xrv):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    torch.save({"classifier.weight": torch.zeros(3, 1024), "extra": torch.zeros(1)},
               weights_path(xrv, tmp_path, "densenet121-res224-chex"))
    with pytest.raises(CheckpointError, match=r"does not hold xrv-densenet121 weights with 18 outputs: "
                                              r"size mismatch for classifier\.weight"):
        load_model("xrv:densenet121-res224-chex")


def test_default_cache_is_xrvs(monkeypatch, tmp_path, xrv):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # xrv's cache dir is under ~
    with pytest.raises(CheckpointError, match=str(tmp_path / ".torchxrayvision" / "models_data")):
        load_model("xrv:densenet121-res224-pc")


def test_unknown_spec_lists_the_known_ones(cache):
    with pytest.raises(CheckpointError, match="unknown xrv model 'densenet121-res224-al'.*did you mean"):
        load_model("xrv:densenet121-res224-al")


def test_zip_format_files_load_too(tmp_path, xrv):
    # Only legacy files are published, but a re-saved one (torch >= 1.6) must load as well.
    model = random_densenet(xrv, seed=3)
    torch.save(model, tmp_path / "zip.pt")
    torch.testing.assert_close(read_state_dict(tmp_path / "zip.pt"), model.state_dict())


class _CallsDenseNet:
    """A crafted file that *calls* xrv's DenseNet: with the real class allowlisted, unpickling
    would run ``DenseNet(weights=..., cache_dir=...)``, which downloads and loads an arbitrary file
    with ``weights_only=False``."""

    def __init__(self, xrv):
        self.cls = xrv.models.DenseNet

    def __reduce__(self):
        return (self.cls, (32, (6, 12, 24, 16), 64, 4, 0, 18, 1, "densenet121-res224-all", "/nonexistent"))


class _CallsSystem:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_crafted_files_run_no_code(tmp_path, monkeypatch, xrv, zip_format):
    monkeypatch.setattr(xrv.models, "get_weights", lambda *a, **k: pytest.fail("DenseNet was called"))
    called = tmp_path / "called.pt"
    torch.save(_CallsDenseNet(xrv), called, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="no weights"):  # an inert stand-in, nothing built
        read_state_dict(called)

    system = tmp_path / "system.pt"
    torch.save({"w": _CallsSystem()}, system, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match=r"(?i)global:? (posix|os)\.system"):
        read_state_dict(system)


def test_foreign_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read TorchXRayVision weights") as info:
        read_state_dict(junk)
    assert "\n" not in str(info.value)
    torch.save({"a": 1}, tmp_path / "numbers.pt")
    with pytest.raises(CheckpointError, match="non-tensor entries a"):
        read_state_dict(tmp_path / "numbers.pt")


def test_a_truncated_legacy_file_is_one_line_error(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.arange(1000.0)}, whole, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(read_state_dict(whole)["w"], torch.arange(1000.0))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:-100])  # the last storage bytes are missing
    with pytest.raises(CheckpointError, match="truncated or of the wrong size") as info:
        read_state_dict(cut)
    assert "\n" not in str(info.value)
