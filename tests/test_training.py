"""Training: every model family on the phantom, checkpoints, resume, pretraining chains, failures."""

from __future__ import annotations

import json

import pytest
import torch

from cxrsem import plugins
from cxrsem.checkpoint import build_model, load_checkpoint
from cxrsem.components import LossInfo
from cxrsem.errors import CheckpointError, TrainingError, UsageError
from cxrsem.hookspecs import hookimpl
from cxrsem.training import TrainConfig, resume, train

SMALL = {"n_train": 96, "n_val": 48}


def config(tmp_path, name="run", **kw):
    base = dict(out=str(tmp_path / name), dataset="phantom", arch="densenet-mini", image_size=48,
                epochs=1, batch_size=16, lr=1e-3, device="cpu", dataset_options=dict(SMALL))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("loss, task, outputs", [
    ("bce", "multilabel", 8), ("weighted-bce", "multilabel", 8), ("mse", "global-score", 1),
    ("weighted-mse", "global-score", 1), ("mae-scce", "zones", 6), ("weak-bce", "binary", 1),
])
def test_each_family_trains_and_writes_the_run_folder(tmp_path, loss, task, outputs):
    result = train(config(tmp_path, loss=loss))
    run = result.run_dir
    for name in ("epoch-000.pt", "epoch-001.pt", "best.pt", "last.pt", "metrics.jsonl",
                 "config.toml", "manifest.json"):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run / "best.pt")  # weights_only=True inside
    assert checkpoint["task"]["kind"] == task and len(checkpoint["task"]["outputs"]) == outputs
    assert checkpoint["train"]["loss"] == loss and checkpoint["train"]["epoch"] == 1
    assert checkpoint["input"]["size"] == 48
    model = build_model(checkpoint)
    assert model(torch.zeros(2, 1, 48, 48)).shape[1] == (24 if task == "zones" else outputs)
    initial = load_checkpoint(run / "epoch-000.pt")
    assert initial["train"]["epoch"] == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1


@pytest.mark.slow
def test_severity_model_beats_the_mean_predictor(tmp_path):
    result = train(config(tmp_path, loss="mae-scce", epochs=4, image_size=64, lr=2e-3, batch_size=32,
                          dataset_options={"n_train": 480, "n_val": 96}))
    last = result.history[-1]
    assert last["mae_mean"] < last["mae_mean_predictor"], last


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = train(config(tmp_path, "full", loss="weighted-bce", epochs=2))
    train(config(tmp_path, "part", loss="weighted-bce", epochs=1))
    resumed = resume(tmp_path / "part", epochs=2)
    a = load_checkpoint(full.run_dir / "last.pt")["state_dict"]
    b = load_checkpoint(resumed.run_dir / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def test_pretraining_chain_replaces_the_head(tmp_path):
    classifier = train(config(tmp_path, "cls", loss="bce"))
    severity = train(config(tmp_path, "sev", loss="mse", init=str(classifier.run_dir / "best.pt")))
    assert any("head" in note and "replaced" in note for note in severity.notes), severity.notes
    source = load_checkpoint(classifier.run_dir / "best.pt")["state_dict"]
    start = load_checkpoint(severity.run_dir / "epoch-000.pt")["state_dict"]
    assert torch.equal(source["features.conv0.weight"], start["features.conv0.weight"])
    assert start["classifier.weight"].shape[0] == 1


def test_loss_that_cannot_be_fed_by_the_dataset(tmp_path, monkeypatch):
    class Only:
        @staticmethod
        @hookimpl
        def register_losses(register):
            register(LossInfo(name="needs-zones-x", factory=lambda train_targets: None,
                              tasks=("unknown-kind",)))

    plugins.register_plugin(Only(), "only")
    with pytest.raises(UsageError, match="loss needs-zones-x needs unknown-kind; dataset phantom provides"):
        train(config(tmp_path, loss="needs-zones-x"))


def test_non_finite_loss_stops_and_keeps_good_checkpoints(tmp_path):
    class Exploding(torch.nn.Module):
        calls = 0

        def forward(self, logits, targets, target_mask=None):
            Exploding.calls += 1
            value = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
            return value * float("nan") if Exploding.calls > 8 else value

    class Plugin:
        @staticmethod
        @hookimpl
        def register_losses(register):
            register(LossInfo(name="exploding", factory=lambda train_targets: Exploding(),
                              tasks=("multilabel",)))

    plugins.register_plugin(Plugin(), "exploding")
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, batch \d"):
        train(config(tmp_path, loss="exploding", epochs=3))
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["train"]["epoch"] == 1
    assert not (run / "epoch-002.pt").exists()


def test_bad_init_inputs(tmp_path, monkeypatch):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        train(config(tmp_path, loss="bce", init=str(corrupt)))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="hub/checkpoints/densenet121-a639ec97.pth"):
        train(config(tmp_path, loss="bce", arch="densenet121", init="imagenet"))
    with pytest.raises(UsageError, match="has no ImageNet weights"):
        train(config(tmp_path, loss="bce", init="imagenet"))
    with pytest.raises(UsageError, match="--init must be random, imagenet or a cxrsem checkpoint"):
        train(config(tmp_path, loss="bce", init="chexpert"))
