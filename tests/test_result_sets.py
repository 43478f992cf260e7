"""Nothing lost, nothing mixed, nothing outside ``--out`` (issue 13): safe output names, folder
locks, result sets swapped in whole, reserved attribution names, damaged caches, non-finite
activations, literal model paths, and no empty output folder after a failure."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrsem import plugins
from cxrsem.attribution.inputs import unique_stems
from cxrsem.dissection.results import model_folder_names
from cxrsem.outputs import (
    FolderLock,
    LockedError,
    output_dir,
    safe_name,
    staged_folder,
)
from cxrsem.testing import TestKitPlugin, TinyConvNet, attribution_assets, run_cli, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _dissect_args(model, out, *extra):
    return ["dissect", "--model", model, "--layer", "features", "--concepts", "toy-blobs",
            "--seg-size", "16", "--quantile", "0.05", "--out", out, "--quiet", *extra]


def _one_line_error(code, stderr, *fragments):
    last = stderr.strip().splitlines()[-1]
    assert code != 0 and last.startswith("Error: "), stderr
    assert "Traceback" not in stderr and stderr.count("Error: ") == 1, stderr
    for fragment in fragments:
        assert fragment in last, stderr


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- 1. names from user data stay inside --out -------------------------------------------------------


@pytest.mark.parametrize("text", ["..", ".", "...", "a/b", "../../etc", "a\\b", "a\x00b", "",
                                  "tab\there", "x" * 300, "é" * 200, ".hidden", "/abs", " ..",
                                  ". ", "bad\udcffbyte", "   "])
def test_safe_name_is_one_bounded_stable_component(text):
    name = safe_name(text)
    assert name and name not in (".", "..") and not name.startswith(".")
    assert not set(name) & {"/", "\\", "\x00", "\t"}
    assert len(name.encode("utf-8")) <= 120
    assert safe_name(text) == name  # stable
    assert Path(name).name == name and len(Path(name).parts) == 1


def test_safe_name_keeps_ordinary_names_and_long_ones_apart():
    assert safe_name("epoch-003") == "epoch-003" and safe_name("features.denseblock4") == \
        "features.denseblock4"
    assert safe_name("..") == "__"
    a, b = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert a != b and a.startswith("x" * 100) and len(a) == 120


def test_model_folder_names_are_safe_and_distinct():
    paths = [Path("m/...pt"), Path("m/a\\b.pt"), Path("m/a\x00b.pt"), Path("m/" + "y" * 250 + ".pt"),
             Path("m/.cache.pt")]
    names = model_folder_names(paths)
    assert len(set(names.values())) == len(paths)
    for name in names.values():
        assert name == safe_name(name) and not name.startswith(".")
    assert names[Path("m/...pt")] == "__"


def test_dissect_of_dotdot_model_stays_inside_out(tmp_path, capsys):
    models = tmp_path / "models"
    tiny_checkpoint(models / "...pt")
    tiny_checkpoint(models / ("z" * 200 + ".pt"), seed=1)
    tiny_checkpoint(models / "back\\slash.pt", seed=2)
    before = _tree(tmp_path)
    out = tmp_path / "work" / "out"
    for model in sorted(models.iterdir()):
        code, _, err = run_cli(_dissect_args(model, out, "--no-figures"), capsys)
        assert code == 0, err
    # Nothing appeared outside --out (in particular no work/features or work/__/...).
    assert {p for p in _tree(tmp_path) - before if not p.startswith("work/out")} == {"work"}
    assert (out / "__" / "features" / "dissection.json").is_file()
    assert (out / "back-slash" / "features" / "dissection.json").is_file()
    long = [p for p in out.iterdir() if p.name.startswith("zzz")]
    assert len(long) == 1 and len(long[0].name) == 120
    assert (long[0] / "features" / "dissection.json").is_file()


def test_unique_stems_are_safe():
    stem = unique_stems(False)
    assert stem("imgs/..png") == "_"
    assert stem("imgs/a\\b.png") == "a-b"
    assert stem("imgs/" + "q" * 240 + ".png").endswith(safe_name("q" * 240)[-9:])
    tensor = unique_stems(True)
    assert tensor("../../x") == "__-..-x"


def test_unique_stems_reserve_run_files_and_ignore_case():
    stem = unique_stems(False)
    assert [stem(n) for n in ("a/Manifest.png", "b/manifest.png", "manifest-image.png", "A.png",
                              "a.png", "summary.dcm")] == [
        "Manifest-image", "manifest-image-2", "manifest-image-3", "A", "a-2", "summary-image"]


def test_attribute_of_odd_image_names_stays_inside_out(tmp_path, capsys):
    assets = attribution_assets(tmp_path / "a")
    folder = tmp_path / "imgs"
    folder.mkdir()
    source = (assets["images"] / "cxr0.png").read_bytes()
    for name in ("back\\slash.png", "w" * 200 + ".png"):
        (folder / name).write_bytes(source)
    dotdot = tmp_path / "other" / "..png"  # hidden in a folder: given as a file
    dotdot.parent.mkdir()
    dotdot.write_bytes(source)
    out = tmp_path / "work" / "attr"
    before = _tree(tmp_path)
    code, _, err = run_cli(["attribute", folder, dotdot, "--model", assets["ckpt"], "--layer",
                            "denseblock4", "--steps", "4", "--out", out], capsys)
    assert code == 0, err
    assert {p for p in _tree(tmp_path) - before if not p.startswith("work/attr")} == {"work"}
    names = {p.name for p in out.iterdir()}
    assert {"_.json", "_.png", "back-slash.json"} <= names
    assert all(len(n.encode()) <= 130 for n in names)


# --- 2. one owner per result folder and cache entry ---------------------------------------------------


def test_lock_is_exclusive_and_names_its_owner(tmp_path):
    target = tmp_path / "result"
    with FolderLock(target, what="the result"):
        data = json.loads((tmp_path / ".result.lock").read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
        with pytest.raises(LockedError) as info:
            FolderLock(target, what="the result").acquire()
        message = str(info.value)
        assert f"process {os.getpid()} on {socket.gethostname()} since {data['since']}" in message
        assert "\n" not in message
    assert not (tmp_path / ".result.lock").exists()
    with FolderLock(target):  # free again
        pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    lock = tmp_path / ".result.lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                "since": "2020-01-01T00:00:00+00:00"}))
    with pytest.warns(UserWarning, match="stale lock"), FolderLock(tmp_path / "result"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / ".result.lock").write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere",
                                                       "since": "x"}))
    with pytest.raises(LockedError, match="on elsewhere since x"):
        FolderLock(tmp_path / "result").acquire()


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_second_dissection_into_a_folder_being_written_fails_at_once(tmp_path, capsys, sleeper):
    model = tiny_checkpoint(tmp_path / "a" / "m.pt")
    out = tmp_path / "out"
    (out / "m").mkdir(parents=True)
    (out / "m" / ".features.lock").write_text(json.dumps(
        {"pid": sleeper, "host": socket.gethostname(), "since": "2026-01-01T10:00:00+00:00"}))
    code, _, err = run_cli(_dissect_args(model, out), capsys)
    _one_line_error(code, err, f"process {sleeper} on {socket.gethostname()} since 2026-01-01T10:00",
                    "dissection result")
    assert not (out / "m" / "features").exists() and not (out / ".cache").exists()
    # The same lock left by a process that is gone: taken over, with one warning line.
    (out / "m" / ".features.lock").write_text(json.dumps(
        {"pid": _dead_pid(), "host": socket.gethostname(), "since": "2026-01-01T10:00:00+00:00"}))
    code, _, err = run_cli(_dissect_args(model, out), capsys)
    assert code == 0, err
    assert "Warning: taking over the stale lock of dissection result" in err
    assert not (out / "m" / ".features.lock").exists()


def test_dissection_whose_cache_entry_is_being_written_fails_at_once(tmp_path, capsys, sleeper):
    # Same weights under another name: another result folder, the same cache entry.
    tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--no-figures"), capsys)
    assert code == 0, err
    (entry,) = [p for p in (out / ".cache").iterdir() if not p.name.startswith(".")]
    (out / ".cache" / f".{entry.name}.lock").write_text(json.dumps(
        {"pid": sleeper, "host": socket.gethostname(), "since": "2026-01-01T10:00:00+00:00"}))
    (tmp_path / "copy.pt").write_bytes((tmp_path / "m.pt").read_bytes())
    code, _, err = run_cli(_dissect_args(tmp_path / "copy.pt", out), capsys)
    _one_line_error(code, err, "activation cache", f"process {sleeper}")
    assert not (out / "copy" / "features").exists() and not (out / ".copy").exists()


# --- 3. a layer's result set is swapped in whole -------------------------------------------------------


def _check_set(folder: Path) -> dict:
    record = json.loads((folder / "dissection.json").read_text())
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert present == set(record["files"]) | {"dissection.json"}
    rows = list(csv.DictReader((folder / "units.csv").open()))
    assert [float(r["iou"]) for r in rows] == pytest.approx([u["iou"] for u in record["units"]],
                                                             abs=1e-6)
    return record


def test_no_figures_rerun_drops_the_previous_figures(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "m.pt", seed=0)
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out), capsys)
    assert code == 0, err
    folder = out / "m" / "features"
    first = _check_set(folder)
    assert "summary.png" in first["files"] and any(f.startswith("units/") for f in first["files"])
    tiny_checkpoint(tmp_path / "m.pt", seed=5)  # another model under the same name
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--no-figures"), capsys)
    assert code == 0, err
    second = _check_set(folder)
    assert second["model"]["sha256"] != first["model"]["sha256"]
    assert not (folder / "summary.png").exists() and not (folder / "units").exists()
    assert sorted(p.name for p in (out / "m").iterdir()) == ["features"]  # no staging left


def test_failed_rewrite_keeps_the_previous_set(tmp_path, capsys, monkeypatch):
    tiny_checkpoint(tmp_path / "m.pt", seed=0)
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out), capsys)
    assert code == 0, err
    folder = out / "m" / "features"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr("cxrsem.dissection.figures.summary_figure", killed)
    tiny_checkpoint(tmp_path / "m.pt", seed=5)
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--no-cache"), capsys)
    assert code != 0 and "killed while drawing" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (out / "m").iterdir()) == ["features"]


def test_staged_folder_swaps_or_keeps(tmp_path):
    final = tmp_path / "set"
    with staged_folder(final) as staging:
        (staging / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(KeyError), staged_folder(final) as staging:
        (staging / "b.txt").write_text("2")
        raise KeyError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"] and _tree(final) == {"a.txt"}


def test_report_shows_only_listed_files(tmp_path, capsys):
    from cxrsem.reporting.collect import collect

    tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--no-figures"), capsys)
    assert code == 0, err
    folder = out / "m" / "features"
    (folder / "units").mkdir()
    (folder / "units" / "unit-0000.png").write_bytes(b"left by another run")
    (folder / "summary.png").write_bytes(b"left by another run")
    (d,) = collect([out]).dissections
    assert d.unit_figure(0) is None and d.summary_figure() is None and d.manifest()
    record = json.loads((folder / "dissection.json").read_text())
    del record["files"]  # an older result without the list: every file is its own
    (folder / "dissection.json").write_text(json.dumps(record))
    (d,) = collect([out]).dissections
    assert d.unit_figure(0) == folder / "units" / "unit-0000.png"


# --- 4. per-image files never take a run file's name ----------------------------------------------------


def test_images_named_like_run_files_get_a_suffix(tmp_path, capsys):
    assets = attribution_assets(tmp_path / "a")
    folder = tmp_path / "imgs"
    folder.mkdir()
    source = (assets["images"] / "cxr0.png").read_bytes()
    for name in ("manifest.png", "config.png", "summary.png", "concepts.png", "cxr.png"):
        (folder / name).write_bytes(source)
    Image.open(assets["images"] / "cxr0.png").save(folder / "config.jpg")
    out = tmp_path / "attr"
    code, _, err = run_cli(["attribute", folder, "--model", assets["ckpt"], "--layer", "denseblock4",
                            "--steps", "4", "--out", out], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert "cxrsem" in manifest and "schema" not in manifest  # still the run's manifest
    assert "[attribute]" in (out / "config.toml").read_text()
    rows = {Path(r["image"]).name: r["json"] for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["manifest.png"] == "manifest-image.json"
    assert rows["config.jpg"] == "config-image.json"
    assert rows["summary.png"] == "summary-image.json"
    assert rows["concepts.png"] == "concepts-image.json"
    assert rows["config.png"] == "config-image-2.json" and rows["cxr.png"] == "cxr.json"
    assert len(set(rows.values())) == 6
    for name in rows.values():
        assert json.loads((out / name).read_text())["schema"] == "cxrsem-attribution/1"
    assert (out / "summary-image.png").is_file()


# --- 5. damaged caches are recomputed; non-finite activations are refused -------------------------------


def _cache_layer_file(out: Path) -> Path:
    (entry,) = [p for p in (out / ".cache").iterdir() if not p.name.startswith(".")]
    return entry / "features.float32"


@pytest.mark.parametrize("damage, said", [("nan", "holds NaN"), ("short", "bytes"),
                                          ("missing", "is missing")])
def test_damaged_cache_is_recomputed_with_a_warning(tmp_path, capsys, damage, said):
    tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--no-figures"), capsys)
    assert code == 0, err
    good = (out / "m" / "features" / "units.csv").read_text()
    layer_file = _cache_layer_file(out)
    data = np.fromfile(layer_file, dtype=np.float32)
    if damage == "nan":
        data[len(data) // 2:len(data) // 2 + 7] = np.nan
        data.tofile(layer_file)
    elif damage == "short":
        data[: len(data) - 100].tofile(layer_file)
    else:
        layer_file.unlink()
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--no-figures"), capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and said in warnings[0], err
    assert "recomputing" in warnings[0]
    assert (out / "m" / "features" / "units.csv").read_text() == good
    record = json.loads((out / "m" / "features" / "dissection.json").read_text())
    assert record["stats"]["cache_reused"] is False
    assert np.isfinite(np.fromfile(_cache_layer_file(out), dtype=np.float32)).all()


def _nan_checkpoint(path: Path) -> Path:
    # Finite weights (a checkpoint with NaN weights is refused when loaded) that overflow.
    model = TinyConvNet()
    with torch.no_grad():
        model.features[0].weight.fill_(3e38)
    return tiny_checkpoint(path, model)


def test_dissect_refuses_non_finite_activations(tmp_path, capsys):
    _nan_checkpoint(tmp_path / "nan.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "nan.pt", out), capsys)
    _one_line_error(code, err, "layer 'features'", "non-finite activations")
    assert not out.exists()  # created by the failed command, never filled: removed


def test_attribute_refuses_non_finite_activations(tmp_path, capsys):
    import cxrsem
    from cxrsem.checkpoint import make_checkpoint, save_checkpoint
    from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION

    assets = attribution_assets(tmp_path / "a")
    model = cxrsem.create_architecture("densenet-mini", num_outputs=2)
    with torch.no_grad():
        next(model.parameters()).fill_(3e38)  # finite weights whose activations overflow
    ckpt = save_checkpoint(tmp_path / "nan.pt", make_checkpoint(
        model, arch="densenet-mini", arch_kwargs={}, task_kind="multilabel",
        outputs=["effusion", "edema"], image_size=64, normalization=DEFAULT_NORMALIZATION))
    out = tmp_path / "attr"
    code, _, err = run_cli(["attribute", assets["images"], "--model", ckpt, "--layer", "denseblock4",
                            "--steps", "4", "--out", out], capsys)
    _one_line_error(code, err, "features.denseblock4", "non-finite activations", "cxr0.png")
    assert not out.exists()


# --- 6. an existing path is not a glob -----------------------------------------------------------------


def test_existing_model_path_with_glob_characters_is_taken_literally(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "run[1].pt")
    tiny_checkpoint(tmp_path / "run1.pt", seed=3)  # what the glob 'run[1].pt' would match
    out = tmp_path / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "run[1].pt", out, "--no-figures"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["run[1]"]
    record = json.loads((out / "run[1]" / "features" / "dissection.json").read_text())
    assert record["model"]["path"].endswith("run[1].pt")


# --- 7. a failed command leaves no empty output folder ---------------------------------------------------


def test_failed_dissect_removes_only_the_folder_it_created(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "new" / "out"
    code, _, err = run_cli(_dissect_args(tmp_path / "m.pt", out, "--layer", "classifier"), capsys)
    assert code != 0 and "outputs neither a feature map" in err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    code, _, _ = run_cli(_dissect_args(tmp_path / "m.pt", existing, "--layer", "classifier"), capsys)
    assert code != 0 and existing.is_dir()


def test_failed_attribute_removes_only_the_folder_it_created(tmp_path, capsys, monkeypatch):
    assets = attribution_assets(tmp_path / "a")

    def broken(*args, **kwargs):
        raise RuntimeError("method failed")

    monkeypatch.setattr("cxrsem.attribution.api._explain", broken)
    out = tmp_path / "attr"
    args = ["attribute", assets["images"], "--model", assets["ckpt"], "--layer", "denseblock4",
            "--steps", "4", "--out", out]
    code, _, err = run_cli(args, capsys)
    assert code != 0 and "method failed" in err
    assert not out.exists()  # it held only config.toml and manifest.json
    out.mkdir()
    code, _, err = run_cli(args, capsys)
    assert code != 0 and out.is_dir()


def test_output_dir_keeps_a_folder_with_results(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(KeyError), output_dir(out) as folder:
        (folder / "result.json").write_text("{}")
        raise KeyError("late failure")
    assert (out / "result.json").is_file()


def test_attribution_folder_has_one_owner_and_sheds_a_killed_runs_temporaries(tmp_path, capsys):
    from cxrsem.attribution.api import ATTRIBUTION_LOCK

    assets = attribution_assets(tmp_path / "a")
    out = tmp_path / "attr"
    out.mkdir()
    stale = out / ".cxr0.json.abcd1234.tmp"  # what a SIGKILL mid-write leaves
    stale.write_text("{half")
    mine = out / "notes.txt"
    mine.write_text("keep")
    args = ["attribute", assets["images"], "--model", assets["ckpt"], "--layer", "denseblock4",
            "--steps", "4", "--out", out]
    with FolderLock(out, what=f"attribution folder {out}", path=out / ATTRIBUTION_LOCK):
        code, _, err = run_cli(args, capsys)  # this process plays the first writer: alive
        _one_line_error(code, err, f"attribution folder {out} is being written by process "
                                   f"{os.getpid()}")
    assert stale.exists() and not (out / "cxr0.json").exists()  # nothing touched while owned
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert not stale.exists() and mine.read_text() == "keep"
    assert {"cxr0.json", "cxr1.json", "summary.csv"} <= {p.name for p in out.iterdir()}
    assert not (out / ATTRIBUTION_LOCK).exists()
