"""The xrv architectures: registered, logits out, torchvision layer names, input normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cxrsem import create_architecture
from cxrsem.engine.layers import resolve_layers
from cxrsem.engine.preprocess import normalize
from cxrsem.errors import UsageError
from cxrsem.imageio import load_image
from cxrsem.plugins import get_model_source
from PIL import Image

from cxrsem_xrv import NORMALIZATION, SPECS


def test_specs_are_the_full_names_of_xrv_weights(xrv):
    # A new xrv release with new weights should fail here until SPECS lists them.
    full_names = [name for name in xrv.models.model_urls if name.startswith(("densenet", "resnet"))]
    assert list(SPECS) == full_names
    assert get_model_source("xrv").specs == tuple(full_names)
    for spec, arch in SPECS.items():
        assert arch == ("xrv-densenet121" if spec.startswith("densenet121-") else "xrv-resnet50")


@pytest.mark.parametrize(("arch", "layer", "full"), [
    ("xrv-densenet121", "denseblock4", "features.denseblock4"),
    ("xrv-resnet50", "layer4", "layer4"),
])
def test_architectures_output_logits_and_expose_layers(arch, layer, full):
    torch.manual_seed(0)
    model = create_architecture(arch, num_outputs=3, in_channels=1).eval()
    x = (torch.rand(2, 1, 64, 64) - 0.5) * 2048  # xrv's input range
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3)
    # Raw logits: a sigmoid or xrv's op_norm would keep every output inside [0, 1].
    assert ((out < 0) | (out > 1)).any()
    assert getattr(model, "op_threshs", None) is None
    assert not hasattr(model, "input_resolution")  # xrv would resize inside forward
    assert resolve_layers(model, [layer], image_size=64) == [full]


def test_densenet_is_xrv_densenet_with_torchvision_names(xrv):
    model = create_architecture("xrv-densenet121", num_outputs=18)
    assert isinstance(model, xrv.models.DenseNet)
    names = {name for name, _ in model.named_modules()}
    assert {f"features.denseblock{i}" for i in range(1, 5)} <= names
    assert {"features.norm5", "classifier"} <= names


def test_bad_sizes_are_usage_errors():
    with pytest.raises(UsageError, match="at least one output"):
        create_architecture("xrv-densenet121", num_outputs=0)
    with pytest.raises(UsageError, match="in_channels"):
        create_architecture("xrv-resnet50", num_outputs=2, in_channels=0)


def test_cxrsem_normalisation_reproduces_xrv_preprocessing(tmp_path, xrv):
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32), dtype=np.uint8)
    pixels[0, :2] = (0, 255)  # both ends of the 8-bit range
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)

    ours = normalize(load_image(path, 32)[None], NORMALIZATION)[0, 0]
    theirs = torch.from_numpy(xrv.datasets.normalize(np.asarray(Image.open(path)), 255))
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)
    assert ours[0, 0].item() == -1024 and ours[0, 1].item() == 1024
