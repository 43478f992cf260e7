"""Shared loader machinery: CSV quirks, splits, annotation rasterisation vs. naive oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrsem.default_plugins._io import (
    DataWarning,
    box_mask,
    holdout,
    paste_mask,
    read_table,
    seeded_order,
    split_three,
    subset,
    warn_listed,
)
from cxrsem.errors import DataError

# --------------------------------------------------------------------------------------------
# CSV


def test_bracketed_header_names_are_rejoined(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("Image Index,Finding Labels,OriginalImage[Width,Height],Patient ID,\n"
                    "a.png,Mass,2500,2048,7,\n")
    table = read_table(path, dataset="t")
    assert table.names == ["Image Index", "Finding Labels", "OriginalImage[Width,Height]",
                           "Patient ID"]
    assert table.column("patient id") == 4  # the bracketed name spans two raw columns
    assert table.rows[0][table.column("OriginalImage[Width,Height]") + 1] == "2048"


def test_bbox_header_nine_fields_rows_six(fx):
    table = read_table(fx.NIH_BBOX, dataset="t")
    assert table.names == ["Image Index", "Finding Label", "Bbox [x,y,w,h]"]
    assert table.widths == [1, 1, 4]
    assert all(len(row) == 9 for row in table.rows)  # padded to the header


def test_bom_semicolons_and_missing_columns(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes("\ufeffFilename;BrixiaScore\n1.dcm;1\n\n".encode())
    table = read_table(path, dataset="brixia")
    assert table.names == ["Filename", "BrixiaScore"] and table.rows == [["1.dcm", "1"]]
    with pytest.raises(DataError, match="no column 'Subject'.*header is: Filename, BrixiaScore"):
        table.column("Subject")


def test_warn_listed_is_one_warning_naming_the_files():
    with pytest.warns(DataWarning) as record:
        message = warn_listed("nih", "images missing", [f"{i}.png" for i in range(25)], limit=3)
    assert len(record) == 1
    assert message == "nih: 25 images missing: 0.png, 1.png, 2.png, ... and 22 more"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_listed("nih", "nothing", []) is None


# --------------------------------------------------------------------------------------------
# Splits


def test_seeded_order_depends_on_seed_only():
    keys = [str(i) for i in range(50)]
    assert seeded_order(keys, 3) == seeded_order(reversed(keys), 3)
    assert seeded_order(keys, 3) != seeded_order(keys, 4)
    assert sorted(seeded_order(keys + keys, 3)) == sorted(keys)


def test_holdout_exact_size_and_stability():
    keys = [f"p{i}" for i in range(40)]
    held = holdout(keys, 0.1, seed=0)
    assert len(held) == 4 and held == holdout(keys[::-1], 0.1, seed=0)
    assert holdout(keys, 0.0, seed=0) == set()
    assert len(holdout(["only"], 0.5, seed=0)) == 0  # a single patient stays in train
    assert len(holdout(["a", "b"], 0.01, seed=0)) == 1


def test_split_three_partitions():
    keys = [f"f{i}.jpg" for i in range(192)]
    assign = split_three(keys, (0.7, 0.15, 0.15), seed=5)
    counts = {s: sum(v == s for v in assign.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 134, "val": 29, "test": 29}
    assert assign == split_three(list(reversed(keys)), (0.7, 0.15, 0.15), seed=5)


def test_subset():
    assert subset(10, 0, 0) == list(range(10))
    picked = subset(100, 7, 1)
    assert len(picked) == 7 and picked == sorted(picked) and picked == subset(100, 7, 1)


# --------------------------------------------------------------------------------------------
# Rasterisation, checked against per-cell oracles


def _box_oracle(box, frame, m):
    x, y, w, h = box
    fw, fh = frame
    out = np.zeros((m, m), bool)
    for i in range(m):
        for j in range(m):
            cx, cy = (j + 0.5) * fw / m, (i + 0.5) * fh / m
            out[i, j] = x <= cx < x + w and y <= cy < y + h
    return out


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(0, 1000), y=st.floats(0, 1000), w=st.floats(1, 600), h=st.floats(1, 600),
    m=st.integers(1, 40),
)
def test_box_mask_matches_oracle(x, y, w, h, m):
    out = np.zeros((m, m), bool)
    box_mask(out, (x, y, w, h), (1024.0, 1024.0))
    expected = _box_oracle((x, y, w, h), (1024.0, 1024.0), m)
    if expected.any():
        np.testing.assert_array_equal(out, expected)
    else:  # too small to hold a cell centre: exactly the cell of its centre (if inside the frame)
        assert out.sum() <= 1


def test_tiny_box_keeps_the_concept_present():
    out = np.zeros((7, 7), bool)
    box_mask(out, (500.0, 600.0, 3.0, 2.0), (1024.0, 1024.0))
    assert out.sum() == 1 and out[int(601 * 7 / 1024), int(501.5 * 7 / 1024)]


def _paste_oracle(crop, left, top, size, m):
    width, height = size
    canvas = np.zeros((height, width), bool)
    for yy in range(crop.shape[0]):
        for xx in range(crop.shape[1]):
            if crop[yy, xx] and 0 <= top + yy < height and 0 <= left + xx < width:
                canvas[top + yy, left + xx] = True
    rows = np.minimum(((np.arange(m) + 0.5) * height / m).astype(int), height - 1)
    cols = np.minimum(((np.arange(m) + 0.5) * width / m).astype(int), width - 1)
    return canvas[np.ix_(rows, cols)]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(), width=st.integers(5, 60), height=st.integers(5, 60), m=st.integers(1, 30),
)
def test_paste_mask_matches_full_canvas_nearest(data, width, height, m):
    h, w = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    left, top = data.draw(st.integers(-5, width)), data.draw(st.integers(-5, height))
    seed = data.draw(st.integers(0, 2**16))
    crop = np.random.default_rng(seed).random((h, w)) < 0.5
    out = np.zeros((m, m), bool)
    paste_mask(out, crop, left, top, (width, height))
    expected = _paste_oracle(crop, left, top, (width, height), m)
    if expected.any():
        np.testing.assert_array_equal(out, expected)
    else:
        visible = _paste_oracle(crop, left, top, (width, height), max(width, height) * 2).any()
        assert out.any() == visible


def test_cell_centre_on_a_pixel_edge_samples_the_pixel_after_it():
    # Cell 5 of 11 on a 30-pixel side has its centre at 5.5 * 30 / 11 = 15 exactly: pixel 15, not
    # 14 (found by the property test above; a rounded 30 / 11 put it at 14.999...).
    crop = np.zeros((15, 1), bool)
    crop[10:] = True  # pixel rows 10-14; cell 4 samples row 12, cell 5 row 15 (outside)
    out = np.zeros((11, 11), bool)
    paste_mask(out, crop, 0, 0, (5, 30))
    np.testing.assert_array_equal(out, _paste_oracle(crop, 0, 0, (5, 30), 11))
    assert out[4, :2].all() and not out[5].any()


def test_thin_mask_survives_coarse_grid():
    crop = np.zeros((40, 3), bool)
    crop[:, 1] = True  # a one-pixel tube
    out = np.zeros((4, 4), bool)
    paste_mask(out, crop, 20, 0, (60, 40))  # the line is at x = 21: no cell centre on it
    assert out.any() and out[:, 1].all() and out.sum() == 4
