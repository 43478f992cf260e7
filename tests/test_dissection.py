"""Network Dissection: exactness against a naive oracle, constructed detectors, invariances."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cxrsem import plugins
from cxrsem.components import ConceptSetInfo, Option
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.dissection.quantile import StreamingTopQuantile
from cxrsem.hookspecs import hookimpl
from cxrsem.testing import TestKitPlugin, TinyConvNet, ToyBlobs, tiny_checkpoint
from tests.dissection_reference import bilinear_upsample, naive_dissection


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def oracle_inputs(model: nn.Module, image_size: int, seg_size: int, seed: int, **options):
    """All activations of ``features`` and all masks in memory, from a plain forward hook."""
    ds = ToyBlobs(image_size, seg_size, seed, **options)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    masks = torch.stack([ds[i]["masks"] for i in range(len(ds))]).numpy()
    with torch.no_grad():
        acts = model.features(images).numpy()
    return acts, masks


def test_streaming_quantile_equals_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 997)).astype(np.float32)
    for q in (0.005, 0.01, 0.1, 0.5, 0.9):
        stream = StreamingTopQuantile(5, 997, q)
        for chunk in np.array_split(values, 7, axis=1):
            stream.update(torch.from_numpy(chunk))
        expected = np.quantile(values.astype(np.float64), 1 - q, axis=1, method="inverted_cdf")
        np.testing.assert_array_equal(stream.thresholds(), expected)


def test_bilinear_oracle_matches_torch_convention():
    maps = np.random.default_rng(1).normal(size=(3, 5, 5))
    ours = bilinear_upsample(maps, 17)
    torch_up = torch.nn.functional.interpolate(torch.from_numpy(maps)[None], size=(17, 17),
                                               mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(ours, torch_up, atol=1e-12)


def run_dissection(tmp_path, image_size=32, seg_size=16, quantile=0.005, seed=0, n_images=12,
                   model_seed=0, **kw):
    torch.manual_seed(model_seed)
    model = TinyConvNet()
    ckpt = tiny_checkpoint(tmp_path / "m.pt", model, image_size=image_size)
    results = dissect([ckpt], ["features"], out=tmp_path / "out", concepts=["toy-blobs"],
                      concept_options={"toy-blobs": {"n_images": n_images, **kw.pop("options", {})}},
                      settings=DissectSettings(quantile=quantile, seg_size=seg_size, batch_size=5, **kw),
                      seed=seed, figures=False)
    return model, results[0].layers[0]


@settings(max_examples=8, deadline=None)
@given(quantile=st.sampled_from([0.005, 0.02, 0.1, 0.3]), seg_size=st.sampled_from([7, 8, 13, 32]),
       model_seed=st.integers(0, 1000), data_seed=st.integers(0, 1000))
def test_streaming_equals_naive_oracle(tmp_path_factory, quantile, seg_size, model_seed, data_seed):
    tmp_path = tmp_path_factory.mktemp("d")
    model, layer = run_dissection(tmp_path, seg_size=seg_size, quantile=quantile, seed=data_seed,
                                  model_seed=model_seed)
    acts, masks = oracle_inputs(model, 32, seg_size, data_seed, n_images=12)
    thresholds, iou = naive_dissection(acts, masks, quantile)
    np.testing.assert_allclose(layer.thresholds, thresholds, rtol=0, atol=1e-6)
    np.testing.assert_allclose(layer.iou, iou, rtol=0, atol=1e-9)
    assert layer.images_with.tolist() == [int(masks[:, c].any(axis=(1, 2)).sum()) for c in range(3)]


def test_quantile_sample_uses_first_images_only(tmp_path):
    model, layer = run_dissection(tmp_path, quantile=0.01, quantile_sample=5)
    acts, masks = oracle_inputs(model, 32, 16, 0, n_images=12)
    thresholds, iou = naive_dissection(acts, masks, 0.01, quantile_sample=5)
    np.testing.assert_allclose(layer.thresholds, thresholds, atol=1e-6)
    np.testing.assert_allclose(layer.iou, iou, atol=1e-9)
    assert layer.threshold_images == 5


def test_permuting_and_duplicating_images_leave_results_unchanged(tmp_path):
    _, base = run_dissection(tmp_path / "a", quantile=0.02)
    _, reversed_ = run_dissection(tmp_path / "b", quantile=0.02, options={"order": "shuffle"})
    _, doubled = run_dissection(tmp_path / "c", quantile=0.02, options={"repeat": 2})
    np.testing.assert_array_equal(base.thresholds, reversed_.thresholds)
    np.testing.assert_allclose(base.iou, reversed_.iou, atol=1e-12)
    np.testing.assert_array_equal(base.thresholds, doubled.thresholds)
    np.testing.assert_allclose(base.iou, doubled.iou, atol=1e-12)
    assert (doubled.images_with == 2 * base.images_with).all()


class IndicatorNet(nn.Module):
    """Unit 0 copies the image (which is concept 0's mask); unit 1 is pure noise."""

    def __init__(self):
        super().__init__()
        self.features = IndicatorFeatures()
        self.classifier = nn.Linear(2, 1)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class IndicatorFeatures(nn.Module):
    def forward(self, x):
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(int(x.sum() * 1000) % 10_000))
        return torch.cat([x, noise], dim=1)


class SquaresSet(torch.utils.data.Dataset):
    """Images equal to the mask of concept 'square'; concept 'other' elsewhere."""

    concepts = ["square", "other"]

    def __init__(self, image_size, mask_size, seed, n_images=16):
        self.size, self.n, self.seed = image_size, n_images, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        mask = torch.zeros(2, self.size, self.size, dtype=torch.bool)
        y, x = torch.randint(0, self.size // 2, (2,), generator=g).tolist()
        mask[0, y:y + self.size // 3, x:x + self.size // 3] = True
        mask[1, -4:, :] = True
        return {"image": mask[:1].float(), "masks": mask, "id": str(i)}


def test_constructed_indicator_unit_is_a_detector_and_noise_is_not(tmp_path):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_concept_sets(register):
            register(ConceptSetInfo(
                name="squares",
                factory=lambda image_size, mask_size, root, seed, n_images: SquaresSet(
                    image_size, mask_size, seed, n_images),
                options=(Option("n_images", int, 16, "images"),)))

        @staticmethod
        @hookimpl
        def register_architectures(register):
            from cxrsem.components import ArchitectureInfo
            register(ArchitectureInfo(name="indicator",
                                      factory=lambda num_outputs, in_channels: IndicatorNet()))

    plugins.register_plugin(Plugin(), "squares")
    ckpt = tiny_checkpoint(tmp_path / "ind.pt", IndicatorNet(), arch="indicator", image_size=24,
                           outputs=["y"])
    # The square covers ~11% of pixels: the top 1% of unit 0's values are all 1, so T_0 = 1.
    result = dissect([ckpt], ["features"], out=tmp_path / "out", concepts=["squares"],
                     settings=DissectSettings(quantile=0.01, seg_size=24), figures=False)[0]
    layer = result.layers[0]
    best, best_iou = layer.best
    assert layer.concepts[best[0]] == "square" and best_iou[0] == pytest.approx(1.0)
    assert best_iou[1] < 0.04
    record = json.loads((tmp_path / "out" / "ind" / "features" / "dissection.json").read_text())
    assert record["units"][0]["detector"] and not record["units"][1]["detector"]
    assert record["detectors"] == {"square": 1, "other": 0}


def test_outputs_and_cache_reuse(tmp_path):
    torch.manual_seed(0)
    ckpt = tiny_checkpoint(tmp_path / "epoch-001.pt", arch_kwargs={"width": 16})
    kwargs = dict(out=tmp_path / "out", concepts=["toy-blobs"],
                  settings=DissectSettings(quantile=0.05, seg_size=16, iou_threshold=0.01))
    first = dissect([ckpt], ["features"], **kwargs)[0]
    folder = tmp_path / "out" / "epoch-001" / "features"
    for name in ("dissection.json", "units.csv", "detectors.csv", "summary.png", "config.toml",
                 "manifest.json"):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "dissection.json").read_text())
    assert record["schema"] == "cxrsem-dissection/1" and record["num_units"] == 16
    detectors = [u["unit"] for u in record["units"] if u["detector"]]
    assert detectors, "expected some detectors at IoU > 0.01"
    assert sorted(p.name for p in (folder / "units").iterdir()) == [f"unit-{k:04d}.png" for k in detectors]
    assert not first.cache_reused
    second = dissect([ckpt], ["features"], **kwargs)[0]
    assert second.cache_reused
    np.testing.assert_array_equal(first.layers[0].iou, second.layers[0].iou)


class OtherBlobs(ToyBlobs):
    """Same concept names as toy-blobs plus one that never occurs; masks at half resolution."""

    concepts = ["blob-a", "never-seen"]

    def __getitem__(self, i):
        item = super().__getitem__(i)
        masks = torch.zeros(2, self.mask_size // 2, self.mask_size // 2, dtype=torch.bool)
        masks[0] = item["masks"][0, ::2, ::2]
        return {**item, "masks": masks}


def test_several_concept_sets_keep_names_apart_and_report_absent_concepts(tmp_path):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_concept_sets(register):
            register(ConceptSetInfo(
                name="other-blobs",
                factory=lambda image_size, mask_size, root, seed: OtherBlobs(
                    image_size, mask_size, seed + 7)))

    plugins.register_plugin(Plugin(), "other")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    with pytest.warns(UserWarning, match="resized with nearest neighbour"):
        layer = dissect([ckpt], ["features"], out=tmp_path / "out",
                        concepts=["toy-blobs", "other-blobs"],
                        settings=DissectSettings(quantile=0.05, seg_size=16), figures=False)[0].layers[0]
    # Only the name both sets use is qualified by its set.
    assert layer.concepts == ["toy-blobs/blob-a", "blob-b", "blob-c", "other-blobs/blob-a", "never-seen"]
    assert layer.images_with[-1] == 0 and (layer.iou[:, -1] == 0).all()
    record = json.loads((tmp_path / "out" / "m" / "features" / "dissection.json").read_text())
    assert record["num_images"] == 24
    assert {c["name"]: c["images"] for c in record["concepts"]}["never-seen"] == 0
    # Each set annotates only its own 12 images: a channel shared across sets could reach 24.
    counts = {c["name"]: c["images"] for c in record["concepts"]}
    assert 0 < counts["toy-blobs/blob-a"] <= 12 and 0 < counts["other-blobs/blob-a"] <= 12
