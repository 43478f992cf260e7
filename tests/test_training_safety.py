"""Training keeps nothing bad and mixes nothing (issue 13): run folders, divergence, config types,
resume rules, Ctrl-C, stale temporaries, folders of failed runs."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import pytest
import torch

from cxrsem.checkpoint import load_checkpoint
from cxrsem.errors import TrainingError, UsageError
from cxrsem.testing import run_cli
from cxrsem.training import TrainConfig, TrainingInterrupted, TrainResult, train
from cxrsem.training import loop as training_loop

TINY = ["--dataset", "phantom", "--arch", "densenet-mini", "--image-size", "32", "--batch-size", "8",
        "--dataset-opt", "n_train=32", "--dataset-opt", "n_val=16", "--device", "cpu", "--quiet"]


def cli_train(capsys, out, *extra, epochs=1):
    return run_cli(["train", *TINY, "--epochs", epochs, "--out", out, *extra], capsys)


def one_line(err):
    """The error: one line, the last on stderr (progress notes may come before it)."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("Error: ") and err.count("Error: ") == 1, err
    return lines[-1] + "\n"


def all_finite(path):
    return all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path)["state_dict"].values()
               if t.is_floating_point())


# -- 1. one run per folder ----------------------------------------------------------------------

def test_out_holding_a_run_is_refused_and_overwrite_replaces_only_that_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli_train(capsys, run, epochs=2)
    assert code == 0, err
    before = (run / "last.pt").read_bytes()

    code, _, err = cli_train(capsys, run)
    assert code == 2 and "already holds a training run" in one_line(err)
    assert "--resume" in err and "--overwrite" in err
    assert (run / "last.pt").read_bytes() == before and (run / "epoch-002.pt").is_file()

    # A failing --overwrite (bad option, found before anything is written) loses nothing.
    code, _, err = cli_train(capsys, run, "--overwrite", "--arch-opt", "no_such_option=1")
    assert code == 2, err
    assert (run / "last.pt").read_bytes() == before

    code, _, err = cli_train(capsys, run, "--overwrite")
    assert code == 0, err
    assert not (run / "epoch-002.pt").exists()  # nothing of the old run is left to mix in
    assert load_checkpoint(run / "last.pt")["train"]["epoch"] == 1
    assert tomllib.loads((run / "config.toml").read_text())["train"]["epochs"] == 1


def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    for extra in ((), ("--overwrite",)):
        code, _, err = cli_train(capsys, folder, *extra)
        assert code == 2 and "not a cxrsem run folder" in one_line(err) and "notes.txt" in err
    assert (folder / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_overwrite_is_a_library_setting_and_not_recorded(tmp_path):
    train(TrainConfig(out=str(tmp_path / "r"), arch="densenet-mini", image_size=32, epochs=1,
                      batch_size=8, device="cpu", dataset_options={"n_train": 32, "n_val": 16}))
    again = TrainConfig(out=str(tmp_path / "r"), arch="densenet-mini", image_size=32, epochs=1,
                        batch_size=8, device="cpu", dataset_options={"n_train": 32, "n_val": 16})
    with pytest.raises(UsageError, match="--overwrite"):
        train(again)
    again.overwrite = True
    train(again)
    assert "overwrite" not in tomllib.loads((tmp_path / "r" / "config.toml").read_text())["train"]


# -- 2. only finite states are kept ----------------------------------------------------------------

@pytest.mark.parametrize("lr", ["1e6", "1e30"])
def test_divergence_fails_and_keeps_only_finite_checkpoints(tmp_path, capsys, lr):
    run = tmp_path / "run"
    code, _, err = cli_train(capsys, run, "--lr", lr, epochs=3)
    assert code == 1
    one_line(err)
    assert "diverged" in err or "loss became" in err, err
    assert f"last good checkpoint: {run / 'last.pt'} (epoch 0)" in err
    for path in run.glob("*.pt"):
        assert all_finite(path), path
        assert load_checkpoint(path)["train"]["epoch"] == 0, path
    assert not (run / "best.pt").exists()


def test_non_finite_weights_are_never_written(tmp_path, monkeypatch):
    original = training_loop._Run.train_epoch

    def poisoned(self):
        loss = original(self)
        if self.epoch == 2:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(training_loop._Run, "train_epoch", poisoned)
    config = TrainConfig(out=str(tmp_path / "run"), arch="densenet-mini", image_size=32, epochs=3,
                         batch_size=8, device="cpu", dataset_options={"n_train": 32, "n_val": 16})
    with pytest.raises(TrainingError, match=r"became non-finite at epoch 2.*last\.pt \(epoch 1\)"):
        train(config)
    for path in (tmp_path / "run").glob("*.pt"):
        assert all_finite(path) and load_checkpoint(path)["train"]["epoch"] <= 1


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1e-3, 0.0])
def test_learning_rates_that_cannot_train_are_refused_up_front(tmp_path, lr):
    with pytest.raises(UsageError, match="--lr must be a positive finite number"):
        TrainConfig(out=str(tmp_path / "r"), lr=lr).validate()


def test_cli_refuses_nan_lr_before_creating_anything(tmp_path, capsys):
    code, _, err = cli_train(capsys, tmp_path / "run", "--lr", "nan")
    assert code == 2 and "--lr must be a positive finite number" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_divergence_rule_constant_is_documented():
    # The factor the code applies is the one the docs promise (formats.md, guarantees.md).
    exponent = round(math.log10(training_loop.DIVERGENCE_FACTOR))
    assert 10.0 ** exponent == training_loop.DIVERGENCE_FACTOR
    docs = Path(__file__).resolve().parents[1] / "docs"
    for page in ("formats.md", "guarantees.md"):
        assert f"10^{exponent} x" in (docs / page).read_text(encoding="utf-8"), page


# -- 3. TOML values have the option's type --------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("epochs = true", "expected an integer, got the boolean true"),
    ("epochs = 2.5", "expected an integer, got 2.5"),
    ("lr = false", "expected a number, got the boolean false"),
    ("quiet = 1", "expected true or false, got 1"),
    ("dataset = 3", "expected a string, got 3"),
    ('dataset-opt = "n_train=4"', "expected a list"),
    ("dataset-opt = [4]", "expected a string, got 4"),
])
def test_config_values_of_the_wrong_type_are_refused(tmp_path, capsys, line, expected):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[train]\n{line}\n")
    code, _, err = run_cli(["train", "--config", cfg, "--out", tmp_path / "r"], capsys)
    assert code == 2 and expected in one_line(err)
    key = line.split(" =")[0]
    assert f"bad value for {key!r} in [train] of {str(cfg)!r}" in err


def test_config_values_of_the_right_type_are_taken(tmp_path, capsys, captured_train):
    seen = captured_train
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nlr = 1\nquiet = true\noverwrite = true\ndataset-opt = ["n_train=4"]\n'
                   'weights = "w.pth"\n')
    code, _, err = run_cli(["train", "--config", cfg, "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    config = seen["config"]
    assert config.lr == 1.0 and config.overwrite is True and config.dataset_options == {"n_train": "4"}


# -- 4. resume changes nothing but the epochs (and the device) ------------------------------------

def test_resume_refuses_options_that_would_change_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_train(capsys, run, epochs=2)[0] == 0
    recorded = (run / "config.toml").read_text()
    code, _, err = run_cli(["train", "--resume", run, "--lr", "1", "--batch-size", "3",
                            "--out", tmp_path / "elsewhere"], capsys)
    assert code == 2 and "cannot change on --resume" in one_line(err)
    for flag in ("--lr", "--batch-size", "--out"):
        assert flag in err
    code, _, err = run_cli(["train", "--resume", run, "--epochs", "1"], capsys)
    assert code == 2 and "has already run 2 epochs" in one_line(err)
    assert (run / "config.toml").read_text() == recorded  # the record stays truthful


def test_resume_passes_epochs_and_device_and_accepts_its_own_out(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_resume(run_dir, epochs=None, device=None, progress=None):
        seen.update(run_dir=run_dir, epochs=epochs, device=device)
        return TrainResult(tmp_path, 1, 1, ("auroc_mean", 0.5), [], False, [])

    monkeypatch.setattr("cxrsem.cli.train.resume", fake_resume)
    code, _, err = run_cli(["train", "--resume", tmp_path / "r", "--out", tmp_path / "r",
                            "--epochs", "5", "--device", "cpu"], capsys)
    assert code == 0, err
    assert seen["epochs"] == 5 and seen["device"] == "cpu"
    code, _, err = run_cli(["train", "--resume", tmp_path / "r"], capsys)
    assert code == 0 and seen["epochs"] is None and seen["device"] is None


# -- 5. Ctrl-C says where the run stands ----------------------------------------------------------

def _renderer(event, epoch=None):
    class Renderer:
        bar = None

        def __init__(self, quiet=False):
            pass

        def __call__(self, name, **info):
            if name == event and (epoch is None or info.get("epoch") == epoch):
                raise KeyboardInterrupt

    return Renderer


def test_ctrl_c_names_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cxrsem.cli.train.TrainingProgress", _renderer("batch", epoch=2))
    run = tmp_path / "run"
    code, _, err = cli_train(capsys, run, epochs=3)
    assert code == 130
    assert one_line(err) == f"Error: interrupted; last good checkpoint: {run / 'last.pt'} (epoch 1)\n"
    assert load_checkpoint(run / "last.pt")["train"]["epoch"] == 1


def test_ctrl_c_before_any_checkpoint_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cxrsem.cli.train.TrainingProgress", _renderer("note"))
    run = tmp_path / "new" / "run"
    code, _, err = cli_train(capsys, run)
    assert code == 130 and one_line(err) == "Error: interrupted; no checkpoint written yet\n"
    assert not run.exists()


def test_interruption_is_still_a_keyboard_interrupt_for_python_callers(tmp_path):
    def progress(event, **info):
        if event == "epoch_start":
            raise KeyboardInterrupt

    config = TrainConfig(out=str(tmp_path / "run"), arch="densenet-mini", image_size=32, epochs=1,
                         batch_size=8, device="cpu", dataset_options={"n_train": 32, "n_val": 16})
    with pytest.raises(KeyboardInterrupt) as caught:
        train(config, progress=progress)
    assert isinstance(caught.value, TrainingInterrupted) and caught.value.exit_code == 130
    assert "last good checkpoint" in str(caught.value) and "(epoch 0)" in str(caught.value)


# -- 6. temporaries of killed writes are cleaned up ----------------------------------------------

def test_stale_temporaries_are_removed_on_start_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.k1ll3d_0.tmp").write_bytes(b"half a checkpoint")
    code, _, err = cli_train(capsys, run)  # only a killed write's leftovers: still an empty run folder
    assert code == 0, err
    assert not list(run.glob(".*.tmp"))

    (run / ".last.pt.abcd1234.tmp").write_bytes(b"half")
    (run / ".epoch-002.pt.zzzz9999.tmp").write_bytes(b"half")
    code, _, err = run_cli(["train", "--resume", run, "--epochs", "2", "--quiet"], capsys)
    assert code == 0, err
    assert not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "last.pt")["train"]["epoch"] == 2


def test_temporaries_of_other_files_are_not_the_runs_to_remove(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".notes.txt.abcd1234.tmp").write_bytes(b"someone else's")
    code, _, err = cli_train(capsys, run, "--overwrite")
    assert code == 2 and "not a cxrsem run folder" in one_line(err)
    assert (run / ".notes.txt.abcd1234.tmp").is_file()


# -- 7. a failed run leaves no empty folder behind -----------------------------------------------

def test_failed_train_removes_the_folder_it_created_but_never_an_existing_one(tmp_path, capsys,
                                                                              monkeypatch):
    def broken(*args, **kwargs):
        raise TrainingError("disk full (simulated)")

    monkeypatch.setattr(training_loop, "write_config", broken)
    created = tmp_path / "a" / "b" / "run"
    code, _, err = cli_train(capsys, created)
    assert code == 1 and "disk full" in one_line(err)
    assert not (tmp_path / "a").exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    code, _, _ = cli_train(capsys, existing)
    assert code == 1 and existing.is_dir() and not any(existing.iterdir())


# -- the run folder has one owner ------------------------------------------------------------------

def test_a_run_folder_being_trained_into_is_refused_to_a_second_process(tmp_path, capsys):
    from cxrsem.outputs import FolderLock

    out = tmp_path / "run"
    code, _, err = cli_train(capsys, out)
    assert code == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # This process plays the first trainer: alive, so its lock is not stale.
    resume = ["train", "--resume", out, "--epochs", 2, "--quiet"]
    with FolderLock(out, path=out / training_loop.RUN_LOCK):
        for code, _, err in (cli_train(capsys, out, "--overwrite"), run_cli(resume, capsys)):
            assert code == 1, err
            assert f"training run {out} is being written by process {os.getpid()}" in one_line(err)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    code, _, err = run_cli(resume, capsys)
    assert code == 0, err
    assert not (out / training_loop.RUN_LOCK).exists()  # released when the run ends
