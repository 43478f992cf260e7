"""Fault injection for ``cxrsem train``: SIGKILL at random moments, then ``--resume`` until done.

The resumed run must end with exactly the weights of an uninterrupted run (``torch.equal`` on every
tensor), and after every kill ``best.pt`` / ``last.pt`` must load (atomic writes: never half a file).
Seeded and bounded: at most 4 kills.  Ctrl-C (SIGINT) in a real process prints where the run stands.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from cxrsem.checkpoint import load_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ARGS = ["--dataset", "phantom", "--arch", "densenet-mini", "--image-size", "32", "--batch-size", "8",
        "--dataset-opt", "n_train=48", "--dataset-opt", "n_val=16", "--device", "cpu", "--quiet",
        "--epochs", "4", "--seed", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CXRSEM_CACHE_DIR": "off"}


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "cxrsem", "train", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(path, proc, timeout=120):
    """Until ``path`` exists or ``proc`` has ended (a run writes its first last.pt after epoch 1)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def weights(path):
    return load_checkpoint(path)["state_dict"]


def test_kills_then_resume_give_the_uninterrupted_weights(tmp_path):
    rng = random.Random(13)
    started = time.monotonic()
    code, _, err = finish(start(*ARGS, "--out", str(tmp_path / "full")))
    assert code == 0, err
    duration = time.monotonic() - started

    run = tmp_path / "killed"
    kills = resumes = 0
    for _ in range(12):  # kills, then resumes until the run completes
        resuming = (run / "last.pt").is_file()
        resumes += resuming
        args = ["--resume", str(run)] if resuming else [*ARGS, "--out", str(run), "--overwrite"]
        proc = start(*args)
        if kills < 4:
            if kills and not resuming:
                # Earlier kills all came before any checkpoint: this one waits for the first, so the
                # test always exercises a resume (timing alone made that depend on the machine's load).
                wait_for(run / "last.pt", proc)
                time.sleep(rng.uniform(0.0, 0.25) * duration)
            else:
                time.sleep(rng.uniform(0.3, 1.0) * duration)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate()
            for name in ("best.pt", "last.pt"):
                if (run / name).exists():
                    load_checkpoint(run / name)  # raises on a corrupt file
            if proc.returncode != 0:
                continue
        else:
            code, _, err = finish(proc)
            assert code == 0, err
        if load_checkpoint(run / "last.pt")["train"]["epoch"] == 4:
            break
    else:
        pytest.fail("the killed run never completed")

    assert kills >= 1 and resumes >= 1  # some kill hit a run that had written checkpoints
    expected, got = weights(tmp_path / "full" / "last.pt"), weights(run / "last.pt")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert not list(run.glob(".*.tmp"))


def test_sigint_names_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = start(*ARGS[:-4], "--epochs", "50", "--out", str(run))
    deadline = time.monotonic() + 90
    while not (run / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert (run / "last.pt").exists()
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("Error: interrupted; last good checkpoint: ") and "last.pt" in last_line
    load_checkpoint(run / "last.pt")
