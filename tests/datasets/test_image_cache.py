"""The prepared image cache (``cxrsem prepare``, :mod:`cxrsem.imagecache`): what it stores, when a
dataset serves from it, and that it never changes what a dataset yields beyond 8-bit rounding."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

import cxrsem
from cxrsem import imagecache
from cxrsem.errors import UsageError
from cxrsem.prepare import prepare_images
from cxrsem.testing import run_cli

HALF_LEVEL = 0.5 / 255 + 1e-6  # the most an 8-bit row may differ from the decoded image


def covid(root, cache, size=32, **options):
    return cxrsem.create_concept_set("covid-seg", image_size=size, mask_size=16,
                                     data_roots={"covid-seg": root}, cache_dir=cache, **options)


def prepare_covid(root, cache, sizes=(32,), **kwargs):
    return prepare_images("covid-seg", sizes=sizes, data_roots={"covid-seg": root}, cache_dir=cache,
                          **kwargs)


@pytest.fixture
def covid_copy(covid_root, tmp_path):
    """A private copy of the covid-seg fixture, for tests that change its files."""
    return shutil.copytree(covid_root, tmp_path / "covid-seg")


def test_prepared_items_equal_decoded_ones_within_half_a_grey_level(covid_root, tmp_path):
    cache = tmp_path / "cache"
    (result,) = prepare_covid(covid_root, cache)
    raw, cached = covid(covid_root, "off"), covid(covid_root, cache)
    n = len(raw)
    assert result.folder == cache / "images" / "covid-seg-32"
    assert result.images == n == 3 and not result.failed
    stored = np.load(result.folder / "images.npy")
    assert stored.dtype == np.uint8 and stored.shape == (n, 32, 32)
    assert "prepared image cache" not in raw.describe()
    assert f"prepared image cache: {n} of {n} images from" in cached.describe()
    assert cached.image_cache_state == {"folders": [str(result.folder)], "images": n}
    for i in range(len(raw)):
        a, b = raw[i], cached[i]
        assert a["id"] == b["id"]
        assert torch.equal(a["masks"], b["masks"])
        diff = (a["image"] - b["image"]).abs().max().item()
        assert diff <= HALF_LEVEL
        # the stored row is exactly the rounded decoded image
        row = stored[cached.files.index(raw.files[i])]
        assert np.array_equal(row, np.round(a["image"][0].numpy() * 255).astype(np.uint8))


def test_cached_rows_are_served_without_decoding(covid_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare_covid(covid_root, cache)
    ds = covid(covid_root, cache)

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("decoded an image the cache holds")

    monkeypatch.setattr("cxrsem.default_plugins._io.to_tensor", no_decoding)
    assert ds[0]["image"].shape == (1, 32, 32)


def test_another_size_or_decoder_is_not_served(covid_root, brixia_root, tmp_path):
    cache = tmp_path / "cache"
    prepare_covid(covid_root, cache)
    assert covid(covid_root, cache, size=48).image_cache_state is None

    roots = {"brixia": brixia_root}
    prepare_images("brixia", sizes=(32,), data_roots=roots, cache_dir=cache)
    voi = cxrsem.create_dataset("brixia", split="train", image_size=32, data_roots=roots, cache_dir=cache)
    assert voi.image_cache_state is not None
    # another DICOM window is another decoder: its images must not come from the VOI-windowed rows
    raw = cxrsem.create_dataset("brixia", split="train", image_size=32, data_roots=roots,
                                cache_dir=cache, dicom_window="bits")
    assert raw.image_cache_state is None


def test_all_splits_of_a_dataset_are_prepared(nih_root, tmp_path):
    cache = tmp_path / "cache"
    roots = {"nih": nih_root}
    (result,) = prepare_images("nih", sizes=(32,), data_roots=roots, cache_dir=cache)
    total = 0
    for split in ("train", "val", "test"):
        ds = cxrsem.create_dataset("nih", split=split, image_size=32, data_roots=roots, cache_dir=cache)
        assert ds.image_cache_state == {"folders": [str(result.folder)], "images": len(ds)}
        total += len(ds)
    assert result.images == total


def test_a_changed_file_is_decoded_again(covid_copy, tmp_path):
    cache = tmp_path / "cache"
    prepare_covid(covid_copy, cache)
    before = covid(covid_copy, "off")
    changed = before.files[0]
    from PIL import Image

    Image.fromarray(np.full((40, 60), 200, dtype=np.uint8)).save(changed, format="PNG")
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    ds = covid(covid_copy, cache)
    assert ds.image_cache_state["images"] == len(ds) - 1
    assert "1 changed since they were prepared" in ds.describe()
    assert torch.allclose(ds[0]["image"], covid(covid_copy, "off")[0]["image"])
    assert torch.allclose(ds[0]["image"], torch.full((1, 32, 32), 200 / 255))


def test_up_to_date_store_is_kept_and_force_rebuilds(covid_root, tmp_path):
    cache = tmp_path / "cache"
    (first,) = prepare_covid(covid_root, cache)
    (again,) = prepare_covid(covid_root, cache)
    assert again.up_to_date and again.images == first.images
    (forced,) = prepare_covid(covid_root, cache, force=True)
    assert not forced.up_to_date


def test_an_interrupted_prepare_leaves_the_previous_store(covid_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (first,) = prepare_covid(covid_root, cache)
    index = (first.folder / "index.json").read_bytes()
    rows = np.load(first.folder / "images.npy").copy()
    calls = []

    def fail_on_second(image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros((32, 32), np.uint8)

    monkeypatch.setattr(imagecache, "quantize", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_covid(covid_root, cache, force=True)
    assert (first.folder / "index.json").read_bytes() == index
    assert np.array_equal(np.load(first.folder / "images.npy"), rows)
    assert sorted(p.name for p in (cache / "images").iterdir()) == ["covid-seg-32"]  # no temp folder


def test_an_undecodable_image_is_listed_and_left_to_the_dataset(covid_copy, tmp_path):
    cache = tmp_path / "cache"
    victim = covid(covid_copy, "off").files[1]
    with open(victim, "rb") as f:
        data = f.read()
    with open(victim, "wb") as f:  # header intact (its size is readable), pixel data cut off
        f.write(data[: len(data) // 3])
    expected = f"1 images could not be decoded.*{os.path.basename(victim)}"
    with pytest.warns(imagecache.CacheWarning, match=expected):
        (result,) = prepare_covid(covid_copy, cache)
    assert result.images == 2 and len(result.failed) == 1
    ds = covid(covid_copy, cache)
    assert ds.image_cache_state["images"] == 2


def test_workers_receive_the_path_not_the_array(covid_root, tmp_path):
    cache = tmp_path / "cache"
    prepare_covid(covid_root, cache, sizes=(256,))
    ds = covid(covid_root, cache, size=256)
    first = ds[0]["image"]  # opens the memory map
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # the three 256 x 256 rows would be 197 kB
    assert torch.equal(pickle.loads(blob)[0]["image"], first)


def test_default_folder_comes_from_the_environment(covid_root, tmp_path, monkeypatch):
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("CXRSEM_CACHE_DIR", str(cache))
    (result,) = prepare_covid(covid_root, None)
    assert result.folder.parent.parent == cache
    assert covid(covid_root, None).image_cache_state is not None
    assert covid(covid_root, "off").image_cache_state is None
    monkeypatch.setenv("CXRSEM_CACHE_DIR", "off")
    assert covid(covid_root, None).image_cache_state is None
    with pytest.raises(UsageError, match="disabled"):
        prepare_covid(covid_root, None)


def test_components_without_image_files_say_so():
    with pytest.raises(UsageError, match="'phantom' does not read image files"):
        prepare_images("phantom", sizes=(32,), cache_dir="/nonexistent")
    with pytest.raises(UsageError, match="did you mean 'covid-seg'"):
        prepare_images("covid-sag", sizes=(32,), cache_dir="/nonexistent")


def test_reader_tags_ignore_default_keywords():
    import functools

    from cxrsem.imageio import read_image

    assert imagecache.reader_tag(functools.partial(read_image, voi=True)) == imagecache.reader_tag(read_image)
    assert imagecache.reader_tag(functools.partial(read_image, voi=False)).endswith("(voi=False)")


def test_prepare_then_dissect_on_the_command_line(covid_root, tmp_path, capsys):
    from cxrsem import plugins
    from cxrsem.testing import TestKitPlugin, tiny_checkpoint

    plugins.register_plugin(TestKitPlugin(), "testkit")
    cache = tmp_path / "cache"
    code, out, err = run_cli(["prepare", "covid-seg", "--data-root", f"covid-seg={covid_root}",
                              "--size", "32", "--cache-dir", str(cache), "--quiet"], capsys)
    assert code == 0, err
    assert "prepared images of covid-seg" in out and "covid-seg-32" in out
    model = tiny_checkpoint(tmp_path / "m.pt", image_size=32)
    for setting, expected in ((str(cache), str(cache / "images" / "covid-seg-32")), ("off", None)):
        dest = tmp_path / f"d-{setting == 'off'}"
        code, out, err = run_cli(["dissect", "--model", str(model), "--layer", "features",
                                  "--concepts", "covid-seg", "--data-root", f"covid-seg={covid_root}",
                                  "--seg-size", "16", "--image-cache", setting, "--no-figures",
                                  "--quiet", "--device", "cpu", "--out", str(dest)], capsys)
        assert code == 0, err
        record = json.loads(next(dest.rglob("dissection.json")).read_text())
        prepared = record["settings"]["prepared_images"]["covid-seg"]
        assert (prepared and prepared["folders"][0]) == (expected or None)

    code, _, err = run_cli(["prepare", "phantom", "--cache-dir", str(cache)], capsys)
    assert code != 0 and "\n" not in err.strip()
    assert err.startswith("Error: dataset 'phantom' does not read image files")
