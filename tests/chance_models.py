"""A hand-built model and concept set whose units are known: unit 0 *is* the Consolidation mask
of each image (read from the image channel that carries it), unit 1 is noise, unit 2 fires in a
fixed central rectangle where every image's Cardiomediastinum sits.  The statistics tests check
that the intervals and the chance baselines say exactly that."""

from __future__ import annotations

import torch
from torch import nn

from cxrsem import hookimpl
from cxrsem.components import ArchitectureInfo, ConceptSetInfo
from cxrsem.testing import tiny_checkpoint

IMAGE, MASK, IMAGES = 32, 16, 48
MASK_LEVEL, NOISE_LEVEL = 0.6, 0.3  # image = 0.6 · mask + 0.3 · noise: both readable from one channel


CENTRE = slice(5, 11)  # the location unit's fixed rectangle (at the mask resolution)


class MaskChannelSet(torch.utils.data.Dataset):
    """Every fourth image has a small Consolidation rectangle; Effusion rectangles are drawn
    independently of the image; every image has a Cardiomediastinum rectangle in the middle,
    shifted by up to one pixel (anatomy sits in the same place in every radiograph).  The grey
    image carries the Consolidation mask (level 0.6) plus uniform noise below 0.3, so the mask
    and the noise can each be read back exactly."""

    concepts = ["Consolidation", "Effusion", "Cardiomediastinum"]

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return IMAGES

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        masks = torch.zeros(3, MASK, MASK, dtype=torch.bool)
        for c, present in enumerate((i % 4 == 0, i % 3 == 1)):
            if present:
                y, x = torch.randint(0, MASK - 5, (2,), generator=g).tolist()
                masks[c, y:y + 4, x:x + 5] = True
        dy, dx = (torch.randint(-1, 2, (2,), generator=g)).tolist()
        masks[2, CENTRE.start + dy:CENTRE.stop + dy, CENTRE.start + dx:CENTRE.stop + dx] = True
        carried = masks[0].float().repeat_interleave(2, 0).repeat_interleave(2, 1)
        noise = torch.rand(1, IMAGE, IMAGE, generator=g)
        return {"image": MASK_LEVEL * carried[None] + NOISE_LEVEL * noise, "masks": masks,
                "id": f"mask-{i:03d}"}


class MaskReader(nn.Module):
    """``features`` gives three units at the mask's resolution: unit 0 is 1 exactly on the
    Consolidation mask and 0 elsewhere, unit 1 is the image's noise alone, unit 2 is 1 on a fixed
    central rectangle whatever the image (a "location" unit)."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.features = _Units()
        self.classifier = nn.Linear(3, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class _Units(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x >= MASK_LEVEL
        mask_unit = inside.to(x.dtype)                          # 1 on the mask, 0 elsewhere
        noise_unit = x - MASK_LEVEL * inside                    # the noise, mask removed
        units = nn.functional.avg_pool2d(torch.cat([mask_unit, noise_unit], dim=1), 2)
        location = torch.zeros_like(units[:, :1])
        location[:, :, CENTRE, CENTRE] = 1.0
        return torch.cat([units, location], dim=1)


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


def mask_reader_checkpoint(path):
    """The hand-built model as a cxrsem checkpoint (register :class:`MaskPlugin` first)."""
    torch.manual_seed(0)
    return tiny_checkpoint(path, MaskReader(2), arch="mask-reader", image_size=IMAGE)
