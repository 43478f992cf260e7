"""Fault injection (issue 13): ``cxrsem dissect`` and ``cxrsem attribute`` killed (SIGKILL) at random
moments in a subprocess leave every result folder complete and self-consistent, or the previous
one intact, and a rerun completes.

Seeded and bounded: a few kills per command on a tiny model (densenet-mini at 32/64 px, the
``phantom`` concept set with ``--limit 24 --seg-size 16``), about half a minute per command.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrsem.testing import attribution_assets, mini_densenet, tiny_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

KILLS = 3
LAYER = "features.denseblock4"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CXRSEM_CACHE_DIR="off")
    env.pop("CXRSEM_DEBUG", None)
    return env


def _run(args: list[str], kill_after: float | None = None) -> tuple[int, str]:
    """``python -m cxrsem ARGS``; SIGKILL after ``kill_after`` seconds (None: run to the end)."""
    process = subprocess.Popen([sys.executable, "-m", "cxrsem", *map(str, args)], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=kill_after if kill_after is not None else 120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate()
    return process.returncode, output


def _check_layer_set(folder: Path, known_sha: set[str]) -> None:
    """A complete, self-consistent result set: listed files exactly, units.csv = dissection.json."""
    record = json.loads((folder / "dissection.json").read_text())
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert present == set(record["files"]) | {"dissection.json"}, folder
    assert record["model"]["sha256"] in known_sha
    rows = list(csv.DictReader((folder / "units.csv").open()))
    assert [int(r["unit"]) for r in rows] == [u["unit"] for u in record["units"]]
    assert [r["concept"] for r in rows] == [u["concept"] for u in record["units"]]
    assert [float(r["iou"]) for r in rows] == pytest.approx([u["iou"] for u in record["units"]],
                                                             abs=1e-6)
    detectors = {r["concept"]: int(r["count"]) for r in csv.DictReader((folder / "detectors.csv").open())}
    assert detectors == record["detectors"]


def _check_dissection_out(out: Path, known_sha: set[str]) -> None:
    model_dir = out / "m"
    final = model_dir / LAYER
    if final.exists():
        _check_layer_set(final, known_sha)
    else:  # killed between the two renames of the swap: the previous set waits aside, intact
        aside = [p for p in model_dir.iterdir() if p.name.startswith(f".{LAYER}.old-")]
        assert aside, sorted(p.name for p in model_dir.iterdir())
        _check_layer_set(aside[-1], known_sha)


def _no_leftovers(out: Path) -> None:
    left = [p.relative_to(out).as_posix() for p in out.rglob("*")
            if ".new-" in p.name or ".old-" in p.name or p.name.endswith(".lock")
            or p.name.endswith(".tmp")]
    assert not left, left


def _lock_written(lock: Path) -> bool:
    try:
        return "pid" in json.loads(lock.read_text())
    except (OSError, ValueError):
        return False


def _sha(path: Path) -> str:
    import torch

    from cxrsem.checkpoint import state_dict_sha256

    return state_dict_sha256(torch.load(path, weights_only=True)["state_dict"])


def test_killed_dissections_leave_complete_sets_or_the_previous_one(tmp_path):
    rng = random.Random(13)
    model = tmp_path / "models" / "m.pt"
    out = tmp_path / "out"
    args = ["dissect", "--model", model, "--layer", "denseblock4", "--concepts", "phantom",
            "--limit", "24", "--seg-size", "16", "--quantile", "0.05", "--out", out, "--quiet"]
    known: set[str] = set()

    def write_model(seed: int) -> None:
        tiny_checkpoint(model, mini_densenet(seed, outputs=2), arch="densenet-mini", image_size=32)
        known.add(_sha(model))

    write_model(0)
    started = time.perf_counter()
    code, output = _run(args)
    full = time.perf_counter() - started
    assert code == 0, output
    _check_dissection_out(out, known)
    for kill in range(KILLS):
        write_model(kill + 1)  # another model under the same name: the set is really replaced
        extra = ["--no-cache"] if kill % 2 else []
        code, output = _run(args + extra, kill_after=rng.uniform(0.35, 1.0) * full)
        assert code in (0, -signal.SIGKILL), output
        _check_dissection_out(out, known)
    code, output = _run(args)
    assert code == 0, output
    _check_layer_set(out / "m" / LAYER, known)
    assert json.loads((out / "m" / LAYER / "dissection.json").read_text())["model"]["sha256"] == \
        _sha(model)
    _no_leftovers(out)


def test_killed_attributions_leave_only_whole_files(tmp_path):
    rng = random.Random(31)
    assets = attribution_assets(tmp_path / "a", images=3)
    out = tmp_path / "attr"
    args = ["attribute", assets["images"], "--model", assets["ckpt"], "--layer", "denseblock4",
            "--steps", "8", "--out", out]

    def check() -> None:
        if not out.exists():
            return
        for path in out.iterdir():  # hidden .NAME.*.tmp files of a killed write are not results
            if path.suffix == ".json" and not path.name.startswith("."):
                data = json.loads(path.read_text())
                if path.name != "manifest.json":
                    assert data["schema"] == "cxrsem-attribution/1"

    started = time.perf_counter()
    code, output = _run(args)
    full = time.perf_counter() - started
    assert code == 0, output
    for _ in range(KILLS):
        code, output = _run(args, kill_after=rng.uniform(0.35, 1.0) * full)
        assert code in (0, -signal.SIGKILL), output
        check()
    code, output = _run(args)
    assert code == 0, output
    check()
    assert {p.name for p in out.glob("*.json")} == {"cxr0.json", "cxr1.json", "cxr2.json",
                                                    "manifest.json"}


def test_concurrent_dissection_into_the_same_folder_fails_fast_and_the_first_completes(tmp_path,
                                                                                        capsys):
    from cxrsem.testing import run_cli

    model = tmp_path / "models" / "m.pt"
    tiny_checkpoint(model, mini_densenet(0, outputs=2), arch="densenet-mini", image_size=32)
    out = tmp_path / "out"
    args = ["dissect", "--model", model, "--layer", "denseblock4", "--concepts", "phantom",
            "--limit", "24", "--seg-size", "16", "--out", out, "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "cxrsem", *map(str, args)], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock = out / "m" / f".{LAYER}.lock"
        deadline = time.monotonic() + 60
        while not _lock_written(lock) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _lock_written(lock), "the first dissection never took its lock"
        # Paused while it holds the lock, so the second run always meets a live owner (a fast first
        # run could otherwise finish before the second one looks).
        first.send_signal(signal.SIGSTOP)
        try:
            code, _, err = run_cli(args, capsys)  # the same model again, while the first runs
        finally:
            first.send_signal(signal.SIGCONT)
        last = err.strip().splitlines()[-1]
        assert code == 1 and last.startswith("Error: ") and f"process {first.pid} on " in last, err
        output, _ = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, output
    _check_layer_set(out / "m" / LAYER, {_sha(model)})
    _no_leftovers(out)
