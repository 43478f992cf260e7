"""Every built-in dataset and concept set: registration and the data contracts of components.py."""

from __future__ import annotations

import warnings

import pytest
import torch

import cxrsem
from cxrsem.plugins import build_registry
from cxrsem.tasks import ZONE_CLASSES

DATASETS = {"nih": "nih_root", "chexpert": "chexpert_root", "brixia": "brixia_root",
            "brixia-cohen": "cohen_root"}
CONCEPT_SETS = {"nih-bbox": "nih_root", "covid-seg": "covid_root"}


def test_registered_by_name_without_errors():
    registry = build_registry(entry_points=False)
    mine = [p for p in registry.plugins if p.plugin.rsplit(".", 1)[-1]
            in ("nih", "chexpert", "brixia", "covid_seg", "weak")]
    assert len(mine) == 5 and all(p.error is None for p in mine)
    for name in [*DATASETS, "weak"]:
        info = registry.get("dataset", name)
        assert info.needs_root == (name != "weak")
        assert info.tasks and info.description
    assert registry.get("dataset", "brixia").tasks == ("zones", "global-score", "binary")
    for name in CONCEPT_SETS:
        assert registry.get("concept_set", name).option("limit").default == 0


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_training_dataset_contract(request, name, split):
    root = request.getfixturevalue(DATASETS[name])
    ds = _quiet(cxrsem.create_dataset, name, split=split, image_size=24, data_roots={name: root})
    info = cxrsem.plugins.get_dataset(name)
    assert set(ds.outputs) == set(info.tasks)
    assert len(ds) > 0 and isinstance(ds.describe(), str) and ds.describe()
    item = ds[len(ds) - 1]
    assert item["image"].shape == (1, 24, 24) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
    assert isinstance(item["id"], str)
    for task, names in ds.outputs.items():
        target, every = item["targets"][task], ds.targets(task)
        assert every.shape[0] == len(ds)
        assert torch.equal(target, every[len(ds) - 1])
        if task == "multilabel":
            assert target.shape == (len(names),) and target.dtype == torch.float32
            assert set(every.unique().tolist()) <= {0.0, 1.0}
        elif task == "zones":
            assert target.shape == (len(names),) == (6,) and target.dtype == torch.int64
            assert int(every.min()) >= 0 and int(every.max()) < ZONE_CLASSES
        else:  # binary, global-score
            assert target.shape == (1,) and target.dtype == torch.float32
        if "target_masks" in item:
            assert item["target_masks"][task].shape == target.shape
            assert item["target_masks"][task].dtype == torch.bool


@pytest.mark.parametrize("name", sorted(CONCEPT_SETS))
def test_concept_set_contract(request, name):
    root = request.getfixturevalue(CONCEPT_SETS[name])
    cs = _quiet(cxrsem.create_concept_set, name, image_size=32, mask_size=12,
                data_roots={name: root})
    counts = cs.concept_counts()
    assert list(counts) == cs.concepts
    seen = dict.fromkeys(cs.concepts, 0)
    for i in range(len(cs)):
        item = cs[i]
        assert item["image"].shape == (1, 32, 32)
        assert item["masks"].shape == (len(cs.concepts), 12, 12)
        assert item["masks"].dtype == torch.bool
        for c, channel in zip(cs.concepts, item["masks"], strict=True):
            seen[c] += bool(channel.any())
    assert seen == counts  # a concept is present exactly when its channel has a pixel
    assert cs.describe().count("\n") >= 1


def test_unknown_option_and_bad_choice_are_usage_errors(nih_root):
    from cxrsem.errors import UsageError

    with pytest.raises(UsageError, match="uncertainty"):
        cxrsem.create_dataset("chexpert", data_roots={"chexpert": nih_root}, uncertainty="maybe")
    with pytest.raises(UsageError, match="did you mean"):
        cxrsem.create_dataset("nih", data_roots={"nih": nih_root}, val_fractio=0.1)


def test_missing_root_is_one_data_error():
    from cxrsem.errors import DataError

    with pytest.raises(DataError, match="--data-root covid-seg=PATH.*CXRSEM_DATA_COVID_SEG"):
        cxrsem.create_concept_set("covid-seg")
