"""Built-in architectures: shapes, layer names, fx tracing, local ImageNet weight loading."""

from __future__ import annotations

import re

import pytest
import torch
from torchvision.models import densenet121
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import cxrsem
from cxrsem.default_plugins.architectures import DENSENET121_IMAGENET_FILE
from cxrsem.errors import CheckpointError, UsageError
from cxrsem.plugins import get_registry

LAYERS = [
    "features.conv0",
    *[f"features.denseblock{i}" for i in range(1, 5)],
    *[f"features.transition{i}" for i in range(1, 4)],
    "features.norm5",
    "classifier",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def arch(name, **kw):
    return cxrsem.create_architecture(name, **kw)


def test_registration():
    reg = get_registry()
    dn = reg.get("architecture", "densenet121")
    assert dn.imagenet_filename == "densenet121-a639ec97.pth" == DENSENET121_IMAGENET_FILE
    assert dn.load_imagenet is not None
    mini = reg.get("architecture", "densenet-mini")
    assert mini.load_imagenet is None and mini.imagenet_filename is None
    assert mini.defaults() == {"growth_rate": 12, "block_config": "3,3,3,3", "drop_rate": 0.0,
                               "stem_pool": False}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [64, 96, 128])
def test_densenet_mini_shapes(in_channels, size):
    model = arch("densenet-mini", num_outputs=5, in_channels=in_channels).eval()
    assert model.features.conv0.in_channels == in_channels
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, 5)


@pytest.mark.parametrize(("in_channels", "size"), [(1, 64), (3, 64), (1, 224)])
def test_densenet121_shapes(in_channels, size):
    model = arch("densenet121", num_outputs=14, in_channels=in_channels).eval()
    assert model.features.conv0.in_channels == in_channels
    assert model.classifier.out_features == 14
    with torch.no_grad():
        out = model(torch.rand(1, in_channels, size, size))
    assert out.shape == (1, 14)


@pytest.mark.parametrize("name", ["densenet-mini", "densenet121"])
def test_layer_names(name):
    modules = dict(arch(name, num_outputs=3).named_modules())
    for layer in LAYERS:
        assert layer in modules, layer


def test_densenet_mini_is_small_and_configurable():
    model = arch("densenet-mini", num_outputs=8)
    n_params = sum(p.numel() for p in model.parameters())
    assert 10_000 < n_params < 100_000
    # 16 initial features, growth 12, 3 layers per block, halving transitions: 69 units at block 4
    assert model.features.norm5.num_features == 69
    small = arch("densenet-mini", num_outputs=2, growth_rate="8", block_config="2, 2, 2, 2")
    assert len(small.features.denseblock1) == 2
    assert small.features.denseblock1.denselayer1.conv2.out_channels == 8
    with pytest.raises(UsageError, match="block_config"):
        arch("densenet-mini", num_outputs=2, block_config="2,2,2")
    with pytest.raises(UsageError):
        arch("densenet-mini", num_outputs=0)


def test_densenet_mini_trains():
    model = arch("densenet-mini", num_outputs=3)
    out = model(torch.rand(4, 1, 64, 64))
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["densenet-mini", "densenet121"])
def test_fx_traceable_and_denseblock4_is_a_node(name):
    model = arch(name, num_outputs=3).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert "classifier" in eval_nodes
    # torchvision names the output of a non-leaf module by its last op ("...denseblock4.cat");
    # the module path itself is accepted as a return node and resolves to that op.
    assert any(n == "features.denseblock4" or n.startswith("features.denseblock4.")
               for n in eval_nodes)
    extractor = create_feature_extractor(model, return_nodes={"features.denseblock4": "block4"})
    with torch.no_grad():
        feats = extractor(torch.rand(1, 1, 64, 64))["block4"]
    # densenet121 reaches denseblock4 at 1/32 of the input; densenet-mini (no stem pool) at 1/16.
    side = 64 // (16 if name == "densenet-mini" else 32)
    assert feats.shape == (1, model.features.norm5.num_features, side, side)


def test_densenet_mini_stem_pool_option_halves_the_map():
    with_pool = cxrsem.create_architecture("densenet-mini", num_outputs=2, stem_pool=True)
    without = cxrsem.create_architecture("densenet-mini", num_outputs=2)
    x = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        assert with_pool.features(x).shape[-1] == 3 and without.features(x).shape[-1] == 6


# -- ImageNet weights from a local file ------------------------------------------------------------


def _new_to_old(key: str) -> str:
    """Rewrite 'denselayerN.norm1.weight' to the pre-0.3 'denselayerN.norm.1.weight' style."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """A random 1000-class RGB DenseNet121 saved like torchvision's file, old keys in two blocks."""
    torch.manual_seed(123)
    state = densenet121(weights=None).state_dict()
    saved = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # the published file predates this buffer
        if ".denseblock1." in key or ".denseblock3." in key:
            key = _new_to_old(key)
        saved[key] = value.clone()
    assert "features.denseblock1.denselayer1.norm.1.weight" in saved
    assert "features.denseblock2.denselayer1.norm1.weight" in saved
    path = tmp_path_factory.mktemp("hub") / DENSENET121_IMAGENET_FILE
    torch.save(saved, path)
    return path, saved


def _load(model, path):
    get_registry().get("architecture", "densenet121").load_imagenet(model, path)


def test_imagenet_load_one_channel_sums_rgb_kernels(fake_imagenet):
    path, saved = fake_imagenet
    model = arch("densenet121", num_outputs=3, in_channels=1)
    head_before = model.classifier.weight.detach().clone()
    _load(model, path)
    rgb = saved["features.conv0.weight"]
    by_hand = rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3]
    assert model.features.conv0.weight.shape == (64, 1, 7, 7)
    assert torch.equal(model.features.conv0.weight.detach(), by_hand)
    # old-style keys were remapped, new-style ones taken as they are
    layer = model.features.denseblock1.denselayer1
    assert torch.equal(layer.norm1.weight, saved["features.denseblock1.denselayer1.norm.1.weight"])
    assert torch.equal(layer.conv2.weight, saved["features.denseblock1.denselayer1.conv.2.weight"])
    assert torch.equal(model.features.denseblock3.denselayer5.norm2.running_var,
                       saved["features.denseblock3.denselayer5.norm.2.running_var"])
    assert torch.equal(model.features.denseblock2.denselayer1.norm1.bias,
                       saved["features.denseblock2.denselayer1.norm1.bias"])
    # the 1000-class head does not fit 3 outputs: the new head is kept
    assert torch.equal(model.classifier.weight, head_before)


def test_imagenet_load_rgb_model_takes_everything(fake_imagenet):
    path, saved = fake_imagenet
    model = arch("densenet121", num_outputs=1000, in_channels=3)
    _load(model, path)
    state = model.state_dict()
    assert torch.equal(state["features.conv0.weight"], saved["features.conv0.weight"])
    assert torch.equal(state["classifier.weight"], saved["classifier.weight"])


def test_one_channel_model_equals_rgb_model_on_replicated_gray(fake_imagenet):
    path, _ = fake_imagenet
    gray_model = arch("densenet121", num_outputs=1000, in_channels=1)
    rgb_model = arch("densenet121", num_outputs=1000, in_channels=3)
    _load(gray_model, path)
    _load(rgb_model, path)
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = gray_model.eval()(gray)
        b = rgb_model.eval()(gray.repeat(1, 3, 1, 1))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_corrupt_or_wrong_file_is_a_checkpoint_error(tmp_path):
    model = arch("densenet121", num_outputs=2)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        _load(model, corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        _load(model, tmp_path / "missing.pth")
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        _load(model, not_a_dict)
    wrong = tmp_path / "mini.pth"
    torch.save(arch("densenet-mini", num_outputs=2).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="DenseNet121"):
        _load(model, wrong)
