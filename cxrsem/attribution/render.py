"""The paper's Fig. 5: an X-ray and, for each of its top units, the unit's attribution map.

Each map is ``s_k`` (Eq. 6, one value per spatial position of unit ``k``) divided by its largest
magnitude -- the paper's "divided by the maximum s_k^i" when a map is non-negative, and sign
preserving when it is not -- upsampled bilinearly over the image and overlaid on it (red:
positive contribution, blue: negative; matplotlib's ``RdBu_r`` colours at opacity
``0.8 |s / max s|``).  Pictures are ``PANEL`` (224) px, the usual input size, which is then shown
as it is and the map upsampled to it; other input sizes are resampled to 224 px.

The figure is composed as one NumPy array (a colour lookup per pixel, text drawn with Pillow and
matplotlib's DejaVu Sans) and encoded by :func:`png_bytes`, not drawn as a matplotlib figure: a
figure per image cost ~0.3 s, more than attributing the image, and made a folder run of
``cxrsem attribute`` 2-3x slower than the engine; now it costs ~20 ms (``benchmarks/README.md``,
"Semantic attribution").  Pillow has no text markup, so names need no escaping (matplotlib's
``$...$`` mathtext made :func:`cxrsem.textsafe.mpl_literal` necessary) and are drawn literally;
only characters that cannot be drawn (control, format, surrogate) are replaced, and long titles
wrap (:func:`title_lines`).
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.outputs import write_bytes

PANEL = 224        # side of each panel's picture, px (the usual input size: no resampling)
GAP = 12           # between panels, px
MARGIN = 8         # around the figure, px
FONT_SIZE = 12     # px
MAX_TITLE_LINES = 5
ALPHA = 0.8        # opacity of a map where |s / max s| = 1
COLORMAP = "RdBu_r"
BACKGROUND = 255
FRAME = 64         # grey level of the 1 px frame around each picture


def normalized_map(s: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> np.ndarray:
    """``s_k / max |s_k|`` upsampled (bilinear) to ``size x size`` (or ``(h, w)``); values in
    ``[-1, 1]``.

    The same numbers as ``F.interpolate(..., mode="bilinear", align_corners=False)``, computed as
    ``Wy @ s @ Wx.T`` with cached interpolation matrices: the maps are tiny, and torch's
    per-call and thread-pool overhead for them was most of the cost on a busy machine.
    """
    t = np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"expected a [h, w] map, got shape {t.shape}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    peak = float(np.abs(t).max()) if t.size else 0.0
    if not peak > 0 or not np.isfinite(peak):
        return np.zeros((height, width))
    up = _interpolation(t.shape[0], height) @ (t / peak) @ _interpolation(t.shape[1], width).T
    return np.clip(up, -1.0, 1.0)


@lru_cache(maxsize=64)
def _interpolation(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of 1-D linear interpolation with half-pixel centres
    (``align_corners=False``; source positions clamped at the borders, as torch does)."""
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), high), frac)
    weights.flags.writeable = False
    return weights


@dataclass(frozen=True)
class Layout:
    """Where things are in the figure: panel ``i`` (0 = the image, then the units in order) has
    its title in the band above :meth:`box` ``(i)``."""

    panels: int
    title_height: int
    side: tuple[int, int] = (PANEL, PANEL)  # (height, width) of each picture

    @property
    def width(self) -> int:
        return 2 * MARGIN + self.panels * self.side[1] + (self.panels - 1) * GAP

    @property
    def height(self) -> int:
        return 2 * MARGIN + self.title_height + self.side[0]

    def box(self, i: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of panel ``i``'s picture, right/bottom exclusive."""
        left = MARGIN + i * (self.side[1] + GAP)
        top = MARGIN + self.title_height
        return left, top, left + self.side[1], top + self.side[0]


@lru_cache(maxsize=1)
def _colours() -> np.ndarray:
    """``[256, 3]`` RGB in ``[0, 1]`` of matplotlib's colormap, looked up once."""
    import matplotlib

    return matplotlib.colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3]


@lru_cache(maxsize=1)
def _blend_table() -> np.ndarray:
    """``[256 * 256, 3]`` uint8: the overlay's colour for grey level ``g`` (0-255) under heat bin
    ``q`` (:func:`heat_bins`) at row ``g * 256 + q``: ``g (1 - a) + colour_q a`` with
    ``a = ALPHA |heat|`` at the bin's centre -- so an overlay is one lookup per pixel."""
    heat = np.abs((np.arange(256) + 0.5) / 128.0 - 1.0)
    alpha = np.clip(ALPHA * heat, 0.0, 1.0)[None, :, None]
    grey = (np.arange(256) / 255.0)[:, None, None]
    table = grey * (1.0 - alpha) + _colours()[None, :, :] * alpha
    table = (table * 255.0 + 0.5).astype(np.uint8).reshape(256 * 256, 3)
    table.flags.writeable = False
    return table


def heat_bins(heat: np.ndarray) -> np.ndarray:
    """The colormap's bin (0-255) of each value of ``heat`` in ``[-1, 1]`` -- matplotlib's
    ``Normalize(-1, 1)`` followed by a 256-colour lookup."""
    return np.minimum((np.asarray(heat) + 1.0) * 128.0, 255.0).astype(np.uint8)


def overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8: the grey image (``[H, W]`` uint8) with ``heat`` (``[H, W]`` in
    ``[-1, 1]``) in the colormap on top, opacity ``ALPHA * |heat|``."""
    index = grey.astype(np.intp) * 256 + heat_bins(heat)
    return np.take(_blend_table(), index, axis=0)


@lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    try:  # the DejaVu Sans that matplotlib ships, without building matplotlib's font cache
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), FONT_SIZE)
    except (ImportError, OSError):
        try:
            return ImageFont.load_default(size=FONT_SIZE)
        except TypeError:  # Pillow < 10.1: the bitmap font, one size
            return ImageFont.load_default()


@lru_cache(maxsize=4)
def _line_height(font: Any) -> int:
    top, bottom = font.getbbox("Ág")[1::2]
    return max(bottom, FONT_SIZE) - min(top, 0) + 2


def _drawable(line: str) -> str:
    """``line`` with characters that cannot be drawn replaced: control characters by spaces,
    format characters (e.g. bidi overrides, which would reorder what is shown), surrogates (from
    undecodable file names) and unassigned code points by U+FFFD."""
    out = []
    for ch in line:
        category = unicodedata.category(ch)
        if category == "Cc":
            out.append(" ")
        elif category.startswith("C"):
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def title_lines(title: str, width: int = PANEL + GAP, font: Any = None,
                max_lines: int = MAX_TITLE_LINES) -> list[str]:
    """The lines that show ``title`` (``\\n`` separates lines) within ``width`` px: each line
    wrapped at spaces (within a word where a word alone is too wide), at most ``max_lines``, the
    last ending in ``…`` when text had to be left out.  Nothing else is changed."""
    font = font or _font()

    def fits(text: str) -> bool:
        return font.getlength(text) <= width

    def longest_prefix(text: str) -> int:
        lo, hi = 1, len(text)  # at least one character per line, so wrapping always advances
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(text[:mid]):
                lo = mid
            else:
                hi = mid - 1
        return lo

    lines: list[str] = []
    for raw in str(title).split("\n"):
        rest, first = _drawable(raw), len(lines)
        while not fits(rest):
            cut = longest_prefix(rest)
            space = rest.rfind(" ", 0, cut + 1)
            if space > 0:
                lines.append(rest[:space])
                rest = rest[space + 1:]
            else:
                lines.append(rest[:cut])
                rest = rest[cut:]
        if rest or len(lines) == first:  # no empty line after a wrap at a trailing space
            lines.append(rest)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and not fits(last + "…"):
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "…"]
    return lines


def _panel_side(shape: tuple[int, int]) -> tuple[int, int]:
    height, width = shape
    if height == width:
        return PANEL, PANEL
    if height > width:
        return PANEL, max(1, round(PANEL * width / height))
    return max(1, round(PANEL * height / width)), PANEL


def compose_figure(image: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str],
                   image_title: str) -> tuple[np.ndarray, Layout]:
    """The figure as an ``[H, W, 3]`` uint8 array and its :class:`Layout`: ``image`` (``[S, S]``
    in ``[0, 1]``) and one overlay per map of ``maps`` (each ``[h, w]`` attributions of one
    unit, normalised and upsampled by :func:`normalized_map` to the picture's size -- ``S`` itself
    for the usual ``S = PANEL``; other sizes are shown resampled to ``PANEL``), each under its
    title (:func:`title_lines`)."""
    from PIL import Image, ImageDraw

    if len(maps) != len(titles):
        raise ValueError(f"{len(maps)} maps but {len(titles)} titles")
    image = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    if image.ndim != 2:
        raise ValueError(f"expected a [S, S] image, got shape {image.shape}")
    font = _font()
    side = _panel_side(image.shape)
    all_lines = [title_lines(t, side[1] + GAP, font) for t in (image_title, *titles)]
    line_height = _line_height(font)
    layout = Layout(panels=1 + len(maps), side=side,
                    title_height=max(len(lines) for lines in all_lines) * line_height + 4)

    height, width = side
    grey = (image * 255.0 + 0.5).astype(np.uint8)
    if grey.shape != side:
        grey = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR))
    canvas = np.full((layout.height, layout.width, 3), BACKGROUND, dtype=np.uint8)
    for i in range(layout.panels):
        left, top, right, bottom = layout.box(i)
        canvas[top:bottom, left:right] = (grey[..., None] if i == 0 else
                                          overlay(grey, normalized_map(maps[i - 1], side)))
        canvas[top - 1, left - 1:right + 1] = canvas[bottom, left - 1:right + 1] = FRAME
        canvas[top - 1:bottom + 1, left - 1] = canvas[top - 1:bottom + 1, right] = FRAME

    figure = Image.fromarray(canvas)
    draw = ImageDraw.Draw(figure)
    for i, lines in enumerate(all_lines):
        left, top, right, _ = layout.box(i)
        # Titles sit at the bottom of the band, right above their picture, like axes titles.
        y = top - 2 - len(lines) * line_height
        for line in lines:
            x = (left + right - font.getlength(line)) / 2
            draw.text((x, y), line, fill=(0, 0, 0), font=font)
            y += line_height
    return np.asarray(figure), layout


def render_figure(path: str | Path, image: np.ndarray, maps: Sequence[np.ndarray],
                  titles: Sequence[str], image_title: str) -> Path:
    """Write the figure (PNG, atomically): ``image`` ``[S, S]`` in ``[0, 1]`` and one overlay per
    map of ``maps`` (each ``[h, w]`` attributions of one unit); see :func:`compose_figure`."""
    array, _ = compose_figure(image, maps, titles, image_title)
    return write_bytes(path, png_bytes(array))


def png_bytes(rgb: np.ndarray) -> bytes:
    """``rgb`` (``[H, W, 3]`` uint8) as a PNG, by Pillow at zlib level 1 (these figures -- flat
    background, smooth overlays -- compress about as well at level 1 as at the default, in a
    fraction of the time)."""
    from PIL import Image

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 array, got shape {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def unit_title(entry: dict[str, Any]) -> str:
    """``unit 12: consolidation (IoU 0.081)`` / ``23.4% of total contribution`` for one top-k
    entry (a no-break space inside ``(IoU 0.081)``, so a wrapped title keeps it together)."""
    share = f"{100 * entry['share']:.1f}% of total contribution"
    if not entry.get("dissected"):
        return f"unit {entry['unit']}\n{share}"
    if entry.get("labelled"):
        name = f"{entry['concept']} (IoU\u00a0{entry['iou']:.3f})"
    elif entry.get("iou") is not None and entry.get("best_concept"):
        name = f"unlabelled (IoU\u00a0{entry['iou']:.3f})"
    else:
        name = "unlabelled"
    return f"unit {entry['unit']}: {name}\n{share}"


def figure_panels(record: dict[str, Any]) -> tuple[list[np.ndarray], list[str]]:
    """The maps and titles of an attribution record's Fig. 5: its top-k units, then its top
    labelled unit (``top_labelled``) when that ranks below them, so the figure always shows a
    unit with a concept when the dissection labels any."""
    entries = list(record.get("top_k") or [])
    maps = [np.asarray(e["map"]) for e in entries]
    titles = [unit_title(e) for e in entries]
    labelled = record.get("top_labelled")
    if labelled and all(e["unit"] != labelled["unit"] for e in entries):
        maps.append(np.asarray(labelled["map"]))
        titles.append(f"top labelled, rank {labelled['rank']}\n{unit_title(labelled)}")
    return maps, titles
