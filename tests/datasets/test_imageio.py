"""cxrsem.imageio: every format a chest X-ray arrives in becomes one grey channel in [0, 1]."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from cxrsem.errors import DataError
from cxrsem.imageio import image_size, is_dicom, load_image, read_image, to_tensor

# --------------------------------------------------------------------------------------------
# PNG / JPEG


def test_8bit_grey_png_is_divided_by_255(tmp_path, fx):
    arr = fx.gradient(17, 11)
    out = read_image(fx.write_png(tmp_path / "g.png", arr))
    assert out.dtype == np.float32 and out.shape == (11, 17)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)


def test_16bit_png_uses_the_container_range(tmp_path, fx):
    # a 12-bit image stored in a 16-bit PNG keeps its true (dark) grey levels
    arr = np.array([[0, 1024, 4095], [65535, 32768, 7]], dtype=np.uint16)
    path = fx.write_png(tmp_path / "g16.png", arr)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_allclose(read_image(path), arr / 65535.0, atol=1e-7)


def test_rgba_png_drops_alpha_and_uses_luminance(tmp_path, fx):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 255, 0, 0)  # fully transparent: its colour still counts
    rgba[0, 2] = (0, 0, 255, 128)
    rgba[1, :] = (90, 90, 90, 255)
    out = read_image(fx.write_png(tmp_path / "c.png", rgba, "RGBA"))
    expected = np.array([[0.299 * 255, 0.587 * 255, 0.114 * 255], [90, 90, 90]]) / 255.0
    np.testing.assert_allclose(out, expected, atol=1 / 255)


def test_la_and_palette_pngs(tmp_path, fx):
    la = np.stack([fx.gradient(8, 6), np.zeros((6, 8), np.uint8)], -1)
    np.testing.assert_allclose(read_image(fx.write_png(tmp_path / "la.png", la, "LA")),
                               fx.gradient(8, 6) / 255.0, atol=1e-7)
    grey = Image.fromarray(fx.gradient(8, 6)).convert("P")
    grey.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), fx.gradient(8, 6) / 255.0,
                               atol=2 / 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg(tmp_path, fx, mode):
    arr = np.full((16, 24), 200, np.uint8)
    img = Image.fromarray(arr).convert(mode)
    img.save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.shape == (16, 24)
    np.testing.assert_allclose(out, 200 / 255.0, atol=2 / 255)


def test_bilevel_and_float_modes(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), [[0, 1], [1, 0]])
    Image.fromarray(np.array([[-5.0, 5.0]], np.float32), mode="F").save(tmp_path / "f.tiff")
    np.testing.assert_allclose(read_image(tmp_path / "f.tiff"), [[0.0, 1.0]])


@settings(max_examples=25, deadline=None)
@given(arr=arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_png_round_trip_8bit(tmp_path_factory, fx, arr):
    path = fx.write_png(tmp_path_factory.mktemp("h") / "a.png", arr)
    np.testing.assert_allclose(read_image(path) * 255.0, arr, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(arr=arrays(np.uint16, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_png_round_trip_16bit(tmp_path_factory, fx, arr):
    path = fx.write_png(tmp_path_factory.mktemp("h") / "a.png", arr)
    np.testing.assert_allclose(read_image(path) * 65535.0, arr, atol=0.02)


def test_missing_and_corrupt_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.dcm").write_bytes(b"definitely not dicom")
    with pytest.raises(DataError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")


def test_image_size_reads_the_header(tmp_path, fx):
    fx.write_png(tmp_path / "a.png", np.zeros((7, 13), np.uint8))
    assert image_size(tmp_path / "a.png") == (13, 7)
    fx.write_dicom(tmp_path / "a.dcm", np.zeros((5, 9), np.uint16))
    assert image_size(tmp_path / "a.dcm") == (9, 5)


# --------------------------------------------------------------------------------------------
# DICOM


def test_dicom_monochrome2_scaled_by_bits_stored(tmp_path, fx):
    arr = np.array([[0, 1000, 4095]], dtype=np.uint16)
    out = read_image(fx.write_dicom(tmp_path / "a.dcm", arr, bits_stored=12))
    np.testing.assert_allclose(out, arr / 4095.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path, fx):
    arr = np.array([[0, 1000, 4095]], dtype=np.uint16)
    out = read_image(fx.write_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1"))
    np.testing.assert_allclose(out, 1.0 - arr / 4095.0, atol=1e-6)


def test_dicom_rescale_slope_intercept(tmp_path, fx):
    # the BitsStored range goes through the same transform, so the mapping stays linear in [0, 1];
    # a negative slope reverses the grey scale
    arr = np.array([[0, 1023, 4095]], dtype=np.uint16)
    out = read_image(fx.write_dicom(tmp_path / "a.dcm", arr, slope=2.0, intercept=-1024.0))
    np.testing.assert_allclose(out, arr / 4095.0, atol=1e-6)
    out = read_image(fx.write_dicom(tmp_path / "b.dcm", arr, slope=-1.0, intercept=4095.0))
    np.testing.assert_allclose(out, 1.0 - arr / 4095.0, atol=1e-6)


def test_dicom_window_applies_after_rescale(tmp_path, fx):
    arr = np.array([[0, 1000, 1500, 2000, 4095]], dtype=np.uint16)
    # modality values = 2 * stored - 1000; window 2000 +- 1000 (LINEAR, width 2001)
    path = fx.write_dicom(tmp_path / "a.dcm", arr, slope=2.0, intercept=-1000.0,
                          window=(2000.0, 2001.0))
    values = arr * 2.0 - 1000.0
    expected = np.clip((values - 1999.5) / 2000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)
    # voi=False: the window is ignored, the BitsStored range is used
    np.testing.assert_allclose(read_image(path, voi=False), arr / 4095.0, atol=1e-6)


def test_dicom_window_then_monochrome1_and_linear_exact(tmp_path, fx):
    arr = np.array([[100, 200, 300]], dtype=np.uint16)
    path = fx.write_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1",
                          window=(200.0, 200.0), voi_function="LINEAR_EXACT")
    np.testing.assert_allclose(read_image(path), [[1.0, 0.5, 0.0]], atol=1e-6)


def test_dicom_high_bits_cleared_and_signed_data(tmp_path, fx):
    arr = np.array([[0x1000 | 5, 4095]], dtype=np.uint16)  # bit 12 is junk for BitsStored=12
    out = read_image(fx.write_dicom(tmp_path / "a.dcm", arr, bits_stored=12))
    np.testing.assert_allclose(out, [[5 / 4095, 1.0]], atol=1e-6)
    signed = np.array([[-2048, 0, 2047]], dtype=np.int16)
    out = read_image(fx.write_dicom(tmp_path / "s.dcm", signed, bits_stored=12, signed=True))
    np.testing.assert_allclose(out, (signed + 2048) / 4095.0, atol=1e-6)


def test_dicom_rgb_becomes_luminance(tmp_path, fx):
    arr = np.zeros((1, 2, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)
    arr[0, 1] = (255, 255, 255)
    out = read_image(fx.write_dicom(tmp_path / "c.dcm", arr, rgb=True))
    np.testing.assert_allclose(out, [[0.299, 1.0]], atol=1e-3)


def test_dicom_found_by_magic_without_suffix(tmp_path, fx):
    path = fx.write_dicom(tmp_path / "a.dcm", np.array([[4095, 0]], np.uint16))
    plain = path.rename(tmp_path / "IM0001")
    assert is_dicom(plain)
    np.testing.assert_allclose(read_image(plain), [[1.0, 0.0]])


def test_dicom_without_pydicom_says_what_to_install(tmp_path, fx, monkeypatch):
    path = fx.write_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(DataError, match=r"cxrsem\[dicom\]"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# to_tensor


def test_to_tensor_shape_dtype_range():
    x = to_tensor(np.random.default_rng(0).random((50, 70), dtype=np.float32), 32)
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_to_tensor_keeps_constants_and_stretches_non_square():
    np.testing.assert_allclose(to_tensor(np.full((30, 90), 0.25, np.float32), 16).numpy(), 0.25,
                               atol=1e-6)
    wide = np.zeros((30, 90), np.float32)
    wide[:, :45] = 1.0  # left half bright: after stretching to a square, still the left half
    out = to_tensor(wide, 20)[0]
    assert float(out[:, :9].min()) > 0.99 and float(out[:, 11:].max()) < 0.01


def test_to_tensor_same_size_is_identity():
    arr = np.random.default_rng(1).random((12, 12), dtype=np.float32)
    np.testing.assert_array_equal(to_tensor(arr, 12)[0].numpy(), arr)


def test_load_image(tmp_path, fx):
    path = fx.write_png(tmp_path / "a.png", np.full((40, 30), 255, np.uint8))
    x = load_image(path, 8)
    assert x.shape == (1, 8, 8) and torch.allclose(x, torch.ones(1, 8, 8))
