"""``torchrun -m cxrsem attribute``: the inputs are sharded over the ranks, every rank writes its own
images' files and rank 0 the tables -- byte for byte those of one process -- and a failure on one
rank stops every rank with one line (no hang).

The runs are real subprocesses (gloo on CPU) under a timeout, so a hang fails the test instead of
blocking CI.  Both sides run with one thread per process: a convolution's last bits depend on the
thread count (torchrun sets ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsem.testing import attribution_assets
from tests.torchrun_launch import single, torchrun

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun subprocesses")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The 64-px densenet-mini of ``attribution_assets``, a hand-made dissection of it (three
    concepts, some units unlabelled) and 10 inputs: a folder of 9 files (``a.jpg`` and ``a.png``
    share a stem, ``corrupt.png`` cannot be read) and ``other/cxr0.png``, whose stem collides
    with the folder's ``cxr0.png`` across ranks."""
    root = tmp_path_factory.mktemp("attribute-distributed")
    base = attribution_assets(root, images=6)
    folder = base["images"]
    rng = np.random.default_rng(1)
    pixels = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.jpg")
    Image.fromarray(pixels[::-1]).save(folder / "a.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (root / "other").mkdir()
    shutil.copy(folder / "cxr1.png", root / "other" / "cxr0.png")
    dissection = root / "dissect" / "dissection.json"
    dissection.parent.mkdir()
    concepts = ["cardiomegaly", "effusion", "nodule"]
    dissection.write_text(json.dumps({
        "schema": "cxrsem-dissection/1", "model": {"path": "model.pt", "sha256": base["sha"]},
        "layer": "features.denseblock4", "num_units": 69, "settings": {"iou_threshold": 0.04},
        "units": [{"unit": u, "concept": concepts[u % 3], "iou": 0.01 * (u % 7),
                   "detector": u % 7 > 3} for u in range(69)]}))
    return {"root": root, "ckpt": base["ckpt"], "folder": folder,
            "extra": root / "other" / "cxr0.png", "dissection": dissection}


def _args(assets, out: Path, *extra: str) -> list[str]:
    # 10 inputs in batches of 3 over 2 ranks: rank 0 explains positions 0..5 (corrupt.png, the
    # third, mid-batch), rank 1 6..9 (other/cxr0.png last: stem cxr0-2).
    return ["attribute", str(assets["folder"]), str(assets["extra"]), "--model", assets["ckpt"],
            "--layer", "denseblock4", "--dissection", str(assets["dissection"]), "--steps", "4",
            "--batch-size", "3", "--device", "cpu", "--ablate", "--ablate-k", "1,2",
            "--ablate-random", "2", "--out", str(out), *extra]


def test_torchrun_attribution_equals_one_process_byte_for_byte(assets, tmp_path):
    one_dir, many_dir = tmp_path / "one", tmp_path / "two"  # same length: same table layout
    one = single(["-m", "cxrsem", *_args(assets, one_dir)])
    assert one.returncode == 0, one.stderr
    many = torchrun(["-m", "cxrsem", *_args(assets, many_dir)])
    assert many.returncode == 0, many.stderr + many.stdout

    for name in ("summary.csv", "concepts.csv"):
        assert (one_dir / name).read_bytes() == (many_dir / name).read_bytes(), name
    rows = list(csv.DictReader((many_dir / "summary.csv").open()))
    assert [Path(r["image"]).name for r in rows] == [
        "a.jpg", "a.png", "corrupt.png", *(f"cxr{i}.png" for i in range(6)), "cxr0.png"]
    assert [r["status"] for r in rows].count("skipped") == 1 and rows[2]["status"] == "skipped"
    assert [r["json"] for r in rows if r["json"]][:2] == ["a.json", "a-2.json"]
    assert rows[-1]["json"] == "cxr0-2.json"  # rank 1's file, named after rank 0's cxr0.json
    concepts = list(csv.DictReader((many_dir / "concepts.csv").open()))
    assert len(concepts) >= 3 and {"cardiomegaly", "unlabelled"} <= {r["concept"] for r in concepts}

    per_image = sorted(p.name for p in one_dir.iterdir() if p.suffix in (".json", ".png")
                       and p.name != "manifest.json")
    assert len(per_image) == 18  # 9 images x (json, png)
    assert per_image == sorted(p.name for p in many_dir.iterdir()
                               if p.suffix in (".json", ".png") and p.name != "manifest.json")
    for name in per_image:
        if name.endswith(".json"):
            a, b = (json.loads((d / name).read_text()) for d in (one_dir, many_dir))
            assert a == b, name  # every number, floats from JSON: bit for bit
            assert "ablation" in a
        else:
            assert (one_dir / name).read_bytes() == (many_dir / name).read_bytes(), name
    assert (one_dir / "config.toml").read_text().replace(str(one_dir), "OUT") == \
        (many_dir / "config.toml").read_text().replace(str(many_dir), "OUT")
    manifest = json.loads((many_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo", "shards": "contiguous"}
    assert "distributed" not in json.loads((one_dir / "manifest.json").read_text())
    assert not list(many_dir.glob(".*"))  # no lock or temporary left

    # Rank 0 alone prints the table of every rank's images, as one process does; each skipped
    # image is warned about once, by the rank that read it.
    assert many.stdout.count("results in") == 1 and many.stdout.count("semantic attribution") == 1
    assert "9 attribution(s)" in many.stdout and "1 image(s) skipped" in many.stdout
    assert many.stdout.replace(str(many_dir), "OUT") == one.stdout.replace(str(one_dir), "OUT")
    assert many.stderr.count("Warning: skipped") == 1 and "corrupt.png" in many.stderr


_LAUNCHER = '''
import sys

import torch

from cxrsem import plugins
from cxrsem.attribution.gradient_methods import GradientTimesActivation
from cxrsem.cli import main
from cxrsem.components import AttributionMethodInfo
from cxrsem.hookspecs import hookimpl


class NanOnFlat:
    """grad-x-act whose maps are NaN for a flat image (all pixels equal)."""

    def __init__(self):
        self.inner = GradientTimesActivation.from_options()

    def __call__(self, split, images, **kwargs):
        result = self.inner(split, images, **kwargs)
        flat = (images.flatten(1).std(dim=1) == 0).view(-1, 1, 1, 1)
        result.attributions = torch.where(flat, float("nan"), result.attributions)
        return result


class NanPlugin:
    @staticmethod
    @hookimpl
    def register_attribution_methods(register):
        register(AttributionMethodInfo(name="nan-on-flat", factory=NanOnFlat,
                                       description="NaN maps for flat images; for tests"))


plugins.register_plugin(NanPlugin(), "nan")
main(sys.argv[1:])
'''


def test_a_failure_on_one_rank_stops_all_ranks_with_one_line(assets, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(assets["folder"], folder)
    # 4 readable images, flat.png last of 5: rank 0 holds 0..2, rank 1 3..4 and fails on flat.png.
    for name in ("a.jpg", "a.png", "corrupt.png", "cxr0.png", "cxr1.png"):
        (folder / name).unlink()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(folder / "flat.png")
    launcher = tmp_path / "launch.py"
    launcher.write_text(_LAUNCHER)
    out = tmp_path / "out"
    run = torchrun([str(launcher), "attribute", str(folder), "--model", assets["ckpt"],
                     "--layer", "denseblock4", "--method", "nan-on-flat", "--batch-size", "3",
                     "--device", "cpu", "--out", str(out)])
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 2 and lines[0] == lines[1], run.stderr  # one line from each rank
    assert lines[0].startswith("Error: rank 1 of 2 (attribution): layer 'features.denseblock4'")
    assert "non-finite attributions" in lines[0] and "flat.png" in lines[0]
    assert "semantic attribution" not in run.stdout
    assert not (out / "summary.csv").exists()
    assert not (out / ".cxrsem-attribute.lock").exists()


def test_an_output_folder_error_reaches_every_rank(assets, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file where the folder should be")
    run = torchrun(["-m", "cxrsem", "attribute", str(assets["extra"]), "--model", assets["ckpt"],
                     "--layer", "denseblock4", "--steps", "2", "--device", "cpu",
                     "--out", str(taken)])
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 2 and lines[0] == lines[1], run.stderr
    assert lines[0].startswith("Error: rank 0 of 2 (output folder): output folder")
    assert "exists and is a file" in lines[0]


def test_summary_rows_follow_the_input_order_on_one_process(assets, tmp_path):
    """A skipped image mid-batch keeps its place in summary.csv; stems are the inputs' own
    (``a.jpg`` is ``a`` and ``a.png`` ``a-2`` whichever of them could be read)."""
    from cxrsem.attribution import attribute

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "cxr0.png", "cxr1.png"):
        shutil.copy(assets["folder"] / name, folder / name)
    (folder / "b.png").write_bytes(b"not a png")  # between a.jpg and cxr0.png
    run = attribute([folder, assets["folder"] / "a.png"], assets["ckpt"], "denseblock4",
                    steps=2, batch_size=4, device="cpu", out=tmp_path / "out", render=False)
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "b.png", "cxr0.png", "cxr1.png",
                                                     "a.png"]
    assert [r["status"] for r in rows] == ["ok", "skipped", "ok", "ok", "ok"]
    assert [r.stem for r in run] == ["a", "cxr0", "cxr1", "a-2"]
    assert type(run).__name__ == "AttributionRun"  # one process: the plain run, as before
