"""The tally's fast masks (float32 upsampling, float64 re-decision near T_k) equal the float64
definition (:func:`cxrsem.dissection.tally.unit_masks`) bit for bit, adversarial inputs included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrsem.dissection import tally as tally_module
from cxrsem.dissection.tally import (
    INTERPOLATION,
    IoUTally,
    _axis_weights,
    fast_unit_masks,
    float32_rounding_bound,
    float32_upsampled,
    unit_masks,
)

SIZES = [((7, 7), (112, 112)), ((7, 7), (224, 224)), ((5, 9), (48, 33)), ((14, 14), (21, 21)),
         ((1, 3), (4, 6)), ((9, 9), (4, 5)), ((6, 6), (6, 6))]


def float64_values(maps: torch.Tensor, thresholds: torch.Tensor, size) -> torch.Tensor:
    centred = maps.double() - thresholds.double()[:, None, None]
    return F.interpolate(centred.unsqueeze(1), size=size, **INTERPOLATION)[:, 0]


@pytest.mark.parametrize(("low", "size"), SIZES)
def test_axis_weights_are_torch_bilinear(low, size):
    maps = torch.randn(3, *low, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    wy = _axis_weights(low[0], size[0], "cpu").double()
    wx = _axis_weights(low[1], size[1], "cpu").double()
    assert torch.allclose(wy.sum(dim=1), torch.ones(size[0], dtype=torch.float64), atol=1e-7)
    dense = wy @ maps @ wx.T
    torch_values = F.interpolate(maps.unsqueeze(1), size=size, **INTERPOLATION)[:, 0]
    assert torch.allclose(dense, torch_values, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("low", "size"), SIZES)
@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30])
def test_float32_values_lie_within_the_bound(low, size, scale):
    """|v32 - v64| <= B on every pixel, and torch's float64 kernel stays well inside its share."""
    gen = torch.Generator().manual_seed(1)
    maps = (torch.randn(64, *low, generator=gen) * scale).to(torch.float32)
    thresholds = maps.flatten(1)[:, 0].double()
    v32, bound = float32_upsampled(maps, thresholds, size)
    v64 = float64_values(maps, thresholds, size)
    assert torch.all((v32.double() - v64).abs() <= bound[:, None, None])
    # The float64 share of B: v64 against the same product in float64 with exact-rational weights.
    h, w = low
    wy = _axis_weights(h, size[0], "cpu", torch.float64)
    wx = _axis_weights(w, size[1], "cpu", torch.float64)
    centred = maps.double() - thresholds[:, None, None]
    m = centred.abs().amax(dim=(1, 2))
    # Half of the float64 share, the other half covering the dense product's own rounding.
    share64 = (64 * (max(h, w) + 2) + 8) * 2.0 ** -53 / 2
    assert torch.all((v64 - wy @ centred @ wx.T).abs() <= m[:, None, None] * share64 + 2.0 ** -100)


def adversarial_maps(count: int, low: tuple[int, int], seed: int):
    """Maps whose values are T_k or within 2 float32 ulps of it (and blocks exactly at T_k), so
    that the upsampled a - T_k is 0 or a few ulps of T_k on many pixels: rounding decides them."""
    rng = np.random.default_rng(seed)
    thresholds = rng.choice(np.array([1.0, 0.0, -3.0, 1e-3, 7.5e4], dtype=np.float32), size=count)
    maps = np.empty((count, *low), dtype=np.float32)
    offsets = np.zeros(count)
    for p, t in enumerate(thresholds):
        ladder = [t]
        for direction in (np.inf, -np.inf):
            v = t
            for _ in range(2):
                v = np.nextafter(v, np.float32(direction))
                ladder.append(v)
        kind = p % 5
        if kind == 0:      # every value within 2 ulps of T
            maps[p] = rng.choice(np.array(ladder, dtype=np.float32), size=low)
        elif kind == 4:    # T_k between float32 values (a float64 threshold): no exact zeros,
            # and upsampled values that are not multiples of one ulp come arbitrarily close to 0
            maps[p] = rng.choice(np.array(ladder, dtype=np.float32), size=low)
            offsets[p] = 0.3 * (float(ladder[1]) - float(t))
        elif kind == 1:    # a block exactly at T inside T +- 1 ulp
            maps[p] = rng.choice(np.array(ladder[:2] + ladder[3:4], dtype=np.float32), size=low)
            maps[p, : low[0] // 2 + 1, : low[1] // 2 + 1] = t
        elif kind == 2:    # everything exactly T (every pixel is a tie at 0: all in the mask)
            maps[p] = t
        else:              # ordinary values (decided in float32), T one of them
            maps[p] = (rng.standard_normal(low) * (abs(t) + 1) + t).astype(np.float32)
            maps[p, 0, 0] = t
    return torch.from_numpy(maps), torch.from_numpy(thresholds.astype(np.float64) + offsets)


@pytest.mark.parametrize(("low", "size"), SIZES)
def test_adversarial_near_threshold_pixels_match_float64(low, size):
    maps, thresholds = adversarial_maps(240, low, seed=sum(low) + sum(size))
    fast = fast_unit_masks(maps, thresholds, size)
    reference = unit_masks(maps, thresholds, size)
    assert fast.masks.dtype == torch.float32
    assert torch.equal(fast.masks, reference.to(torch.float32))
    # Pairs exactly at T_k everywhere (every pixel 0) must have been re-decided in float64.
    assert {p for p in range(240) if p % 5 == 2} <= set(fast.exact_pairs.tolist())


def test_float32_alone_would_get_adversarial_pixels_wrong():
    """The inputs above are adversarial: deciding by the float32 sign alone differs from float64
    somewhere (so the re-decision is needed and the test above can fail)."""
    wrong = wrong_nonzero = exact = 0
    for low, size in SIZES:
        maps, thresholds = adversarial_maps(240, low, seed=sum(low) + sum(size))
        v32, _ = float32_upsampled(maps, thresholds, size)
        differs = (v32 >= 0) != unit_masks(maps, thresholds, size)
        wrong += int(differs.sum())
        wrong_nonzero += int((differs & (v32 != 0)).sum())   # not only exact float32 zeros
        exact += fast_unit_masks(maps, thresholds, size).exact_pairs.numel()
    assert wrong > 0 and wrong_nonzero > 0
    assert 0 < exact < 240 * len(SIZES)  # and many pairs were still decided in float32 alone


def test_non_finite_and_huge_maps_take_the_float64_path():
    maps = torch.randn(4, 7, 7, generator=torch.Generator().manual_seed(2))
    maps[0, 3, 3] = float("nan")
    maps[1, 0, 0] = float("inf")
    maps[2] *= 3e38
    thresholds = maps[:, 6, 6].double()
    fast = fast_unit_masks(maps, thresholds, (30, 30))
    assert torch.equal(fast.masks.bool(), unit_masks(maps, thresholds, (30, 30)))
    assert {0, 1, 2} <= set(fast.exact_pairs.tolist())


def test_reduced_precision_matmul_falls_back_to_float64():
    maps, thresholds = adversarial_maps(8, (7, 7), seed=3)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        fast = fast_unit_masks(maps, thresholds, (56, 56))
    finally:
        torch.set_float32_matmul_precision(previous)
    assert fast.exact_pairs.numel() == 8
    assert torch.equal(fast.masks.bool(), unit_masks(maps, thresholds, (56, 56)))


def test_bound_is_small():
    """The band re-decided in float64 is a few millionths of max|a - T_k| (so it costs little)."""
    assert float32_rounding_bound(7, 7) < 4e-6
    assert float32_rounding_bound(56, 56) < 2e-5


def test_tally_equals_the_float64_tally(monkeypatch):
    """Every count, per-image entry and BatchMasks of the fast tally equal the float64 tally's."""
    gen = torch.Generator().manual_seed(4)
    batch, units, concepts, size = 6, 24, 3, 40
    ordinary = torch.randn(batch, units, 7, 7, generator=gen)
    adversarial, thresholds = adversarial_maps(units, (7, 7), seed=5)
    activations = torch.where(torch.arange(units)[None, :, None, None] % 2 == 0,
                              adversarial[None].expand(batch, -1, -1, -1), ordinary)
    labels = torch.rand(batch, concepts, size, size, generator=gen) > 0.6
    labels[1] = False  # an image without any concept

    def run():
        tally = IoUTally.zeros(units, concepts)
        masks = tally.update(activations, thresholds, labels, all_images=True)
        return tally, masks

    fast, fast_masks = run()
    monkeypatch.setattr(tally_module, "_ieee_float32_matmul", lambda device: False)
    slow, slow_masks = run()
    assert 0 < fast.exact_pairs < slow.exact_pairs == slow.upsampled_pairs
    for name in IoUTally._COUNTS:
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    fast_state, slow_state = fast.state_dict(), slow.state_dict()
    assert fast_state.keys() == slow_state.keys()
    for key, value in fast_state.items():
        assert torch.equal(value, slow_state[key]) if isinstance(value, torch.Tensor) \
            else value == slow_state[key], key
    for a, b in zip(fast_masks, slow_masks, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_masks_match_float64():
    for low, size in SIZES:
        maps, thresholds = adversarial_maps(64, low, seed=6)
        fast = fast_unit_masks(maps.cuda(), thresholds.cuda(), size)
        assert torch.equal(fast.masks.bool().cpu(), unit_masks(maps.cuda(), thresholds.cuda(), size).cpu())
