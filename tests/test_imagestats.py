"""Per-image sufficient statistics (``imagestats.npz``): summing every image's terms reproduces the
layer's IoU tally exactly; the file round-trips; split tallies merge to one pass's entries; images
are grouped by patient where the concept set knows patients."""

from __future__ import annotations

import csv
import functools
import json

import numpy as np
import pytest
import torch

from cxrsem import plugins
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.dissection import run as dissection_run
from cxrsem.dissection.concepts import build_concept_source
from cxrsem.dissection.tally import IoUTally
from cxrsem.errors import DataError
from cxrsem.formats.dissection import IMAGE_STATS_FILE
from cxrsem.statistics import StatisticMismatch
from cxrsem.statistics.imagestats import FORMAT, ImageStats
from cxrsem.testing import TestKitPlugin, TinyConvNet, mini_densenet, tiny_checkpoint
from cxrsem.testing.contracts import check_concept_set
from tests.fixtures import builders as fx

UNITS, CONCEPTS, IMAGES, H, M = 6, 3, 30, 5, 12


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def sums(tally: IoUTally) -> tuple[np.ndarray, ...]:
    return tuple(getattr(tally, name).cpu().numpy()
                 for name in ("intersection", "unit_area", "label_area", "images_with"))


def assert_sums_equal(got, expected) -> None:
    for name, a, b in zip(("intersection", "unit_area", "label_area", "images_with"), got,
                          expected, strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b), name


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    """A seeded densenet-mini dissected on the phantom, with the IoUTally each layer was made of."""
    tmp = tmp_path_factory.mktemp("imagestats")
    plugins.register_plugin(TestKitPlugin(), "testkit")
    ckpt = tiny_checkpoint(tmp / "m.pt", mini_densenet(0, outputs=2),
                            arch="densenet-mini", image_size=32)
    tallies = []
    original = dissection_run._tally_parts

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        tallies.append(result[0])
        return result

    mp = pytest.MonkeyPatch()
    mp.setattr(dissection_run, "_tally_parts", spy)
    try:
        result = dissect([ckpt], ["denseblock4"], out=tmp / "out", concepts=["phantom"],
                         concept_options={"phantom": {"n_images": 24}},
                         settings=DissectSettings(seg_size=16, batch_size=5, quantile=0.05),
                         figures=False)[0]
    finally:
        mp.undo()
    folder = next((tmp / "out").glob("*/*/dissection.json")).parent
    return result, tallies[0], folder


def test_summing_the_image_terms_reproduces_the_tally(dissected):
    result, tally, _ = dissected
    layer = result.layers[0]
    stats = layer.image_stats
    assert stats.num_images == 24 and stats.num_units == layer.thresholds.size
    assert stats.mask_image.size > 0 and stats.inter_image.size > 0  # the run exercises the sums
    assert int(tally.intersection.sum()) > 0
    assert_sums_equal(stats.tally(), sums(tally))
    assert_sums_equal(stats.tally(np.ones(24, dtype=np.int64)), sums(tally))
    assert_sums_equal(stats.tally(np.full(24, 2)), tuple(2 * s for s in sums(tally)))
    # IoU recomputed from the file's terms is the layer's IoU, bit for bit.
    inter, unit_area, label_area, _ = stats.tally()
    union = unit_area + label_area[None, :] - inter
    iou = np.zeros(inter.shape)
    np.divide(inter.astype(np.float64), union, out=iou, where=union > 0)
    assert np.array_equal(iou, layer.iou)
    # Entries are the non-zero terms only, on images holding a concept.
    assert (stats.mask_area > 0).all() and (stats.inter_value > 0).all()
    assert stats.present[stats.mask_image].any(axis=1).all()
    assert stats.present[stats.inter_image, stats.inter_concept].all()


def test_a_subset_of_images_is_the_tally_of_that_subset(dissected):
    result, _, _ = dissected
    stats = result.layers[0].image_stats
    weights = np.zeros(24, dtype=np.int64)
    weights[:10] = 1
    inter, _, label_area, images_with = stats.tally(weights)
    assert np.array_equal(images_with, stats.present[:10].sum(axis=0))
    assert np.array_equal(label_area, stats.label_area[:10].sum(axis=0))
    assert np.array_equal(inter.sum(), stats.inter_value[stats.inter_image < 10].sum())


def test_the_file_round_trips_and_is_listed(dissected):
    result, _, folder = dissected
    stats = result.layers[0].image_stats
    path = folder / IMAGE_STATS_FILE
    record = json.loads((folder / "dissection.json").read_text())
    assert IMAGE_STATS_FILE in record["files"]
    assert record["image_stats"] == {"file": IMAGE_STATS_FILE, "format": FORMAT,
                                     "num_images": 24, "num_groups": 24,
                                     "pairs": int(stats.mask_image.size),
                                     "entries": int(stats.inter_image.size)}
    with np.load(path, allow_pickle=False) as data:
        assert str(data["format"]) == FORMAT
        assert all(data[name].dtype == np.int64 for name in ("label_area", "mask_image",
                                                               "inter_value", "groups"))
    loaded = ImageStats.load(path)
    assert loaded.num_units == stats.num_units and loaded.concepts == stats.concepts
    assert loaded.group_names == stats.group_names
    for name in ("label_area", "mask_image", "mask_unit", "mask_area", "inter_image",
                 "inter_unit", "inter_concept", "inter_value", "groups"):
        assert np.array_equal(getattr(loaded, name), getattr(stats, name)), name
    assert_sums_equal(loaded.tally(), stats.tally())


def test_a_file_that_is_not_image_statistics_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", format=np.array("something/1"))
    with pytest.raises(DataError, match="not a cxrsem image-statistics file"):
        ImageStats.load(tmp_path / "x.npz")
    (tmp_path / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read image statistics"):
        ImageStats.load(tmp_path / "y.npz")


# -- the streaming tally's per-image entries ----------------------------------------------------
def data(seed: int):
    g = torch.Generator().manual_seed(seed)
    activations = torch.randn(IMAGES, UNITS, H, H, generator=g)
    labels = torch.rand(IMAGES, CONCEPTS, M, M, generator=g) > 0.7
    labels[3] = False  # an image without any concept
    labels[:, 2, :6] = False  # one concept smaller than the others
    return activations, labels


def fill(activations, labels, thresholds, bounds, offset=True, batch=4):
    tally = IoUTally.zeros(UNITS, CONCEPTS)
    a, b = bounds
    for start in range(a, b, batch):
        stop = min(start + batch, b)
        tally.update(activations[start:stop], thresholds, labels[start:stop],
                     image_offset=start if offset else None)
    return tally


def entry_sets(stats: ImageStats) -> tuple[set, set, set]:
    masks = set(zip(stats.mask_image.tolist(), stats.mask_unit.tolist(),
                    stats.mask_area.tolist(), strict=True))
    inters = set(zip(stats.inter_image.tolist(), stats.inter_unit.tolist(),
                     stats.inter_concept.tolist(), stats.inter_value.tolist(), strict=True))
    labels = {(x, c, int(v)) for x, row in enumerate(stats.label_area) for c, v in enumerate(row)}
    return masks, inters, labels


def thresholds_for(activations, q=0.9):
    per_unit = activations.permute(1, 0, 2, 3).reshape(UNITS, -1).double()
    return torch.quantile(per_unit, q, dim=1)


@pytest.mark.parametrize("cut", [1, 13, 29])
def test_merged_halves_give_the_entries_of_one_pass(cut):
    activations, labels = data(0)
    thresholds = thresholds_for(activations)
    concepts = [f"c{i}" for i in range(CONCEPTS)]
    whole = fill(activations, labels, thresholds, (0, IMAGES))
    one_pass = whole.image_stats(concepts)
    assert one_pass.num_images == IMAGES and one_pass.inter_image.size > 0
    assert_sums_equal(one_pass.tally(), sums(whole))
    for order in ((0, 1), (1, 0)):
        halves = [fill(activations, labels, thresholds, (0, cut)),
                  fill(activations, labels, thresholds, (cut, IMAGES))]
        # Through state dicts, as parts on two ranks or two runs would be.
        halves = [IoUTally.from_state_dict(h.state_dict()) for h in halves]
        merged = functools.reduce(lambda a, b: a.merge(b), [halves[i] for i in order])
        assert_sums_equal(sums(merged), sums(whole))
        stats = merged.image_stats(concepts, num_images=IMAGES)
        assert entry_sets(stats) == entry_sets(one_pass)
        for name in ("mask_image", "mask_unit", "mask_area", "inter_image", "inter_unit",
                     "inter_concept", "inter_value", "label_area"):  # sorted: the same arrays
            assert np.array_equal(getattr(stats, name), getattr(one_pass, name)), name


def test_default_offsets_continue_and_overlapping_parts_drop_their_entries():
    activations, labels = data(1)
    thresholds = thresholds_for(activations)
    concepts = [f"c{i}" for i in range(CONCEPTS)]
    explicit = fill(activations, labels, thresholds, (0, IMAGES)).image_stats(concepts)
    implicit = fill(activations, labels, thresholds, (0, IMAGES), offset=False).image_stats(concepts)
    assert entry_sets(explicit) == entry_sets(implicit)
    first = fill(activations, labels, thresholds, (0, 10), offset=False)
    second = fill(activations, labels, thresholds, (10, 20), offset=False)  # rows 0.. again
    whole = fill(activations, labels, thresholds, (0, 20))
    merged = first.merge(second)  # the sums stay exact; the ambiguous entries are dropped
    assert_sums_equal(sums(merged), sums(whole))
    assert not merged.per_image and "mask_image" not in merged.state_dict()
    with pytest.raises(StatisticMismatch, match="image_offset"):
        merged.image_stats(concepts)
    part = fill(activations, labels, thresholds, (0, 10))
    part.merge(IoUTally.zeros(UNITS, CONCEPTS, per_image=False))
    with pytest.raises(StatisticMismatch, match="without per-image entries"):
        part.image_stats(concepts)


def test_a_state_dict_without_per_image_entries_still_loads():
    activations, labels = data(2)
    tally = fill(activations, labels, thresholds_for(activations), (0, 10))
    old = {k: v for k, v in tally.state_dict().items()
           if k in ("kind", "intersection", "unit_area", "label_area", "images_with",
                    "upsampled_pairs", "total_pairs")}
    restored = IoUTally.from_state_dict(old)
    assert not restored.per_image
    assert_sums_equal(sums(restored), sums(tally))
    with pytest.raises(StatisticMismatch, match="made without them"):
        restored.image_stats(["a", "b", "c"])


def test_per_image_collection_can_be_switched_off():
    activations, labels = data(3)
    thresholds = thresholds_for(activations)
    on = fill(activations, labels, thresholds, (0, IMAGES))
    off = IoUTally.zeros(UNITS, CONCEPTS, per_image=False)
    off.update(activations, thresholds, labels)
    assert_sums_equal(sums(off), sums(on))
    assert "mask_image" not in off.state_dict()


# -- groups (patients) --------------------------------------------------------------------------
def source(names, limit=0, **kw):
    return build_concept_source(names, image_size=32, mask_size=16, seed=0, limit=limit, **kw)


def test_phantom_makes_every_image_its_own_group():
    groups, names = source(["phantom"], options={"phantom": {"n_images": 7}}).groups()
    assert groups.tolist() == list(range(7)) and len(names) == 7
    assert all(n.startswith("phantom/") for n in names)


def test_two_concept_sets_never_share_a_group_and_the_limit_is_respected():
    options = {"phantom": {"n_images": 5}, "phantom-bbox": {"n_images": 4}}
    both = source(["phantom", "phantom-bbox"], options=options)
    groups, names = both.groups()
    assert len(groups) == len(both) == 9 and len(set(names)) == 9
    assert {n.split("/")[0] for n in names[:5]} == {"phantom"}
    assert {n.split("/")[0] for n in names[5:]} == {"phantom-bbox"}
    limited = source(["phantom", "phantom-bbox"], options=options, limit=7)
    groups, names = limited.groups()
    assert len(groups) == 7 and len(names) == 7


def _nih_root(tmp_path):
    root = fx.build_nih(tmp_path / "nih", box_image_size=64)
    entry = root / "Data_Entry_2017_v2020.csv"
    rows = list(csv.reader(entry.read_text().splitlines()))
    boxed = sorted({r[0] for r in csv.reader((root / "BBox_List_2017.csv").read_text().splitlines())
                    if r and r[0] != "Image Index"})
    patient = rows[0].index("Patient ID")
    # Two boxed images of one patient: they must form one group.
    by_name = {r[0]: r for r in rows[1:]}
    by_name[boxed[1]][patient] = by_name[boxed[0]][patient]
    entry.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return root, {n: str(int(by_name[n][patient])) for n in boxed if n in by_name}


def test_nih_boxes_group_images_by_patient_id(tmp_path):
    root, patient_of = _nih_root(tmp_path)
    src = source(["nih-bbox"], data_roots={"nih-bbox": str(root)})
    ds = src.sets[0][1]
    check_concept_set(ds, "nih-bbox", 32, 16)
    assert ds.groups() == [patient_of[n] for n in ds.ids]
    groups, names = src.groups()
    assert len(names) == len(set(patient_of[n] for n in ds.ids)) < len(ds)
    assert names == list(dict.fromkeys(f"nih-bbox/{patient_of[n]}" for n in ds.ids))
    assert [names[g] for g in groups] == [f"nih-bbox/{patient_of[n]}" for n in ds.ids]


def test_groups_reach_the_file(tmp_path):
    root, patient_of = _nih_root(tmp_path)
    torch.manual_seed(0)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", TinyConvNet(), image_size=32)
    result = dissect([ckpt], ["features"], out=tmp_path / "out", concepts=["nih-bbox"],
                     data_roots={"nih-bbox": str(root)},
                     settings=DissectSettings(seg_size=16, batch_size=3), figures=False)[0]
    stats = result.layers[0].image_stats
    ids = result.source.sets[0][1].ids
    assert stats.num_groups == len(set(patient_of.values()) & {patient_of[n] for n in ids})
    loaded = ImageStats.load(next((tmp_path / "out").glob(f"*/*/{IMAGE_STATS_FILE}")))
    assert [loaded.group_names[g] for g in loaded.groups] == [f"nih-bbox/{patient_of[n]}"
                                                              for n in ids]


def test_the_contract_check_catches_bad_groups():
    from cxrsem.testing import ToyBlobs

    ds = ToyBlobs(32, 16, 0, n_images=4)
    ds.groups = lambda: ["p1", "p1"]
    with pytest.raises(AssertionError, match="groups"):
        check_concept_set(ds, "toy", 32, 16)


def test_inconsistent_terms_are_refused():
    good = dict(num_units=2, concepts=["a"], label_area=np.array([[3], [0]]),
                mask_image=[0], mask_unit=[1], mask_area=[4], inter_image=[0], inter_unit=[1],
                inter_concept=[0], inter_value=[2])
    stats = ImageStats(**good)
    assert stats.num_groups == 2 and stats.tally()[0].tolist() == [[0], [2]]
    for change, message in (({"mask_unit": [2]}, "mask_unit outside"),
                            ({"inter_value": [2, 1]}, "differ in shape"),
                            ({"label_area": np.zeros((2, 3))}, "label_area"),
                            ({"groups": [0]}, "groups")):
        with pytest.raises(DataError, match=message):
            ImageStats(**{**good, **change})
