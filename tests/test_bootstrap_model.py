"""``dissect --bootstrap`` through a real model pass: a hand-built network whose unit 0 *is* the
Consolidation mask of each image (a fixed function reading the image channel that carries it) and
whose unit 1 is noise that ignores the mask.  The intervals must say so: unit 0's IoU interval
lies inside [0.9, 1] with P(detector) = 1, the noise unit's interval holds its own estimate and it
is (almost) never a detector."""

from __future__ import annotations

import json

import torch
from torch import nn

from cxrsem import hookimpl
from cxrsem.components import ArchitectureInfo, ConceptSetInfo
from cxrsem.testing import run_cli, tiny_checkpoint

IMAGE, MASK, IMAGES = 32, 16, 48
MASK_LEVEL, NOISE_LEVEL = 0.6, 0.3  # image = 0.6 · mask + 0.3 · noise: both readable from one channel


class MaskChannelSet(torch.utils.data.Dataset):
    """Every fourth image has a small Consolidation rectangle; Effusion rectangles are drawn
    independently of the image.  The grey image carries the Consolidation mask (level 0.6) plus
    uniform noise below 0.3, so the mask and the noise can each be read back exactly."""

    concepts = ["Consolidation", "Effusion"]

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return IMAGES

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        masks = torch.zeros(2, MASK, MASK, dtype=torch.bool)
        for c, present in enumerate((i % 4 == 0, i % 3 == 1)):
            if present:
                y, x = torch.randint(0, MASK - 5, (2,), generator=g).tolist()
                masks[c, y:y + 4, x:x + 5] = True
        carried = masks[0].float().repeat_interleave(2, 0).repeat_interleave(2, 1)
        noise = torch.rand(1, IMAGE, IMAGE, generator=g)
        return {"image": MASK_LEVEL * carried[None] + NOISE_LEVEL * noise, "masks": masks,
                "id": f"mask-{i:03d}"}


class MaskReader(nn.Module):
    """``features`` gives two units at the mask's resolution: unit 0 is 1 exactly on the
    Consolidation mask and 0 elsewhere, unit 1 is the image's noise alone."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.features = _Units()
        self.classifier = nn.Linear(2, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class _Units(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x >= MASK_LEVEL
        mask_unit = inside.to(x.dtype)                          # 1 on the mask, 0 elsewhere
        noise_unit = x - MASK_LEVEL * inside                    # the noise, mask removed
        return nn.functional.avg_pool2d(torch.cat([mask_unit, noise_unit], dim=1), 2)


class MaskPlugin:
    @staticmethod
    @hookimpl
    def register_architectures(register):
        register(ArchitectureInfo(name="mask-reader", description="reads the mask channel; for tests",
                                  factory=lambda num_outputs, in_channels: MaskReader(num_outputs)))

    @staticmethod
    @hookimpl
    def register_concept_sets(register):
        register(ConceptSetInfo(name="mask-channel", description="masks carried by the image; for tests",
                                factory=lambda image_size, mask_size, root, seed: MaskChannelSet(seed)))


def test_a_unit_that_is_the_mask_and_a_noise_unit_through_the_model(tmp_path, capsys, register_plugin):
    register_plugin(MaskPlugin(), "mask-plugin")
    torch.manual_seed(0)
    model = tiny_checkpoint(tmp_path / "reader.pt", MaskReader(2), arch="mask-reader",
                            image_size=IMAGE)
    # q = 0.01 is below the mask's share of all pixels (12 of 48 images, 20 of 256 pixels: 2%), so
    # T_0 is 1 and unit 0's mask (activation >= T_0) is exactly the Consolidation mask; the noise
    # unit's top 1% fall anywhere.
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "features", "--concepts",
                            "mask-channel", "--seg-size", MASK, "--quantile", 0.01,
                            "--bootstrap", 400, "--no-figures", "--out", tmp_path / "d", "--quiet"],
                           capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "d" / "reader" / "features" / "dissection.json").read_text())
    mask_unit, noise_unit = record["units"]
    assert mask_unit["concept"] == "Consolidation" and mask_unit["iou"] == 1.0
    low, high = mask_unit["iou_interval"]
    assert 0.9 <= low <= high <= 1.0 and mask_unit["p_detector"] == 1.0
    low, high = noise_unit["iou_interval"]
    assert low <= noise_unit["iou"] <= high and noise_unit["iou"] < 0.04
    assert noise_unit["p_detector"] <= 0.1
    assert record["bootstrap"]["detectors"]["Consolidation"] == {"count": 1.0, "low": 1.0, "high": 1.0}
