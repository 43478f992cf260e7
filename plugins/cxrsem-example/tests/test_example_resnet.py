"""The ``resnet50`` architecture, created by name through cxrsem's registry."""

from __future__ import annotations

import cxrsem
import pytest
import torch
from cxrsem.engine.layers import feature_map_layers, resolve_layer
from cxrsem.errors import CheckpointError
from torchvision.models import resnet50

pytestmark = pytest.mark.usefixtures("example", "one_thread")


def test_grey_input_and_new_head(tiny_phantom):
    model = cxrsem.create_architecture("resnet50", num_outputs=3).eval()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 3
    with torch.no_grad():
        logits = model(tiny_phantom.images)  # [4, 1, 32, 32] phantom images
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()


def test_stages_are_the_layers_to_dissect():
    model = cxrsem.create_architecture("resnet50", num_outputs=2)
    layers = feature_map_layers(model, image_size=64)
    assert {"layer1", "layer2", "layer3", "layer4", "layer4.2.conv3"} <= set(layers)
    assert resolve_layer("layer4", layers) == "layer4"
    with torch.no_grad():
        features = torch.nn.Sequential(*list(model.children())[:-2])(torch.zeros(1, 1, 64, 64))
    assert features.shape == (1, 2048, 2, 2)  # layer4 at 1/32 of the input


def test_imagenet_file_name_is_torchvisions_cache_name():
    info = cxrsem.plugins.get_architecture("resnet50")
    assert info.imagenet_filename == "resnet50-0676ba61.pth"


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A stand-in for torchvision's ImageNet file: a randomly initialised RGB ResNet-50."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hub") / "resnet50-0676ba61.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


def test_imagenet_weights_load_with_conv1_summed_for_grey_input(imagenet_file):
    info = cxrsem.plugins.get_architecture("resnet50")
    rgb = torch.load(imagenet_file, weights_only=True)
    model = cxrsem.create_architecture("resnet50", num_outputs=5)
    head_before = model.fc.weight.clone()
    info.load_imagenet(model, imagenet_file)
    state = model.state_dict()
    assert torch.allclose(state["conv1.weight"], rgb["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["layer4.2.conv3.weight"], rgb["layer4.2.conv3.weight"])
    assert torch.equal(state["bn1.running_var"], rgb["bn1.running_var"])
    assert torch.equal(model.fc.weight, head_before)  # 5 outputs, not ImageNet's 1000: kept


def test_a_grey_image_gives_what_imagenet_gives_on_the_image_in_rgb(imagenet_file):
    grey = cxrsem.create_architecture("resnet50", num_outputs=1000).eval()
    cxrsem.plugins.get_architecture("resnet50").load_imagenet(grey, imagenet_file)
    colour = resnet50(weights=None).eval()
    colour.load_state_dict(torch.load(imagenet_file, weights_only=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), colour(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_a_foreign_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    model = cxrsem.create_architecture("resnet50", num_outputs=2)
    with pytest.raises(CheckpointError, match="does not hold ResNet-50 ImageNet weights"):
        cxrsem.plugins.get_architecture("resnet50").load_imagenet(model, path)
    with pytest.raises(CheckpointError, match="cannot read ImageNet weights"):
        cxrsem.plugins.get_architecture("resnet50").load_imagenet(model, tmp_path / "absent.pth")
