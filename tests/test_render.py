"""The Fig. 5 renderer (``cxrsem.attribution.render``): layout, where the maps land, their colours,
the PNG it writes, and names shown literally."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cxrsem.attribution import render
from cxrsem.attribution.render import (
    FRAME,
    GAP,
    MARGIN,
    PANEL,
    compose_figure,
    normalized_map,
    png_bytes,
    render_figure,
    title_lines,
    unit_title,
)

NBSP = "\u00a0"
TITLES = ["unit 1: a (IoU 0.100)\n50.0% of total contribution", "unit 2\n10.0% of total contribution"]


def hot_map(shape, where, value=1.0, rest=0.0):
    s = np.full(shape, rest)
    s[where] = value
    return s


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image.convert("RGB"))


def panel(figure: np.ndarray, layout, i: int) -> np.ndarray:
    left, top, right, bottom = layout.box(i)
    return figure[top:bottom, left:right].astype(int)


def test_png_has_one_panel_per_unit_after_the_image(tmp_path):
    image = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    maps = [hot_map((7, 7), (3, 3)), hot_map((7, 7), (0, 0))]
    path = render_figure(tmp_path / "f.png", image, maps, TITLES, "scan.png\na: 0.700")
    figure = read_png(path)
    array, layout = compose_figure(image, maps, TITLES, "scan.png\na: 0.700")
    np.testing.assert_array_equal(figure, array)  # the PNG holds exactly the composed figure
    assert layout.panels == 3
    assert figure.shape[1] == 2 * MARGIN + 3 * PANEL + 2 * GAP == layout.width
    assert figure.shape[0] == layout.height == 2 * MARGIN + layout.title_height + PANEL
    for i in range(3):
        left, top, right, bottom = layout.box(i)
        assert (right - left, bottom - top) == (PANEL, PANEL)
        # A 1 px frame around each picture, titles in the band above it.
        assert (figure[top - 1, left - 1:right + 1] == FRAME).all()
        assert (figure[bottom, left - 1:right + 1] == FRAME).all()
        assert (figure[top - 1:bottom + 1, left - 1] == FRAME).all()
        assert (figure[top - 1:bottom + 1, right] == FRAME).all()
        band = figure[MARGIN:top - 1, left:right]
        assert (band < 128).any(), f"no title above panel {i}"
    first = panel(figure, layout, 0)
    assert (first[..., 0] == first[..., 1]).all() and (first[..., 1] == first[..., 2]).all()
    assert first[0, 0, 0] < 10 and first[-1, -1, 0] > 245  # the image, dark to bright


def test_image_panel_is_the_image_at_the_usual_input_size():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (PANEL, PANEL))
    figure, layout = compose_figure(image, [rng.standard_normal((7, 7))], TITLES[:1], "x")
    expected = np.floor(image.astype(np.float32) * 255 + 0.5).astype(int)
    np.testing.assert_array_equal(panel(figure, layout, 0)[..., 0], expected)


@pytest.mark.parametrize(("shape", "hot", "size"), [((7, 7), (1, 5), 224), ((7, 7), (6, 0), 64),
                                                    ((4, 9), (2, 7), 96), ((14, 14), (9, 3), 512)])
def test_a_hot_unit_position_is_red_where_it_is_and_nowhere_else(shape, hot, size):
    image = np.full((size, size), 0.5)
    cold = tuple(shape[d] - 1 - hot[d] for d in range(2))
    maps = [hot_map(shape, hot, 3.0), hot_map(shape, cold, -2.0)]
    figure, layout = compose_figure(image, maps, TITLES, "x")
    cell = (PANEL / shape[0], PANEL / shape[1])  # one map position, in panel pixels

    def cell_of(yx):
        return yx[0] // cell[0], yx[1] // cell[1]

    def deviation(rgb):  # how far from the grey underneath: largest where |s / max s| is
        return np.abs(rgb - 128).sum(axis=-1)

    red, blue = panel(figure, layout, 1), panel(figure, layout, 2)
    assert cell_of(np.unravel_index(np.argmax(deviation(red)), red.shape[:2])) == hot
    assert cell_of(np.unravel_index(np.argmax(deviation(blue)), blue.shape[:2])) == cold
    # Positions two cells away from the hot one are untouched grey.
    rows, cols = np.indices(red.shape[:2])
    for rgb, where in ((red, hot), (blue, cold)):
        far = (np.abs(rows // cell[0] - where[0]) >= 2) | (np.abs(cols // cell[1] - where[1]) >= 2)
        assert (rgb[far] == 128).all()
    # Red where the unit contributed positively, blue where negatively, nothing of the other.
    assert (red[..., 0] - red[..., 2]).max() > 60 and (red[..., 2] - red[..., 0]).max() <= 0
    assert (blue[..., 2] - blue[..., 0]).max() > 60 and (blue[..., 0] - blue[..., 2]).max() <= 0
    # At the hot position's centre: the grey under the colormap's colour for the upsampled value.
    centre = tuple(int((hot[d] + 0.5) * cell[d]) for d in range(2))
    t = torch.as_tensor(hot_map(shape, hot))[None, None]
    h = float(F.interpolate(t, size=(PANEL, PANEL), mode="bilinear", align_corners=False)[
        0, 0][centre])
    assert h > 0.9
    colour = np.asarray(matplotlib.colormaps["RdBu_r"]((h + 1) / 2)[:3])
    expected = (0.5 * (1 - 0.8 * h) + colour * 0.8 * h) * 255
    assert np.abs(red[centre] - expected).max() <= 2


def test_overlay_colours_follow_matplotlib_rdbu_r_with_opacity_from_the_magnitude():
    heat = np.linspace(-1, 1, 401)[None, :]
    for level in (0, 77, 200, 255):
        grey = np.full(heat.shape, level, dtype=np.uint8)
        got = render.overlay(grey, heat)[0].astype(float)
        colour = matplotlib.colormaps["RdBu_r"](matplotlib.colors.Normalize(-1, 1)(heat[0]))[:, :3]
        alpha = 0.8 * np.abs(heat[0])[:, None]
        expected = (level / 255 * (1 - alpha) + colour * alpha) * 255
        assert np.abs(got - expected).max() <= 1.5  # alpha taken at the colour bin's centre


@pytest.mark.parametrize(("shape", "size"), [((7, 7), 224), ((7, 7), 64), ((3, 5), (40, 31)),
                                             ((16, 16), 8), ((1, 1), 9)])
def test_normalized_map_is_torch_bilinear_of_s_over_its_largest_magnitude(shape, size):
    s = np.random.default_rng(1).standard_normal(shape)
    t = torch.as_tensor(s / np.abs(s).max())[None, None]
    target = (size, size) if isinstance(size, int) else size
    expected = F.interpolate(t, size=target, mode="bilinear", align_corners=False)[0, 0].numpy()
    got = normalized_map(s, size)
    assert got.shape == target
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_array_equal(normalized_map(torch.as_tensor(s), size), got)


def test_normalized_map_keeps_the_sign_and_maps_zero_to_zero():
    s = np.array([[0.0, -4.0], [2.0, 1.0]])
    got = normalized_map(s, 2)
    np.testing.assert_allclose(got, s / 4.0)
    assert normalized_map(np.zeros((3, 3)), 5).tolist() == np.zeros((5, 5)).tolist()


def test_names_are_drawn_literally(monkeypatch):
    drawn: list[str] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    concept = r"$\a$ [b]<i>"
    entry = {"unit": 7, "share": 0.25, "dissected": True, "labelled": True, "concept": concept,
             "iou": 0.0812}
    image_name = r"x$^$y\z.png"
    compose_figure(np.zeros((32, 32)), [np.ones((2, 2))], [unit_title(entry)],
                   f"{image_name}\nFinding: 0.500")
    assert drawn == [image_name, "Finding: 0.500", rf"unit 7: {concept} (IoU{NBSP}0.081)",
                     "25.0% of total contribution"]


def test_characters_that_cannot_be_drawn_are_replaced_not_interpreted():
    assert title_lines("a\tb\x00c") == ["a b c"]
    assert title_lines("scan\u202egnp.exe") == ["scan\ufffdgnp.exe"]  # no bidi reordering
    assert title_lines("bad\udcff.png") == ["bad\ufffd.png"]  # from an undecodable file name
    # And the figure renders with them.
    compose_figure(np.zeros((8, 8)), [np.ones((2, 2))], ["\udcff\u202e$"], "\x1b[31m")


def test_long_titles_wrap_within_their_panel_and_are_cut_after_the_last_line():
    font = render._font()
    width = PANEL + GAP
    words = "consolidation with air bronchograms in the right lower lobe"
    lines = title_lines(f"unit 3: {words} (IoU 0.050)\n1.0% of total contribution")
    assert len(lines) > 2 and all(font.getlength(line) <= width for line in lines)
    assert " ".join(lines) == f"unit 3: {words} (IoU 0.050) 1.0% of total contribution"
    long_word = "x" * 90
    lines = title_lines(long_word)
    assert "".join(lines) == long_word and all(font.getlength(line) <= width for line in lines)
    cut = title_lines("word " * 400)
    assert len(cut) == render.MAX_TITLE_LINES and cut[-1].endswith("…")
    assert all(font.getlength(line) <= width for line in cut)
    assert title_lines("a\n\nb") == ["a", "", "b"]
    # A unit's title breaks before its IoU, never between "IoU" and the value.
    entry = {"unit": 64, "share": 0.125, "dissected": True, "labelled": True, "iou": 0.081,
             "concept": "Consolidation [RUL] with more words"}
    lines = title_lines(unit_title(entry))
    assert len(lines) == 3 and any(f"(IoU{NBSP}0.081)" in line for line in lines)


def test_the_title_band_grows_with_the_longest_title():
    short, _ = compose_figure(np.zeros((16, 16)), [np.ones((2, 2))], ["unit 1"], "x")
    tall, layout = compose_figure(np.zeros((16, 16)), [np.ones((2, 2))], ["word " * 60], "x")
    assert tall.shape[0] > short.shape[0]
    assert layout.title_height >= render.MAX_TITLE_LINES * render._line_height(render._font())


def test_a_non_square_image_keeps_its_aspect():
    figure, layout = compose_figure(np.zeros((40, 80)), [np.ones((2, 4))], ["u"], "x")
    left, top, right, bottom = layout.box(1)
    assert (right - left, bottom - top) == (PANEL, PANEL // 2)
    assert figure.shape == (layout.height, layout.width, 3)


def test_mismatched_maps_and_titles_are_refused():
    with pytest.raises(ValueError, match="2 maps but 1 titles"):
        compose_figure(np.zeros((8, 8)), [np.ones((2, 2))] * 2, ["u"], "x")


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 5, 3), (295, 948, 3)])
def test_png_bytes_is_a_png_any_reader_opens(shape):
    rgb = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    rgb[: shape[0] // 2] = 255  # flat rows too, where the "Up" filter gives zeros
    with Image.open(io.BytesIO(png_bytes(rgb))) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB" and image.size == shape[1::-1]
        np.testing.assert_array_equal(np.asarray(image), rgb)
    with pytest.raises(ValueError, match="H, W, 3"):
        png_bytes(rgb[..., 0])


def test_unit_titles():
    assert unit_title({"unit": 4, "share": 0.5}) == "unit 4\n50.0% of total contribution"
    labelled = {"unit": 4, "share": 0.123, "dissected": True, "labelled": True,
                "concept": "Nodule", "iou": 0.08}
    assert unit_title(labelled) == f"unit 4: Nodule (IoU{NBSP}0.080)\n12.3% of total contribution"
    unlabelled = {"unit": 4, "share": -0.01, "dissected": True, "labelled": False, "iou": 0.02,
                  "best_concept": "Nodule"}
    assert unit_title(unlabelled) == f"unit 4: unlabelled (IoU{NBSP}0.020)\n-1.0% of total contribution"
    none = {"unit": 4, "share": 0.0, "dissected": True, "labelled": False, "iou": None}
    assert unit_title(none) == "unit 4: unlabelled\n0.0% of total contribution"


def test_the_top_labelled_unit_gets_a_panel_when_it_ranks_below_the_top_units():
    top = [{"unit": 2, "share": 0.6, "dissected": True, "labelled": False, "iou": 0.01,
            "best_concept": "Left Lung", "map": [[1.0]]}]
    labelled = {"unit": 0, "rank": 3, "share": 0.1, "dissected": True, "labelled": True,
                "concept": "Consolidation", "iou": 0.1, "map": [[0.5]]}
    maps, titles = render.figure_panels({"top_k": top, "top_labelled": labelled})
    assert [m.tolist() for m in maps] == [[[1.0]], [[0.5]]]
    assert titles[1] == ("top labelled, rank 3\nunit 0: Consolidation (IoU\u00a00.100)\n"
                         "10.0% of total contribution")
    # Among the top units already, or absent: no extra panel.
    assert len(render.figure_panels({"top_k": top, "top_labelled": {**labelled, "unit": 2}})[0]) == 1
    assert len(render.figure_panels({"top_k": top, "top_labelled": None})[0]) == 1
