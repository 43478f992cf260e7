"""Vision transformers (issue 17): a ``[B, T, D]`` token layer is ``D`` units on the patch grid,
the class token dropped for dissection and kept for the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import VisionTransformer

import cxrsem
from cxrsem.attribution.ig import layer_integrated_gradients
from cxrsem.dissection import DissectSettings
from cxrsem.engine.layers import capture, feature_map_layers
from cxrsem.engine.split import split_at
from cxrsem.engine.tokens import TokenLayout, token_layout
from cxrsem.errors import UsageError
from cxrsem.modules import module_checkpoint

LAYER = "encoder.layers.encoder_layer_0"  # the last block's patch tokens never reach the head
LAST = "encoder.layers.encoder_layer_1"


def tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                            mlp_dim=32, num_classes=3).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return vit


def test_token_layouts():
    assert token_layout(torch.zeros(2, 17, 5)) == TokenLayout(1, (4, 4))     # class token + 4x4
    assert token_layout(torch.zeros(2, 16, 5)) == TokenLayout(0, (4, 4))     # no prefix
    assert token_layout(torch.zeros(2, 21, 5)) is None                       # 1 + 4 registers?

    class Declared(torch.nn.Module):
        num_prefix_tokens = 5                                                 # timm's attribute

    assert token_layout(torch.zeros(2, 21, 5), Declared()) == TokenLayout(5, (4, 4))
    assert token_layout(torch.zeros(2, 22, 5), Declared()) is None           # 17 patches: no grid
    assert token_layout(torch.zeros(2, 4, 4, 5)) is None
    layout = TokenLayout(1, (2, 2))
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    units = layout.to_units(tokens)
    # unit d at grid cell (i, j) is patch token 1 + 2 i + j, channel d
    assert units.shape == (2, 3, 2, 2) and units[1, 2, 1, 0] == tokens[1, 1 + 2, 2]
    assert torch.equal(layout.to_tokens(units, tokens[:, :1]), tokens)


def test_the_encoder_layers_are_valid_layers_and_capture_gives_the_patch_grid():
    vit = tiny_vit()
    assert LAYER in feature_map_layers(vit, 32, 3)
    x = torch.rand(2, 3, 32, 32)
    with capture(vit, [LAYER]) as store, torch.no_grad():
        vit(x)
    captured = store[LAYER]
    assert captured.shape == (2, 16, 4, 4)
    tokens = {}
    handle = dict(vit.named_modules())[LAYER].register_forward_hook(
        lambda _m, _i, out: tokens.setdefault("t", out.detach()))
    with torch.no_grad():
        vit(x)
    handle.remove()
    assert torch.equal(captured[:, :, 0, 1], tokens["t"][:, 1 + 1, :])  # token 2 = patch (0, 1)


def reference_ig(vit, x, layer, target, steps):
    """Eq. 6 by hand at a token layer: a forward hook puts the class token back in front of
    alpha * the patch tokens; the gradients at the Gauss-Legendre nodes, weighted, times A."""
    from cxrsem.attribution.quadrature import nodes_weights

    module = dict(vit.named_modules())[layer]
    seen = {}
    handle = module.register_forward_hook(lambda _m, _i, out: seen.setdefault("t", out.detach()))
    with torch.no_grad():
        vit(x)
    handle.remove()
    tokens = seen["t"]
    patches, total = tokens[:, 1:], torch.zeros_like(tokens[:, 1:])
    for alpha, weight in zip(*nodes_weights("gausslegendre", steps), strict=True):
        scaled = (alpha * patches).requires_grad_(True)
        handle = module.register_forward_hook(
            lambda _m, _i, out, scaled=scaled: torch.cat([out[:, :1], scaled], 1))
        try:
            (grad,) = torch.autograd.grad(vit(x)[:, target].sum(), scaled)
        finally:
            handle.remove()
        total += weight * grad
    s = patches * total                                   # [B, 16 patches, D]
    return s.transpose(1, 2).reshape(x.shape[0], -1, 4, 4)


@pytest.mark.parametrize("mode", ["auto", "hook"])
def test_ig_at_a_token_layer_keeps_the_class_token_and_matches_a_hand_computation(mode):
    vit = tiny_vit(1)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    split = split_at(vit, LAYER, x[:1], mode=mode)
    assert split.activation_shape == (16, 4, 4)
    result = layer_integrated_gradients(vit, LAYER, x, 0, steps=16, split=split)
    assert result.attributions.shape == (2, 16, 4, 4)
    expected = reference_ig(vit, x, LAYER, 0, 16)
    assert expected.abs().max() > 1e-4                    # the test is not about zeros
    assert torch.allclose(result.attributions, expected, rtol=1e-4, atol=1e-6)
    a, extras = split.head(x)
    with torch.no_grad():
        f_a = split.tail(a, split.rows(extras, torch.arange(2), 2))[:, 0]
    assert torch.allclose(f_a, vit(x)[:, 0], atol=1e-5)


def test_the_last_block_of_a_class_token_vit_never_reaches_the_head():
    # Its patch tokens are not read after the final LayerNorm: every attribution is exactly zero,
    # which is why the default layer of such a model is the block before (torchvision_models).
    from cxrsem.default_plugins.torchvision_models import default_layer

    vit = tiny_vit(1)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = layer_integrated_gradients(vit, LAST, x, 0, steps=8)
    assert torch.count_nonzero(result.attributions) == 0
    assert default_layer(vit) == LAYER


def test_dissect_and_attribute_a_vit_end_to_end():
    vit = tiny_vit(2)
    model = module_checkpoint(vit, image_size=32, normalization="imagenet")
    result = cxrsem.dissect(model, LAYER, "phantom", concept_options={"phantom": {"n_images": 16}},
                            settings=DissectSettings(seg_size=16, quantile=0.02), device="cpu")
    (layer,) = result.layers
    assert layer.thresholds.shape == (16,) and np.isfinite(layer.iou).all()
    items = cxrsem.attribute(torch.rand(1, 1, 32, 32), model, LAYER, steps=8, device="cpu")
    assert len(items[0].data["units"]) == 16 and items[0].data["map_size"] == [4, 4]


def test_an_unknown_token_layout_is_one_line():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            tokens = self.proj(x.flatten(2).transpose(1, 2)[:, :7])  # 7 tokens: no square grid
            return self.head(tokens.mean(1))

    with pytest.raises(UsageError, match="neither a feature map"):
        split_at(Odd().eval(), "proj", torch.rand(1, 3, 8, 8))
