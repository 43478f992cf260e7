"""``torchrun -m cxrsem dissect``: a sharded dissection equals the single-process one bit for bit,
and a failure on one rank stops every rank with that rank's one-line message (no hang).

The runs are real subprocesses (torch.distributed's gloo backend on CPU) under a timeout, so a
hang fails the test instead of blocking CI.  Both sides run with one thread per process: a
convolution's last bits depend on the thread count (torchrun sets ``OMP_NUM_THREADS=1``), and
the comparison is of the statistics, which are exact given the activations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrsem.engine import distributed
from cxrsem.testing import mini_densenet, tiny_checkpoint
from tests.torchrun_launch import REPO, TIMEOUT_S, env, free_port, single, torchrun


def _layer_folder(out: Path) -> Path:
    return next(p.parent for p in out.glob("*/*/dissection.json"))


def test_torchrun_dissection_equals_one_process_bit_for_bit(tmp_path):
    model = tiny_checkpoint(tmp_path / "m.pt", mini_densenet(0, outputs=2), arch="densenet-mini",
                            image_size=32)
    # 30 images in batches of 4 over 3 ranks (12 + 12 + 6); T_k over the first 13 images spans
    # two shards; --sensitivity and --bootstrap ride on the merged statistics; the figures read
    # the top images' maps gathered from every rank.
    args = ["-m", "cxrsem", "dissect", "--model", str(model), "--concepts", "phantom",
            "--concept-opt", "phantom.n_images=30", "--seg-size", "16", "--batch-size", "4",
            "--device", "cpu", "--iou-threshold", "0.005", "--quantile-sample", "13",
            "--sensitivity", "--bootstrap", "10", "--quiet"]
    one = single([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    many = torchrun([*args, "--out", str(tmp_path / "many")], procs=3)
    assert many.returncode == 0, many.stderr + many.stdout
    assert many.stdout.count("results in") == 1  # rank 0 alone reports

    a, b = _layer_folder(tmp_path / "one"), _layer_folder(tmp_path / "many")
    ra, rb = (json.loads((f / "dissection.json").read_text()) for f in (a, b))
    thresholds = [[u["threshold"] for u in r["units"]] for r in (ra, rb)]
    assert thresholds[0] == thresholds[1]  # floats from JSON: bit for bit
    assert [u["ious"] for u in ra["units"]] == [u["ious"] for u in rb["units"]]
    assert ra["num_detectors"] > 0 and ra["detectors"] == rb["detectors"]
    for key in ("units", "concepts", "sensitivity", "bootstrap", "activations", "num_images",
                "definitions"):
        assert ra[key] == rb[key], key
    assert (a / "units.csv").read_bytes() == (b / "units.csv").read_bytes()
    sa, sb = np.load(a / "imagestats.npz"), np.load(b / "imagestats.npz")
    assert sorted(sa.files) == sorted(sb.files)
    for name in sa.files:
        assert np.array_equal(sa[name], sb[name]), name
    figures = sorted(p.name for p in (a / "units").glob("*.png"))
    assert figures and figures == sorted(p.name for p in (b / "units").glob("*.png"))
    for name in figures:
        assert (a / "units" / name).read_bytes() == (b / "units" / name).read_bytes(), name
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 3, "backend": "gloo", "shards": "contiguous"}
    assert "distributed" not in json.loads((a / "manifest.json").read_text())
    assert rb["stats"]["distributed"] == manifest["distributed"]
    assert ra["stats"]["distributed"] == {"world_size": 1, "backend": None}
    assert sorted(p.name for p in (tmp_path / "many" / ".cache").iterdir()) == \
        ["rank-0", "rank-1", "rank-2"]


def test_two_nodes_on_one_machine_give_the_one_process_result(tmp_path):
    """``--nnodes 2``: two torchrun launches (node ranks 0 and 1) meeting at one rendezvous
    endpoint, one process each, as two machines would."""
    model = tiny_checkpoint(tmp_path / "m.pt", mini_densenet(1, outputs=2), arch="densenet-mini",
                            image_size=32)
    args = ["-m", "cxrsem", "dissect", "--model", str(model), "--concepts", "phantom",
            "--concept-opt", "phantom.n_images=16", "--seg-size", "16", "--batch-size", "4",
            "--device", "cpu", "--iou-threshold", "0.005", "--no-figures", "--quiet"]
    one = single([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
         "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
         "--rdzv-id=cxrsem-test", *args, "--out", str(tmp_path / "two")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
        for node in (0, 1)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT_S) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr
    a, b = _layer_folder(tmp_path / "one"), _layer_folder(tmp_path / "two")
    ra, rb = (json.loads((f / "dissection.json").read_text()) for f in (a, b))
    for key in ("units", "concepts", "detectors", "num_images"):
        assert ra[key] == rb[key], key
    assert rb["stats"]["distributed"]["world_size"] == 2
    assert (a / "units.csv").read_bytes() == (b / "units.csv").read_bytes()


_LAUNCHER = '''
import sys

from cxrsem import plugins
from cxrsem.cli import main
from cxrsem.components import ConceptSetInfo, Option
from cxrsem.hookspecs import hookimpl
from cxrsem.testing import TestKitPlugin, ToyBlobs


class Broken(ToyBlobs):
    """toy-blobs whose image ``bad`` cannot be read."""

    def __init__(self, image_size, mask_size, seed, n_images=12, bad=-1):
        super().__init__(image_size, mask_size, seed, n_images=n_images)
        self.bad = bad

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"image file is truncated (toy-{i:04d}.png)")
        return super().__getitem__(i)


class BrokenPlugin:
    @staticmethod
    @hookimpl
    def register_concept_sets(register):
        register(ConceptSetInfo(
            name="broken-blobs",
            factory=lambda image_size, mask_size, root, seed, **kw: Broken(
                image_size, mask_size, seed, **kw),
            options=(Option("n_images", int, 12, "images"), Option("bad", int, -1, "bad image")),
            description="toy-blobs with one unreadable image"))


plugins.register_plugin(TestKitPlugin(), "testkit")
plugins.register_plugin(BrokenPlugin(), "broken")
main(sys.argv[1:])
'''


def test_a_failure_on_one_rank_stops_all_ranks_with_its_message(tmp_path):
    model = tiny_checkpoint(tmp_path / "m.pt", mini_densenet(0, outputs=2), arch="densenet-mini",
                            image_size=32)
    launcher = tmp_path / "launch.py"
    launcher.write_text(_LAUNCHER)
    # 12 images in batches of 2: rank 0 forwards 0..5, rank 1 6..11 and fails on image 9.
    run = torchrun([str(launcher), "dissect", "--model", str(model), "--concepts", "broken-blobs",
                     "--concept-opt", "broken-blobs.bad=9", "--seg-size", "16", "--batch-size",
                     "2", "--device", "cpu", "--no-figures", "--quiet", "--out",
                     str(tmp_path / "out")])
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    expected = "Error: rank 1 of 2 (forward pass): image file is truncated (toy-0009.png)"
    assert lines == [expected, expected], run.stderr  # one line from each rank
    assert not list((tmp_path / "out").glob("*/*/dissection.json"))


def test_shards_are_contiguous_whole_batches_covering_every_image(monkeypatch):
    for n, block, world in [(30, 4, 3), (12, 2, 2), (7, 1, 3), (5, 10, 1), (9, 4, 2)]:
        parts = []
        for rank in range(world):
            monkeypatch.setattr(distributed, "world_size", lambda world=world: world)
            monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
            parts.append(distributed.shard(n, block=block))
        assert [i for part in parts for i in part] == list(range(n))
        assert all(part.start % block == 0 for part in parts)
        sizes = [-(-len(part) // block) for part in parts]
        assert max(sizes) - min(sizes) <= 1


def test_alone_the_helpers_answer_for_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.requested() and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_gather({"a": 1}) == [{"a": 1}]
    assert distributed.shard(5, block=2) == range(5)
    assert distributed.rank_device("auto") == "auto"
    with pytest.raises(ValueError), distributed.step("anything"):
        raise ValueError("an ordinary exception, unchanged")


def test_the_chance_baselines_are_refused_undertorchrun(monkeypatch, tmp_path):
    from cxrsem.dissection import DissectSettings, dissect
    from cxrsem.errors import UsageError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for fields, flag in [({"null_permutations": 5}, "--null shuffle"),
                         ({"null_rotations": 2}, "--null rotation"),
                         ({"null_random_init": 1}, "--null random-init")]:
        with pytest.raises(UsageError, match=f"{flag}: not available under torchrun"):
            dissect(str(tmp_path / "m.pt"), "features", settings=DissectSettings(**fields),
                    out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
