"""TensorBoard scalars and quick dissections during training (TrainConfig.tensorboard,
TrainConfig.dissect_every): what is logged, that it changes no weight, the run folder rules."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cxrsem import plugins
from cxrsem.checkpoint import load_checkpoint
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.errors import UnknownComponentError, UsageError
from cxrsem.training import TrainConfig, TrainingInterrupted, resume, train
from cxrsem.training import loop as training_loop
from cxrsem.training.monitoring import DETECTORS, EVENT_FILE, INSTALL_HINT, quick_dissect

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"n_train": 48, "n_val": 32}
BATCHES = 3  # 48 training images in batches of 16
IMAGES = 32  # images of a quick dissection


def config(root, name, **kw):
    base = dict(out=str(root / name), dataset="phantom", arch="densenet-mini", image_size=48,
                epochs=2, batch_size=16, lr=1e-3, device="cpu", dataset_options=dict(SMALL))
    base.update(kw)
    return TrainConfig(**base)


def monitored(root, name, **kw):
    return config(root, name, **{"tensorboard": "tensorboard", "dissect_every": 1,
                                 "dissect_images": IMAGES, **kw})


def scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar as {tag: {step: value}}, read as TensorBoard reads it; no step twice."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    found = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        found[tag] = {e.step: e.value for e in points}
        assert len(found[tag]) == len(points), f"{tag}: a step logged twice"
    return found


def event_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if EVENT_FILE.match(p.name))


def f32(value: float) -> float:
    return float(np.float32(value))  # what an event file holds


def same_weights(a, b) -> bool:
    a, b = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A monitored run (2 epochs), a plain one (1 epoch) and ``part``: a monitored run of 1 epoch
    with its events in ``tb/``, interrupted (Ctrl-C) while it dissected ``epoch-001.pt``.  Tests
    that change a run work on a copy."""
    root = tmp_path_factory.mktemp("tb")

    def interrupted(checkpoint, *args, **kw):
        if checkpoint.name == "epoch-001.pt":
            raise KeyboardInterrupt
        return quick_dissect(checkpoint, *args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_loop, "quick_dissect", interrupted)
        with pytest.raises(TrainingInterrupted, match=r"last\.pt \(epoch 1\)"):
            train(monitored(root, "part", epochs=1, tensorboard="tb"))
    return SimpleNamespace(root=root, watched=train(monitored(root, "watched")), part=root / "part",
                           plain=train(config(root, "plain", epochs=1)),
                           layer=plugins.get("architecture", "densenet-mini").default_layer)


def copy_run(runs, name, to):
    return Path(shutil.copytree(runs.root / name, to / name))


def test_event_files_hold_the_batch_losses_and_every_number_of_metrics_jsonl(runs):
    folder = runs.watched.run_dir / "tensorboard"
    assert len(event_files(folder)) == 1
    logged = scalars(folder)
    assert sorted(logged["train/loss"]) == list(range(1, 2 * BATCHES + 1))  # optimisation steps
    lines = (runs.watched.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    for record in records:
        step = record["epoch"] * BATCHES
        assert logged["train/epoch"][step] == record["epoch"]
        assert logged["train/epoch_loss"][step] == f32(record["train_loss"])
        assert logged["train/lr"][step] == f32(record["lr"])
        metrics = {k: v for k, v in record.items() if k not in ("epoch", "train_loss", "lr")}
        assert "val_loss" in metrics
        for key, value in metrics.items():
            if value is not None:
                assert logged[f"val/{key}"][step] == f32(value), key
        losses = [logged["train/loss"][s] for s in range(step - BATCHES + 1, step + 1)]
        assert np.mean(losses) == pytest.approx(record["train_loss"], rel=1e-5)  # equal batches
    epoch_tags = {t for t in logged if t.startswith(("val/", "train/epoch", "train/lr"))}
    assert epoch_tags == {"train/epoch", "train/epoch_loss", "train/lr"} | {
        f"val/{k}" for r in records for k, v in r.items()
        if k not in ("epoch", "train_loss", "lr") and v is not None}


def test_dissection_scalars_equal_dissecting_the_checkpoint_directly(runs, tmp_path):
    run, layer = runs.watched.run_dir, runs.layer
    logged = scalars(run / "tensorboard")
    assert sorted(logged[DETECTORS]) == [0, BATCHES, 2 * BATCHES]  # epoch 0, every epoch, the end
    dissect([run / "epoch-001.pt"], [layer], out=tmp_path, concepts=["phantom"],
            settings=DissectSettings(limit=IMAGES), device="cpu", seed=0, figures=False)
    direct = json.loads((tmp_path / "epoch-001" / layer / "dissection.json").read_text())
    found = 0
    for epoch in (0, 1, 2):
        record = json.loads((run / "quick-dissect" / f"epoch-{epoch:03d}" / layer /
                             "dissection.json").read_text())
        assert record["model"]["path"] == str(run / f"epoch-{epoch:03d}.pt")
        if epoch == 1:
            assert record["detectors"] == direct["detectors"] and record["units"] == direct["units"]
        step = epoch * BATCHES
        assert logged[DETECTORS][step] == record["num_detectors"]
        for concept, count in record["detectors"].items():
            assert logged[f"{DETECTORS}/{concept}"][step] == count, concept
        found += record["num_detectors"]
    assert found > 0  # the comparison is not 0 == 0 everywhere (epoch 1 has a unit at IoU 0.07)
    assert not (run / "quick-dissect" / ".cache").exists()
    assert any(f"quick dissection of epoch 2 at {layer}" in note for note in runs.watched.notes)


def test_monitoring_changes_neither_the_weights_nor_the_random_streams(runs):
    part = load_checkpoint(runs.part / "last.pt")
    plain = load_checkpoint(runs.plain.run_dir / "last.pt")
    assert same_weights(runs.part / "last.pt", runs.plain.run_dir / "last.pt")
    assert same_weights(runs.watched.run_dir / "epoch-001.pt", runs.plain.run_dir / "last.pt")
    for state in ("torch_rng", "loader_rng"):
        assert torch.equal(part["resume"][state], plain["resume"][state]), state
    assert runs.plain.history == runs.watched.history[:1]
    assert not (runs.plain.run_dir / "tensorboard").exists()
    assert not (runs.plain.run_dir / "quick-dissect").exists()


def test_resume_appends_to_the_same_event_folder_and_purges_what_a_killed_run_logged(runs, tmp_path):
    run = copy_run(runs, "part", tmp_path)
    folder = run / "tb"
    # And a process killed in epoch 2 after logging a batch: purged when the run resumes.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as killed:
        killed.add_scalar("train/loss", 999.0, BATCHES + 1)
    unfinished = run / "quick-dissect" / "epoch-001" / runs.layer / "dissection.json"
    assert not unfinished.exists()

    resumed = resume(run, epochs=2)
    assert unfinished.is_file()  # the interrupted dissection is redone first
    assert len(event_files(folder)) == 3
    assert scalars(folder) == scalars(runs.watched.run_dir / "tensorboard")
    assert same_weights(resumed.run_dir / "last.pt", runs.watched.run_dir / "last.pt")


def test_overwrite_removes_the_runs_folders_and_refuses_foreign_files_in_them(runs, tmp_path):
    run = copy_run(runs, "part", tmp_path)  # events in tb/ (named by its config.toml), quick-dissect/
    with pytest.raises(UsageError, match="--resume .* --overwrite"):
        train(config(tmp_path, "part", epochs=1))
    for foreign in (run / "tb" / "notes.txt", run / "quick-dissect" / "notes.txt"):
        foreign.write_text("mine")
        with pytest.raises(UsageError, match=f"not a cxrsem run folder .*'{foreign.parent.name}'"):
            train(config(tmp_path, "part", epochs=1, overwrite=True))
        foreign.unlink()

    again = train(config(tmp_path, "part", epochs=1, overwrite=True))
    assert sorted(p.name for p in again.run_dir.iterdir()) == sorted(
        p.name for p in runs.plain.run_dir.iterdir())


def test_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    with pytest.raises(UsageError, match=r"pip install 'cxrsem\[tensorboard\]'") as caught:
        train(config(tmp_path, "run", tensorboard="tensorboard"))
    assert "\n" not in str(caught.value) and INSTALL_HINT in str(caught.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", "last.pt", "quick-dissect", ""])
def test_tensorboard_folder_must_be_one_name_inside_the_run(tmp_path, name):
    with pytest.raises(UsageError, match="one folder name inside the run folder"):
        train(config(tmp_path, "run", tensorboard=name))
    assert not (tmp_path / "run").exists()


def test_bad_dissection_settings_fail_before_training(tmp_path):
    with pytest.raises(UsageError, match="--dissect-every"):
        train(config(tmp_path, "run", dissect_every=-1))
    with pytest.raises(UsageError, match="features.nope"):
        train(config(tmp_path, "run", dissect_every=1, dissect_layer="features.nope"))
    with pytest.raises(UnknownComponentError, match="no-such-set"):
        train(config(tmp_path, "run", dissect_every=1, dissect_concepts=["no-such-set"]))
    assert not (tmp_path / "run").exists()


def test_the_cli_passes_the_monitoring_options(monkeypatch, tmp_path, capsys):
    from cxrsem.cli import train as train_cli
    from cxrsem.testing import run_cli

    seen = {}

    def fake_train(config, progress=None):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(train_cli, "train", fake_train)
    run_cli(["train", "--dataset", "phantom", "--out", tmp_path / "r", "--tensorboard",
             "--dissect-every", 2, "--dissect-concept", "phantom", "--dissect-images", 30], capsys)
    config = seen["config"]
    assert config.tensorboard == "tensorboard" and config.dissect_every == 2
    assert config.dissect_concepts == ["phantom"] and config.dissect_images == 30
    run_cli(["train", "--dataset", "phantom", "--out", tmp_path / "s", "--tensorboard-dir", "tb"],
            capsys)
    assert seen["config"].tensorboard == "tb"
