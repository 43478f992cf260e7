"""CUDA variants: the same results on the GPU as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrsem import plugins
from cxrsem.attribution import attribute
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.testing import TestKitPlugin, tiny_checkpoint
from cxrsem.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def test_dissection_on_cuda_equals_cpu(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    results = {}
    for device in ("cpu", "cuda"):
        results[device] = dissect([ckpt], ["features"], out=tmp_path / device, concepts=["toy-blobs"],
                                  settings=DissectSettings(quantile=0.02, seg_size=16),
                                  device=device, figures=False)[0].layers[0]
    np.testing.assert_allclose(results["cuda"].thresholds, results["cpu"].thresholds, rtol=1e-5)
    np.testing.assert_allclose(results["cuda"].iou, results["cpu"].iou, atol=1e-3)


def test_training_runs_on_cuda_with_mixed_precision(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "run"), dataset="phantom", loss="mae-scce",
                               arch="densenet-mini", image_size=48, epochs=1, batch_size=16,
                               device="cuda", dataset_options={"n_train": 64, "n_val": 32}))
    assert result.epochs_run == 1 and np.isfinite(result.history[-1]["train_loss"])


def test_chance_baselines_on_cuda_equal_cpu(tmp_path):
    """The shuffled null and the rotated basis run the same code on the GPU: the same pairings
    and rotations (seeded on the CPU) give the same p-values and null counts."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    results = {}
    for device in ("cpu", "cuda"):
        results[device] = dissect([ckpt], ["features"], out=tmp_path / device, concepts=["toy-blobs"],
                                  settings=DissectSettings(quantile=0.05, seg_size=16,
                                                           null_permutations=50, null_rotations=2),
                                  device=device, figures=False)[0].layers[0]
    cpu, cuda = results["cpu"], results["cuda"]
    np.testing.assert_allclose([u["p_value"] for u in cuda.unit_nulls],
                               [u["p_value"] for u in cpu.unit_nulls], atol=0.05)
    assert cuda.nulls["shuffle"]["num_significant"] == cpu.nulls["shuffle"]["num_significant"]
    assert abs(cuda.nulls["rotation"]["num_detectors"]["mean"]
               - cpu.nulls["rotation"]["num_detectors"]["mean"]) <= 1


def test_attribution_on_cuda_equals_cpu(tmp_path):
    """Integrated Gradients at an inner layer: the same unit scores on the GPU as on the CPU (to
    float32 rounding of the convolutions' different summation order)."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    runs = {device: attribute(images, ckpt, "features", device=device, render=False)
            for device in ("cpu", "cuda")}
    for cpu, cuda in zip(runs["cpu"].results, runs["cuda"].results, strict=True):
        np.testing.assert_allclose(cuda.contributions, cpu.contributions, rtol=1e-3, atol=1e-5)
        assert cuda.data["target"] == cpu.data["target"]
