"""Test kit: tiny models, a toy concept set, phantom samples and pytest fixtures for plugin authors.

``TestKitPlugin`` registers (through the ordinary hooks) the architecture ``tiny-conv`` and the
concept set ``toy-blobs``; ``tiny_checkpoint`` writes a cxrsem checkpoint of any small model;
``tiny_phantom`` builds a few small phantom items (training samples and concept-set samples)::

    from cxrsem import plugins
    from cxrsem.testing import TestKitPlugin, tiny_checkpoint, tiny_phantom
    plugins.register_plugin(TestKitPlugin(), "testkit")

pytest fixtures for plugin authors live in :mod:`cxrsem.testing.pytest_plugin` (kept out of this
module so that importing ``cxrsem.testing`` never needs pytest).  Enable them in the *top-level*
``conftest.py`` of your tests (pytest refuses ``pytest_plugins`` in a conftest found only while
collecting a sub-folder)::

    pytest_plugins = ["cxrsem.testing.pytest_plugin"]

then use ``register_plugin`` (your plugin in cxrsem's registry for one test, even without
installing it) and ``tiny_phantom`` (a session-wide :class:`TinyPhantom`)::

    import my_package.cxrsem_plugin as my_plugin

    def test_my_loss(register_plugin, tiny_phantom):
        register_plugin(my_plugin)
        loss = cxrsem.create_loss("my-loss")
        targets = tiny_phantom.targets("multilabel")
        assert loss(torch.zeros_like(targets), targets).isfinite()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrsem.checkpoint import make_checkpoint, save_checkpoint
from cxrsem.components import ArchitectureInfo, ConceptSetInfo, Option
from cxrsem.hookspecs import hookimpl


def mini_densenet(seed: int = 0, outputs: int = 3) -> nn.Module:
    """A seeded ``densenet-mini`` (1 input channel) in eval mode."""
    from cxrsem.api import create_architecture

    torch.manual_seed(seed)
    return create_architecture("densenet-mini", num_outputs=outputs, in_channels=1).eval()


class TinyConvNet(nn.Module):
    """``features`` (two strided convs) -> global average pool -> ``classifier``."""

    def __init__(self, num_outputs: int = 2, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
        )
        self.classifier = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class ToyBlobs(torch.utils.data.Dataset):
    """Random images with random rectangular concept masks; deterministic per (seed, index).

    ``order`` permutes the images (``"reverse"`` or ``"shuffle"``), ``repeat`` concatenates the set
    with itself: both leave Network Dissection's results unchanged, which tests use.
    """

    concepts = ["blob-a", "blob-b", "blob-c"]

    def __init__(self, image_size: int, mask_size: int, seed: int, n_images: int = 12,
                 order: str = "identity", repeat: int = 1) -> None:
        self.image_size, self.mask_size, self.seed = image_size, mask_size, seed
        base = list(range(n_images))
        if order == "reverse":
            base = base[::-1]
        elif order == "shuffle":
            base = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed + 1)).tolist()
        self.indices = base * repeat

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        image = torch.rand(1, self.image_size, self.image_size, generator=g)
        masks = torch.zeros(len(self.concepts), self.mask_size, self.mask_size, dtype=torch.bool)
        for c in range(len(self.concepts)):
            if torch.rand(1, generator=g).item() < 0.3:
                continue  # this concept is absent from this image
            y0, x0 = torch.randint(0, self.mask_size - 1, (2,), generator=g).tolist()
            h, w = torch.randint(1, self.mask_size // 2 + 2, (2,), generator=g).tolist()
            masks[c, y0:y0 + h, x0:x0 + w] = True
            size = self.image_size / self.mask_size
            rows = slice(int(y0 * size), int((y0 + h) * size))
            cols = slice(int(x0 * size), int((x0 + w) * size))
            image[0, rows, cols] += 0.5 * (c + 1)
        return {"image": image.clamp(0, 2) / 2, "masks": masks, "id": f"toy-{index:04d}"}


class TestKitPlugin:
    """Registers ``tiny-conv`` and ``toy-blobs`` through the ordinary hooks."""

    __test__ = False  # not a pytest test class

    @staticmethod
    @hookimpl
    def register_architectures(register):
        register(ArchitectureInfo(
            name="tiny-conv",
            factory=lambda num_outputs, in_channels, width: TinyConvNet(num_outputs, in_channels, width),
            options=(Option("width", int, 8, "channels of both convs"),),
            description="two strided convs; for tests"))

    @staticmethod
    @hookimpl
    def register_concept_sets(register):
        register(ConceptSetInfo(
            name="toy-blobs",
            factory=lambda image_size, mask_size, root, seed, **kw: ToyBlobs(
                image_size, mask_size, seed, **kw),
            options=(Option("n_images", int, 12, "images"),
                     Option("order", str, "identity", "image order",
                            choices=("identity", "reverse", "shuffle")),
                     Option("repeat", int, 1, "copies of the set")),
            description="random rectangles; for tests"))


def tiny_checkpoint(path: str | Path, model: nn.Module | None = None, *, arch: str = "tiny-conv",
                    arch_kwargs: dict | None = None, image_size: int = 32, task_kind: str = "multilabel",
                    outputs: list[str] | None = None, normalization: dict | None = None,
                    seed: int = 0) -> Path:
    """Write a cxrsem checkpoint for ``model`` (default: a seeded ``TinyConvNet``)."""
    if model is None:
        torch.manual_seed(seed)
        model = TinyConvNet(len(outputs or ["a", "b"]), 1, **(arch_kwargs or {}))
    checkpoint = make_checkpoint(model, arch=arch, arch_kwargs=arch_kwargs or {},
                                 task_kind=task_kind, outputs=outputs or ["a", "b"],
                                 image_size=image_size,
                                 normalization=normalization or {"mean": [0.0], "std": [1.0]})
    return save_checkpoint(path, checkpoint)


def attribution_assets(root: str | Path, *, picture_shape: tuple[int, int] = (64, 64),
                       images: int = 2, seed: int = 0) -> dict:
    """A seeded two-output multilabel ``densenet-mini`` checkpoint (64 px, default normalisation)
    and ``images`` random grey PNGs ``cxrN.png`` of ``picture_shape`` in ``root/images``:
    ``{"root", "ckpt", "images", "model", "sha"}``."""
    from PIL import Image

    from cxrsem.checkpoint import state_dict_sha256
    from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION

    root = Path(root)
    model = mini_densenet(seed, outputs=2)
    ckpt = tiny_checkpoint(root / "model.pt", model, arch="densenet-mini", image_size=64,
                           outputs=["effusion", "edema"], normalization=DEFAULT_NORMALIZATION)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(images):
        pixels = (rng.random(picture_shape) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"cxr{i}.png")
    return {"root": root, "ckpt": str(ckpt), "images": folder, "model": model,
            "sha": state_dict_sha256(model.state_dict())}


@dataclass(frozen=True)
class TinyPhantom:
    """A few built-in phantom samples, small enough for any unit test.

    ``dataset`` (the ``phantom`` training dataset, all four task kinds) and ``concepts`` (the
    ``phantom`` concept set) are ordinary cxrsem datasets; ``images`` ``[n, 1, S, S]`` and ``masks``
    ``[n, C, M, M]`` are the concept set's items stacked, ready to feed a model.
    """

    dataset: torch.utils.data.Dataset
    concepts: torch.utils.data.Dataset
    images: torch.Tensor
    masks: torch.Tensor

    def targets(self, task: str) -> torch.Tensor:
        """Every training target of ``task`` (``multilabel``, ``binary``, ``global-score``, ``zones``)."""
        return self.dataset.targets(task)


def tiny_phantom(n: int = 4, image_size: int = 32, mask_size: int = 16, seed: int = 0) -> TinyPhantom:
    """``n`` phantom training samples and ``n`` concept-set samples, created by name like a user would."""
    from cxrsem.api import create_concept_set, create_dataset

    dataset = create_dataset("phantom", split="train", image_size=image_size, seed=seed,
                             n_train=n, n_val=0, n_test=0)
    concepts = create_concept_set("phantom", image_size=image_size, mask_size=mask_size, seed=seed,
                                  n_images=n)
    items = [concepts[i] for i in range(len(concepts))]
    return TinyPhantom(dataset=dataset, concepts=concepts,
                       images=torch.stack([item["image"] for item in items]),
                       masks=torch.stack([item["masks"] for item in items]))


def run_cli(args, capsys) -> tuple[int | str | None, str, str]:
    """Run ``cxrsem ARGS`` in this process: ``(exit code, stdout, stderr)``, the output captured by
    pytest's ``capsys`` fixture (arguments may be paths or numbers)."""
    from cxrsem.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    else:  # pragma: no cover - main always exits
        raise AssertionError("cxrsem.cli.main returned without an exit code")
    captured = capsys.readouterr()
    return code, captured.out, captured.err
