"""Your own model in memory (issue 17): an ``nn.Module`` with its input spec goes through
dissection and attribution exactly like the cxrsem checkpoint of the same weights, the user's
module is left as it was, and a plain dataset of (image, masks) is a concept set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import cxrsem
from cxrsem.api import create_architecture, create_concept_set
from cxrsem.checkpoint import make_checkpoint, save_checkpoint
from cxrsem.dissection import DissectSettings
from cxrsem.errors import UsageError
from cxrsem.modules import module_checkpoint, parse_normalization
from cxrsem.testing import mini_densenet

SETTINGS = dict(seg_size=16, quantile=0.02)
IMAGES = 24


def _same_dissection(a, b) -> None:
    (la,), (lb,) = a.layers, b.layers
    assert la.layer == lb.layer
    assert np.array_equal(la.thresholds, lb.thresholds)
    assert np.array_equal(la.iou, lb.iou)


def test_a_plain_torchvision_densenet_dissects_like_its_cxrsem_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.densenet121(num_classes=14)  # 3 input channels, as torchvision builds it
    model = module_checkpoint(net, image_size=64, normalization="imagenet")
    assert model["input"]["channels"] == 3 and len(model["task"]["outputs"]) == 14
    options = {"phantom": {"n_images": IMAGES}}
    mine = cxrsem.dissect(model, "features.denseblock4", "phantom", concept_options=options,
                          settings=DissectSettings(**SETTINGS), device="cpu")
    # The same weights as a checkpoint of cxrsem's densenet121 with a 3-channel stem.
    twin = create_architecture("densenet121", num_outputs=14, in_channels=3)
    twin.load_state_dict(net.state_dict())
    path = save_checkpoint(tmp_path / "twin.pt", make_checkpoint(
        twin, arch="densenet121", arch_kwargs={}, task_kind="multilabel",
        outputs=model["task"]["outputs"], image_size=64, channels=3,
        normalization=model["input"]["normalization"]))
    (theirs,) = cxrsem.dissect([path], ["denseblock4"], concept_options=options,
                               settings=DissectSettings(**SETTINGS), device="cpu",
                               out=tmp_path / "d", figures=False)
    _same_dissection(mine, theirs)
    assert mine.model_sha256 == theirs.model_sha256


def test_the_users_module_is_left_as_it_was_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = mini_densenet(seed=2, outputs=4).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = cxrsem.dissect(net, "denseblock4", image_size=32, concept_options={
        "phantom": {"n_images": IMAGES}}, settings=DissectSettings(**SETTINGS), device="cpu")
    assert result.layers[0].layer == "features.denseblock4"
    assert net.training  # not put into eval mode
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert list(tmp_path.iterdir()) == []  # out=None: no files anywhere


def test_a_plain_dataset_of_image_and_masks_is_a_concept_set():
    phantom = create_concept_set("phantom", image_size=32, mask_size=16, n_images=IMAGES)

    class Pairs(torch.utils.data.Dataset):
        """The phantom's items as (image, masks) tuples: a NumPy [H, W] image, masks at twice
        the seg size."""

        def __len__(self):
            return len(phantom)

        def __getitem__(self, i):
            item = phantom[i]
            big = torch.nn.functional.interpolate(item["masks"][None].float(), scale_factor=2,
                                                  mode="nearest")[0] > 0
            return item["image"][0].numpy(), big

    net = mini_densenet(seed=3)
    spec = dict(image_size=32, settings=DissectSettings(**SETTINGS), device="cpu")
    ours = cxrsem.dissect(net, "denseblock4", Pairs(), concept_names=phantom.concepts, **spec)
    registered = cxrsem.dissect(net, "denseblock4", "phantom",
                                concept_options={"phantom": {"n_images": IMAGES}}, **spec)
    assert ours.layers[0].concepts == registered.layers[0].concepts
    # Nearest-neighbour resizing of the doubled masks gives back the phantom's own.
    assert np.array_equal(ours.layers[0].thresholds, registered.layers[0].thresholds)
    assert np.array_equal(ours.layers[0].iou, registered.layers[0].iou)
    with pytest.raises(UsageError, match="names no concepts"):
        cxrsem.dissect(net, "denseblock4", Pairs(), **spec)


def test_custom_concept_images_are_resized_to_the_model_and_masks_to_the_seg_size():
    from cxrsem.dissection.custom_concepts import ConceptDataset
    from cxrsem.errors import DataError

    rgb = torch.rand(3, 40, 50)
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, :20] = True
    data = ConceptDataset([(rgb, masks)], ["a", "b"], image_size=32, mask_size=8)
    item = data[0]
    assert item["image"].shape == (1, 32, 32) and item["masks"].shape == (2, 8, 8)
    assert item["masks"][0, :4].all() and not item["masks"][0, 4:].any()
    assert float(item["image"].mean()) == pytest.approx(float(rgb.mean()), abs=0.02)  # grey: channel mean
    with pytest.raises(DataError, match=r"masks must be \[2, H, W\]"):
        ConceptDataset([(rgb, masks[:1])], ["a", "b"], image_size=32, mask_size=8)[0]
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        ConceptDataset([(rgb * 255, masks)], ["a", "b"], image_size=32, mask_size=8)[0]


def test_attribution_of_a_module_equals_its_checkpoints(tmp_path):
    net = mini_densenet(seed=4, outputs=3)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    model = module_checkpoint(net, image_size=32, outputs=["a", "b", "c"])
    mine = cxrsem.attribute(images, model, "denseblock4", steps=8, device="cpu")
    path = save_checkpoint(tmp_path / "m.pt", make_checkpoint(
        net, arch="densenet-mini", arch_kwargs={}, task_kind="multilabel", outputs=["a", "b", "c"],
        image_size=32, normalization=model["input"]["normalization"]))
    theirs = cxrsem.attribute(images, path, "denseblock4", steps=8, device="cpu")
    for a, b in zip(mine, theirs, strict=True):
        assert a.data["units"] == pytest.approx(b.data["units"], rel=1e-6, abs=1e-9)


def test_module_spec_errors_are_one_line():
    net = mini_densenet(outputs=3)
    with pytest.raises(UsageError, match="needs image_size="):
        cxrsem.dissect(net, "denseblock4")
    with pytest.raises(UsageError, match="2 output name\\(s\\) for a model with 3 logits"):
        module_checkpoint(net, image_size=32, outputs=["a", "b"])
    with pytest.raises(UsageError, match="fails on a 3-channel"):
        module_checkpoint(net, image_size=32, channels=3)
    with pytest.raises(UsageError, match="imagenet, xrv, none or MEAN,STD"):
        parse_normalization("imagenett", 1)


def test_normalization_presets():
    assert parse_normalization("imagenet", 3) == {"mean": [0.485, 0.456, 0.406],
                                                  "std": [0.229, 0.224, 0.225]}
    one = parse_normalization("imagenet", 1)
    assert one["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert parse_normalization("0.5,0.25", 1) == {"mean": [0.5], "std": [0.25]}
    assert parse_normalization("xrv", 1) == {"mean": [0.5], "std": [1 / 2048]}


def test_attribute_takes_the_module_itself_with_a_tensor_of_images(tmp_path):
    from PIL import Image

    net = mini_densenet(seed=4, outputs=3)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    direct = cxrsem.attribute(images, net, "denseblock4", steps=8, device="cpu")
    spec = cxrsem.attribute(images, module_checkpoint(net, image_size=32), "denseblock4", steps=8,
                            device="cpu")
    assert [a.data["units"] for a in direct] == [a.data["units"] for a in spec]
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(UsageError, match="needs image_size="):  # files: the size is not known
        cxrsem.attribute([tmp_path / "x.png"], net, "denseblock4")


def test_library_mistakes_with_checkpoints_are_cxrsem_errors():
    from cxrsem.checkpoint import build_model
    from cxrsem.errors import CheckpointError

    net = mini_densenet(outputs=6)
    with pytest.raises(CheckpointError, match="arch kwargs must not hold num_outputs"):
        make_checkpoint(net, arch="densenet-mini", arch_kwargs={"num_outputs": 6},
                        task_kind="multilabel", outputs=list("abcdef"), image_size=32,
                        normalization={"mean": [0.5], "std": [0.25]})
    good = make_checkpoint(net, arch="densenet-mini", arch_kwargs={}, task_kind="multilabel",
                           outputs=list("abcdef"), image_size=32,
                           normalization={"mean": [0.5], "std": [0.25]})
    with pytest.raises(CheckpointError, match="arch kwargs must not hold in_channels"):
        build_model({**good, "arch": {"name": "densenet-mini", "kwargs": {"in_channels": 3}}})


def test_a_three_channel_model_dissects_and_attributes_like_its_grey_twin():
    torch.manual_seed(7)
    rgb = create_architecture("densenet-mini", num_outputs=3, in_channels=3).eval()
    grey = create_architecture("densenet-mini", num_outputs=3, in_channels=1).eval()
    state = rgb.state_dict()
    stem = next(k for k, v in state.items() if v.dim() == 4)  # the first convolution's weight
    grey.load_state_dict({**state, stem: state[stem].sum(dim=1, keepdim=True)})
    norm = {"mean": [0.5], "std": [0.25]}
    spec = dict(concept_options={"phantom": {"n_images": IMAGES}},
                settings=DissectSettings(**SETTINGS), device="cpu")
    a = cxrsem.dissect(module_checkpoint(rgb, image_size=32, normalization=norm), "denseblock4",
                       **spec)
    b = cxrsem.dissect(module_checkpoint(grey, image_size=32, normalization=norm), "denseblock4",
                       **spec)
    assert a.checkpoint["input"]["channels"] == 3 and b.checkpoint["input"]["channels"] == 1
    assert np.allclose(a.layers[0].thresholds, b.layers[0].thresholds, rtol=1e-4, atol=1e-5)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    ra = cxrsem.attribute(images, module_checkpoint(rgb, image_size=32, normalization=norm),
                          "denseblock4", steps=8, device="cpu")
    rb = cxrsem.attribute(images, module_checkpoint(grey, image_size=32, normalization=norm),
                          "denseblock4", steps=8, device="cpu")
    for x, y in zip(ra, rb, strict=True):
        assert np.allclose(x.data["units"], y.data["units"], rtol=1e-3, atol=1e-6)
