"""``torchrun -m cxrsem train``: DistributedDataParallel training (docs/training.md, "Training on
several GPUs (DDP)").

The torchrun runs are real subprocesses (gloo on CPU, one thread per process) under a timeout, so
a hang fails the test instead of blocking CI.  What is exact and what is not:

- the order: epoch e's global batches are the same images for every world size
  (``GlobalBatchSampler``; checked in-process);
- a model without BatchNorm (``tiny-conv``) trained by 2 ranks equals the one-process run with the
  same global batch and ``--shuffle seeded`` up to the floating-point summation order of the
  gradient all-reduce (mean of two half-batch means vs one mean): weights to 1e-5.  A BatchNorm
  model would differ more: each rank normalises with its own half batch's statistics;
- Eq. 1's beta is computed per local batch: each rank's beta is #neg/#pos of its own images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrsem import plugins
from cxrsem.checkpoint import load_checkpoint
from cxrsem.engine.data import GlobalBatchSampler
from cxrsem.errors import UsageError
from cxrsem.testing import TestKitPlugin
from cxrsem.training import TrainConfig, train
from tests.torchrun_launch import torchrun

TIMEOUT_S = 150

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun subprocesses")

# The launcher: the CLI with tiny-conv (no BatchNorm), a loss that logs the beta it applies and a
# phantom whose training batch number FAIL_BATCH (from 1) cannot be read on rank FAIL_RANK.
_LAUNCHER = '''
import json
import os
import sys

from cxrsem import plugins
from cxrsem.cli import main
from cxrsem.components import DatasetInfo, LossInfo, Option
from cxrsem.default_plugins.losses import BCELoss, batch_beta
from cxrsem.components import TASK_KINDS
from cxrsem.default_plugins.phantom import create_dataset
from cxrsem.hookspecs import hookimpl
from cxrsem.tasks import known_labels
from cxrsem.testing import TestKitPlugin


class LoggedBeta(BCELoss):
    def forward(self, logits, targets, target_mask=None):
        known = known_labels(targets, target_mask)
        with open(os.environ["BETA_LOG"] + "." + os.environ.get("RANK", "0"), "a") as log:
            log.write(json.dumps(batch_beta(targets.float(), known).tolist()) + "\\n")
        return super().forward(logits, targets, target_mask)


def flaky(*, split, fail_rank=-1, fail_batch=0, **kw):
    dataset = create_dataset(split=split, **kw)
    if split == "train" and os.environ.get("RANK", "0") == str(fail_rank):
        whole, calls = dataset.batch, []

        def batch(indices):
            calls.append(1)
            if len(calls) == fail_batch:
                raise OSError(f"image file is truncated (phantom-train-{indices[0]:05d}.png)")
            return whole(indices)

        dataset.batch = batch
    return dataset


class Plugin:
    @staticmethod
    @hookimpl
    def register_losses(register):
        register(LossInfo(name="logged-weighted-bce", tasks=("multilabel",),
                          factory=lambda *, train_targets=None: LoggedBeta(weighted=True),
                          description="weighted-bce that logs its beta"))

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(DatasetInfo(name="flaky-phantom", factory=flaky, tasks=TASK_KINDS,
                             options=(Option("n_train", int, 32, ""), Option("n_val", int, 16, ""),
                                      Option("fail_rank", int, -1, ""),
                                      Option("fail_batch", int, 0, "")),
                             description="phantom with one unreadable training batch"))


import torch  # noqa: E402

plugins.register_plugin(TestKitPlugin(), "testkit")
plugins.register_plugin(Plugin(), "ddp-test")
main(sys.argv[1:])
'''

# tiny-conv on 32 images of 32 px: 4 steps of 8 images (4 per rank) per epoch.
COMMON = ["--arch", "tiny-conv", "--image-size", "32", "--batch-size", "8", "--lr", "1e-3",
          "--dataset-opt", "n_train=32", "--dataset-opt", "n_val=16", "--device", "cpu", "--quiet"]


def _torchrun(launcher: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return torchrun([str(launcher), *args], timeout=TIMEOUT_S, **env)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launch") / "launch.py"
    path.write_text(_LAUNCHER)
    return path


@pytest.fixture(scope="module")
def ddp_run(launcher, tmp_path_factory) -> Path:
    """2 ranks train tiny-conv for 1 epoch, then a torchrun --resume extends it to 2 epochs."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    first = _torchrun(launcher, ["train", *COMMON, "--epochs", "1", "--out", str(out)])
    assert first.returncode == 0, first.stderr + first.stdout
    assert first.stdout.count("results in") == 1  # rank 0 alone reports
    assert first.stderr.count("phantom train:") == 1  # and shows notes
    again = _torchrun(launcher, ["train", "--resume", str(out), "--epochs", "2", "--quiet"])
    assert again.returncode == 0, again.stderr + again.stdout
    assert again.stderr.count(f"resumed {out} after epoch 1") == 1
    return out


# -- the order, in-process ---------------------------------------------------------------------
def test_global_batches_are_the_same_images_for_every_world_size():
    one = GlobalBatchSampler(30, 8, seed=3)
    for epoch in (1, 2):
        one.set_epoch(epoch)
        batches = list(one)
        assert len(batches) == len(one) == 3 and all(len(b) == 8 for b in batches)  # 6 sit out
        for world in (2, 4):
            ranks = [GlobalBatchSampler(30, 8, seed=3, rank=r, world=world) for r in range(world)]
            for sampler in ranks:
                sampler.set_epoch(epoch)
            parts = [list(sampler) for sampler in ranks]
            assert all(len(p[0]) == 8 // world for p in parts)
            assert [sum((p[b] for p in parts), []) for b in range(3)] == batches
    first, second = one.permutation(1), one.permutation(2)
    assert sorted(first) == list(range(30)) and first != second  # reshuffled every epoch
    assert GlobalBatchSampler(30, 8, seed=4).permutation(1) != first  # and by the seed
    with pytest.raises(UsageError, match="--batch-size 6 is the global batch .* 4 processes"):
        GlobalBatchSampler(30, 6, seed=0, rank=0, world=4)


def test_seeded_order_trains_alone_and_resumes_bit_identically(tmp_path):
    from cxrsem.training import resume

    plugins.register_plugin(TestKitPlugin(), "testkit")
    base = dict(dataset="phantom", arch="tiny-conv", image_size=32, batch_size=8, lr=1e-3,
                device="cpu", dataset_options={"n_train": 20, "n_val": 8}, shuffle="seeded")
    full = train(TrainConfig(out=str(tmp_path / "full"), epochs=2, **base))
    train(TrainConfig(out=str(tmp_path / "part"), epochs=1, **base))
    resumed = resume(tmp_path / "part", epochs=2)
    a, b = (load_checkpoint(r.run_dir / "last.pt")["state_dict"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(full.run_dir / "last.pt")["train"]["config"]["train"]["shuffle"] == "seeded"
    assert "distributed" not in load_checkpoint(full.run_dir / "last.pt")["train"]  # one process


# -- torchrun ----------------------------------------------------------------------------------
def test_two_ranks_equal_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    plugins.register_plugin(TestKitPlugin(), "testkit")
    single = train(TrainConfig(out=str(tmp_path / "one"), dataset="phantom", arch="tiny-conv",
                               image_size=32, batch_size=8, lr=1e-3, epochs=2, device="cpu",
                               dataset_options={"n_train": 32, "n_val": 16}, shuffle="seeded"))
    one = load_checkpoint(single.run_dir / "last.pt")
    many = load_checkpoint(ddp_run / "last.pt")
    initial = load_checkpoint(ddp_run / "epoch-000.pt")["state_dict"]
    assert set(one["state_dict"]) == set(many["state_dict"])
    for name, value in many["state_dict"].items():
        assert not torch.equal(value, initial[name]), name  # it did train
        assert torch.allclose(value, one["state_dict"][name], rtol=0, atol=1e-5), name
    lines = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2]
    for mine, theirs in zip(lines, single.history, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-5)


def test_only_rank_0_writes_plain_checkpoints_and_records_the_processes(ddp_run):
    assert sorted(p.name for p in ddp_run.iterdir()) == [
        "best.pt", "config.toml", "epoch-000.pt", "epoch-001.pt", "epoch-002.pt", "last.pt",
        "manifest.json", "metrics.jsonl"]
    for name in ("epoch-000.pt", "epoch-002.pt", "best.pt", "last.pt"):
        checkpoint = load_checkpoint(ddp_run / name)
        assert not any(k.startswith("module.") for k in checkpoint["state_dict"]), name
        assert checkpoint["train"]["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert checkpoint["train"]["config"]["train"]["shuffle"] == "seeded"
    assert json.loads((ddp_run / "manifest.json").read_text())["distributed"] == \
        {"world_size": 2, "backend": "gloo"}
    assert load_checkpoint(ddp_run / "last.pt")["train"]["epoch"] == 2


@pytest.fixture(scope="module")
def failed_run(launcher, tmp_path_factory):
    """densenet-mini (BatchNorm) on 2 ranks, logging beta; rank 1 cannot read its 2nd batch."""
    folder = tmp_path_factory.mktemp("fail")
    run = _torchrun(launcher, [
        "train", "--dataset", "flaky-phantom", "--loss", "logged-weighted-bce",
        "--arch", "densenet-mini", "--image-size", "32", "--batch-size", "8", "--device", "cpu",
        "--dataset-opt", "fail_rank=1", "--dataset-opt", "fail_batch=2", "--seed", "5",
        "--quiet", "--out", str(folder / "run")], BETA_LOG=str(folder / "beta"))
    return run, folder


def test_a_failure_on_one_rank_stops_all_ranks_with_its_message(failed_run):
    run, folder = failed_run
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 2 and lines[0] == lines[1], run.stderr  # one line from each rank
    assert lines[0].startswith("Error: rank 1 of 2 (training data): image file is truncated "
                               "(phantom-train-"), lines
    assert sorted(p.name for p in (folder / "run").iterdir()) == [
        "config.toml", "epoch-000.pt", "last.pt", "manifest.json", "metrics.jsonl"]


def test_beta_is_computed_per_local_batch(failed_run):
    from cxrsem.default_plugins.phantom import create_dataset

    _, folder = failed_run
    targets = create_dataset(split="train", image_size=32, seed=5, n_train=32).targets("multilabel")
    global_batch = GlobalBatchSampler(32, 8, seed=5).permutation(1)[:8]

    def beta(indices: list[int]) -> list[float]:  # Eq. 1 by hand: #neg / #pos, 1 without positives
        rows = targets[indices]
        return [(len(indices) - float(p)) / float(p) if p else 1.0 for p in rows.sum(0).tolist()]

    for rank in (0, 1):  # each rank's first training batch: the rank-th half of the global one
        logged = json.loads((folder / f"beta.{rank}").read_text().splitlines()[0])
        local = global_batch[4 * rank:4 * rank + 4]
        assert logged == pytest.approx(beta(local)), rank
    assert beta(global_batch[:4]) != pytest.approx(beta(global_batch))  # local is not global


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 5}, r"--batch-size 5 is the global batch and must divide evenly among the 2 "
                        r"processes; use a multiple of 2"),
    ({"dissect_every": 1}, r"--dissect-every is not available under torchrun"),
    ({"shuffle": "generator"}, r"--shuffle generator draws the order of one process"),
])
def test_what_torchrun_refuses_is_one_line_before_any_process_group(tmp_path, monkeypatch, change,
                                                                    message):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; no group is ever initialised
    config = TrainConfig(**{"out": str(tmp_path / "run"), "arch": "densenet-mini",
                            "image_size": 32, "batch_size": 4, "device": "cpu", **change})
    with pytest.raises(UsageError, match=message):
        train(config)
    assert not (tmp_path / "run").exists()


def test_the_cli_hands_shuffle_to_the_library_and_rank_1_stays_silent(tmp_path, capsys,
                                                                     captured_train, monkeypatch):
    from cxrsem.testing import run_cli

    code, out, err = run_cli(["train", "--shuffle", "seeded", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert captured_train["config"].shuffle == "seeded" and "results in" in out
    code, out, err = run_cli(["train", "--out", str(tmp_path / "s")], capsys)
    assert captured_train["config"].shuffle == "auto"  # resolved by the library
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(["train", "--out", str(tmp_path / "t")], capsys)
    assert code == 0 and out == "" and err == ""  # under torchrun, rank 1 prints nothing
