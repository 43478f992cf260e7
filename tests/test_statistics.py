"""Streaming statistics: parts merge into exactly one pass; state dicts round-trip; mismatches fail.

Activations are integer-valued so ties (equal values, equal per-image maxima) are common: a merge
that breaks ties differently from the single pass would fail here.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from cxrsem.dissection.quantile import StreamingTopQuantile
from cxrsem.dissection.tally import IoUTally
from cxrsem.dissection.topimages import TopImages
from cxrsem.statistics import StatisticMismatch, StreamingStatistic

UNITS, CONCEPTS, IMAGES, H, MASK = 6, 4, 37, 3, 9
SPLITS = {"halves": [0, 18, IMAGES], "uneven-3": [0, 2, 30, IMAGES]}


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    activations = torch.randint(-3, 4, (IMAGES, UNITS, H, H), generator=g).float()
    activations[:, 0] = 0.0  # a dead unit: every value and every maximum ties
    labels = torch.rand(IMAGES, CONCEPTS, MASK, MASK, generator=g) < 0.2
    labels[:, -1] = False    # a concept on no image
    return activations, labels


def batches(bounds: tuple[int, int], size: int = 5):
    start, stop = bounds
    for first in range(start, stop, size):
        yield first, min(first + size, stop)


def unit_values(activations: torch.Tensor) -> torch.Tensor:
    return activations.permute(1, 0, 2, 3).reshape(activations.shape[1], -1)


def parts(split: str):
    edges = SPLITS[split]
    return list(zip(edges[:-1], edges[1:], strict=True))


# -- StreamingTopQuantile ----------------------------------------------------------------------
def fill_quantile(activations, bounds, n, quantile, batch=5):
    stream = StreamingTopQuantile(UNITS, n, quantile)
    for a, b in batches(bounds, batch):
        stream.update(unit_values(activations[a:b]))
    return stream


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("quantile", [0.005, 0.2, 0.5])
def test_quantile_parts_merge_to_one_pass(split, quantile):
    activations, _ = data()
    n = IMAGES * H * H
    whole = fill_quantile(activations, (0, IMAGES), n, quantile, batch=IMAGES).thresholds()
    pieces = [fill_quantile(activations, bounds, n, quantile) for bounds in parts(split)]
    merged = functools.reduce(lambda a, b: a.merge(b), pieces).thresholds()
    assert merged.dtype == np.float64
    assert np.array_equal(merged, whole)
    # ... in any order, and equal to NumPy's rule on all values
    reordered = [fill_quantile(activations, bounds, n, quantile) for bounds in parts(split)][::-1]
    assert np.array_equal(functools.reduce(lambda a, b: a.merge(b), reordered).thresholds(), whole)
    oracle = np.quantile(unit_values(activations).double().numpy(), 1 - quantile, axis=1,
                         method="inverted_cdf")
    assert np.array_equal(whole, oracle)


def test_quantile_merge_counts_values_and_refuses_too_many():
    activations, _ = data()
    n = IMAGES * H * H
    first = fill_quantile(activations, (0, 10), n, 0.2)
    with pytest.raises(RuntimeError, match="expected"):
        first.thresholds()  # one part alone has not seen n values
    first.merge(fill_quantile(activations, (10, IMAGES), n, 0.2))
    assert first.seen == n
    with pytest.raises(StatisticMismatch, match="exceed"):
        first.merge(fill_quantile(activations, (0, 1), n, 0.2))


# -- IoUTally ----------------------------------------------------------------------------------
def fill_tally(activations, labels, thresholds, bounds):
    tally = IoUTally.zeros(UNITS, CONCEPTS)
    for a, b in batches(bounds):
        tally.update(activations[a:b], thresholds, labels[a:b])
    return tally


@pytest.mark.parametrize("split", SPLITS)
def test_tally_parts_merge_to_one_pass(split):
    activations, labels = data(1)
    n = IMAGES * H * H
    thresholds = torch.from_numpy(
        fill_quantile(activations, (0, IMAGES), n, 0.1).thresholds())
    whole = fill_tally(activations, labels, thresholds, (0, IMAGES))
    assert int(whole.intersection.sum()) > 0  # the test data exercises the sums
    pieces = [fill_tally(activations, labels, thresholds, bounds) for bounds in parts(split)]
    merged = functools.reduce(lambda a, b: a.merge(b), pieces[::-1])
    for name in ("intersection", "unit_area", "label_area", "images_with"):
        assert getattr(merged, name).dtype == torch.int64
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert (merged.upsampled_pairs, merged.total_pairs) == (whole.upsampled_pairs, whole.total_pairs)
    assert np.array_equal(merged.iou(), whole.iou())


# -- TopImages ---------------------------------------------------------------------------------
def fill_top(activations, bounds, keep=4, batch=5):
    top = TopImages(UNITS, keep)
    for a, b in batches(bounds, batch):
        top.update(activations[a:b].amax(dim=(2, 3)), torch.arange(a, b))
    return top


def naive_top(activations, keep):
    """Per unit: images sorted by (larger maximum first, then lower index)."""
    maxima = activations.amax(dim=(2, 3)).numpy()
    images = [sorted(range(IMAGES), key=lambda i, k=k: (-maxima[i, k], i))[:keep]
              for k in range(UNITS)]
    return np.array(images), np.take_along_axis(maxima.T, np.array(images), axis=1)


@pytest.mark.parametrize("keep", [1, 4, 50])
@pytest.mark.parametrize("split", SPLITS)
def test_top_images_parts_merge_to_one_pass_with_the_tie_rule(split, keep):
    activations, _ = data(2)
    images, values = naive_top(activations, keep)
    for batch in (1, 5, IMAGES):
        whole = fill_top(activations, (0, IMAGES), keep, batch)
        assert np.array_equal(whole.images.numpy(), images)
        assert np.array_equal(whole.values.numpy(), values)
    assert list(whole.images[0, :3]) == [0, 1, 2][:min(keep, 3)]  # the dead unit: all tie at 0
    pieces = [fill_top(activations, bounds, keep) for bounds in parts(split)]
    for ordered in (pieces, pieces[::-1]):
        copies = [TopImages.from_state_dict(p.state_dict()) for p in ordered]
        merged = functools.reduce(lambda a, b: a.merge(b), copies)
        assert torch.equal(merged.images, whole.images)
        assert torch.equal(merged.values, whole.values)


# -- state dicts and mismatches ----------------------------------------------------------------
def filled_statistics():
    activations, labels = data(3)
    n = IMAGES * H * H
    quantile = fill_quantile(activations, (0, 20), n, 0.05)
    thresholds = torch.from_numpy(fill_quantile(activations, (0, IMAGES), n, 0.05).thresholds())
    tally = fill_tally(activations, labels, thresholds, (0, 20))
    return activations, labels, thresholds, {
        "quantile": quantile, "tally": tally, "top": fill_top(activations, (0, 20))}


def _plain(value) -> bool:
    return isinstance(value, torch.Tensor | int | float | str)


def test_state_dicts_round_trip_through_torch_save(tmp_path):
    activations, labels, thresholds, stats = filled_statistics()
    for name, stat in stats.items():
        assert isinstance(stat, StreamingStatistic)
        state = stat.state_dict()
        assert isinstance(state["kind"], str) and all(_plain(v) for v in state.values()), name
        torch.save(state, tmp_path / f"{name}.pt")
        loaded = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        again = type(stat).from_state_dict(loaded)
        assert again.state_dict().keys() == state.keys()
        for key, value in state.items():
            other = again.state_dict()[key]
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value

    # A restored statistic carries on exactly: restore, add the rest, compare with one pass.
    n = IMAGES * H * H
    quantile = StreamingTopQuantile.from_state_dict(
        torch.load(tmp_path / "quantile.pt", weights_only=True))
    quantile.update(unit_values(activations[20:]))
    assert np.array_equal(quantile.thresholds(), thresholds.numpy())
    tally = IoUTally.from_state_dict(torch.load(tmp_path / "tally.pt", weights_only=True))
    tally.update(activations[20:], thresholds, labels[20:])
    whole = fill_tally(activations, labels, thresholds, (0, IMAGES))
    assert torch.equal(tally.intersection, whole.intersection)
    top = TopImages.from_state_dict(torch.load(tmp_path / "top.pt", weights_only=True))
    top.update(activations[20:].amax(dim=(2, 3)), torch.arange(20, IMAGES))
    assert torch.equal(top.images, fill_top(activations, (0, IMAGES)).images)
    assert n == quantile.seen


def test_merging_incompatible_statistics_fails_clearly():
    with pytest.raises(StatisticMismatch, match="units 6 vs 5"):
        StreamingTopQuantile(6, 100, 0.1).merge(StreamingTopQuantile(5, 100, 0.1))
    with pytest.raises(StatisticMismatch, match="n 100 vs 90"):
        StreamingTopQuantile(6, 100, 0.1).merge(StreamingTopQuantile(6, 90, 0.1))
    with pytest.raises(StatisticMismatch, match="units 6 vs 5"):
        IoUTally.zeros(6, 3).merge(IoUTally.zeros(5, 3))
    with pytest.raises(StatisticMismatch, match="concepts 3 vs 4"):
        IoUTally.zeros(6, 3).merge(IoUTally.zeros(6, 4))
    with pytest.raises(StatisticMismatch, match="units 6 vs 5"):
        TopImages(6).merge(TopImages(5))
    with pytest.raises(StatisticMismatch, match="keep 4 vs 3"):
        TopImages(6, 4).merge(TopImages(6, 3))
    with pytest.raises(StatisticMismatch, match="'iou-tally' cannot be loaded as 'top-images'"):
        TopImages.from_state_dict(IoUTally.zeros(2, 2).state_dict())


def test_one_stream_gives_every_smaller_quantile_bit_for_bit():
    values = torch.randint(0, 50, (6, 4000)).float()  # many ties
    wide = StreamingTopQuantile(6, 4000, 0.02)
    wide.update(values)
    for q in (0.001, 0.0025, 0.005, 0.01, 0.02):
        alone = StreamingTopQuantile(6, 4000, q)
        alone.update(values)
        assert np.array_equal(wide.threshold_at(q), alone.thresholds())
        expected = np.quantile(values.double().numpy(), 1 - q, axis=1, method="inverted_cdf")
        assert np.array_equal(alone.thresholds(), expected)
    with pytest.raises(Exception, match="keeps"):
        wide.threshold_at(0.05)
