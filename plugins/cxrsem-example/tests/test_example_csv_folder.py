"""The ``csv-folder`` dataset, created by name through cxrsem's registry as a user would."""

from __future__ import annotations

import warnings

import cxrsem
import numpy as np
import pytest
import torch
from cxrsem.errors import DataError, UsageError
from cxrsem.imageio import load_image

from cxrsem_example.csv_folder import CsvFolderWarning

pytestmark = pytest.mark.usefixtures("example")


@pytest.fixture
def make_folder(tmp_path, write_png):
    """``make_folder(lines, images=None)``: labels.csv from ``lines``; an image for every path
    listed in the CSV (or only those in ``images``), each a different non-square grey pattern."""

    def make(lines: list[str], images: list[str] | None = None):
        root = tmp_path / "data"
        root.mkdir(exist_ok=True)
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        paths = images if images is not None else [line.split(",")[0] for line in lines[1:]]
        for k, path in enumerate(paths):
            write_png(root / path, (np.arange(20 * 28).reshape(20, 28) * (k + 1)) % 256)
        return root

    return make


def create(root, split="train", seed=0, **options):
    return cxrsem.create_dataset("csv-folder", split=split, image_size=16, seed=seed,
                                 data_roots={"csv-folder": root}, **options)


def ids(ds) -> list[str]:
    return [ds[i]["id"] for i in range(len(ds))]


def test_registered_with_its_options():
    info = cxrsem.plugins.get_dataset("csv-folder")
    assert info.needs_root and info.tasks == ("multilabel", "binary")
    assert info.defaults() == {"val_fraction": 0.1, "test_fraction": 0.1}


def test_labels_unknowns_and_the_contract(make_folder):
    root = make_folder([
        "path,Effusion,Nodule,Mass,split",
        "a/1.png,1,0,0,train",
        "a/2.png,0,,0,train",      # Nodule unknown, nothing positive -> binary unknown
        "b/3.png,,1,,train",       # a positive: binary known even with unknowns
        "b/4.png,0,0,0,train",
        "b/5.png,1,1,1,val",
    ])
    ds = create(root)
    assert len(ds) == 4
    assert ds.outputs == {"multilabel": ["Effusion", "Nodule", "Mass"], "binary": ["unhealthy"]}
    assert ds.targets("multilabel").tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert ds.target_masks("multilabel").tolist() == [
        [True, True, True], [True, False, True], [False, True, False], [True, True, True]]
    assert ds.targets("binary").tolist() == [[1], [0], [1], [0]]
    assert ds.target_masks("binary").tolist() == [[True], [False], [True], [True]]
    assert ds.describe().startswith("csv-folder train: 4 images, 3 labels (Effusion 1+/3 known")

    item = ds[1]
    assert item["id"] == "a/2.png"
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) < float(item["image"].max()) <= 1
    # Read through cxrsem's public image path, like every built-in dataset.
    assert torch.equal(item["image"], load_image(root / "a/2.png", 16))
    for task in ds.outputs:
        assert torch.equal(item["targets"][task], ds.targets(task)[1])
        assert item["target_masks"][task].dtype == torch.bool
        assert item["target_masks"][task].shape == item["targets"][task].shape
    assert ids(create(root, "val")) == ["b/5.png"]
    assert len(create(root, "test")) == 0


def test_seeded_split_is_deterministic_and_ignores_row_order(make_folder, tmp_path):
    rows = [f"img/{i:03d}.png,{i % 2}" for i in range(80)]
    root = make_folder(["path,Effusion", *rows])
    fractions = {"val_fraction": 0.2, "test_fraction": 0.2}
    splits = {s: ids(create(root, s, **fractions)) for s in ("train", "val", "test")}
    every = [i for s in splits.values() for i in s]
    assert sorted(every) == sorted(r.split(",")[0] for r in rows)  # a partition of all images
    assert all(8 <= len(splits[s]) <= 24 for s in ("val", "test")), {s: len(v) for s, v in splits.items()}

    (root / "labels.csv").write_text("\n".join(["path,Effusion", *rows[::-1]]) + "\n")
    assert sorted(ids(create(root, "val", **fractions))) == sorted(splits["val"])
    assert sorted(ids(create(root, "val", seed=1, **fractions))) != sorted(splits["val"])


def test_missing_images_are_skipped_with_one_warning(make_folder):
    root = make_folder(["path,Effusion", "x.png,1", "gone-1.png,0", "y.png,0", "gone-2.png,1"],
                       images=["x.png", "y.png"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = create(root, test_fraction=0.0, val_fraction=0.0)
    assert [str(w.message) for w in caught if w.category is CsvFolderWarning] == [
        f"csv-folder: 2 images listed in {root / 'labels.csv'} are missing and were skipped: "
        "gone-1.png, gone-2.png"]
    assert ids(ds) == ["x.png", "y.png"]


def test_missing_labels_csv_names_the_file_and_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"labels\.csv not found; expected ROOT/labels\.csv with a 'path'"):
        create(tmp_path)


@pytest.mark.parametrize(("lines", "message"), [
    (["file,Effusion", "x.png,1"], "no 'path' column"),
    (["path,Effusion", "x.png,yes"], r"line 2, column 'Effusion': 'yes' is not 1, 0 or blank"),
    (["path,Effusion,split", "x.png,1,training"], "line 2: split 'training' is not one of"),
])
def test_malformed_csv_is_a_data_error_saying_where(make_folder, lines, message):
    root = make_folder(lines, images=[])
    with pytest.raises(DataError, match=message):
        create(root)


def test_bad_fractions_are_usage_errors(make_folder):
    root = make_folder(["path,Effusion", "x.png,1"])
    with pytest.raises(UsageError, match="sum to less than 1"):
        create(root, val_fraction=0.5, test_fraction=0.5)
