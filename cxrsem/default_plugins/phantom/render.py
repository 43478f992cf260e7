"""Batched rendering of phantom parameters into images and exact concept masks.

Every structure is an implicit shape evaluated on the pixel-centre grid.  Its *pre-field* is
``k * (1 - level)`` (``level < 1`` inside); clamping it to [0, 1] gives the soft coverage drawn
into the image, and the concept mask is exactly where that coverage is non-zero.  Masks are thus
the support of what is drawn, at whatever resolution the grid has, and masks at another size come
from evaluating the same shapes on that size's grid (never from resizing).

Why the code looks the way it does:

- Shapes are *separable* (axis-aligned superellipses, domes, bands as functions of one axis), so
  the per-axis terms are computed on ``[n, 1, W]`` / ``[n, H, 1]`` vectors and a full-resolution
  field costs one broadcast add.  Transcendental functions (``**``, cos) only run on those
  vectors, in float64; full-resolution work is float32 ``+ - * abs frac min max clamp``, which
  rounds the same in every SIMD lane and loop tail, so a sample's pixels do not depend on its
  batch or on the number of threads.
- Blur is analytic: every edge ramps over at least ``blur`` pixels (drawn per image), which costs
  nothing, unlike a convolution; the noise tile is pre-blurred grain.
- Findings are rendered only for the samples that have them, on the half of the image that holds
  their lung (the two lungs never cross the central column).
- Batches are processed in chunks of about :data:`CHUNK_PIXELS` pixels, with scratch tensors
  reused from chunk to chunk, so the working set stays in cache and the allocator stays idle.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from cxrsem.default_plugins.phantom.concepts import CHANNEL, CONCEPTS, OPACITIES, PATHOLOGIES
from cxrsem.default_plugins.phantom.labels import assemble, zones_from_rows
from cxrsem.default_plugins.phantom.params import (
    OUT,
    BatchSpec,
    dome,
    lung_taper,
    lung_x,
    lung_y,
)

CHUNK_PIXELS = 8 * 224 * 224  # pixels rendered together: enough samples to amortise the
# per-operation overhead, few enough that the workspace (about ten such fields) stays in cache
_NOISE_TILE = 512  # side of the shared noise tile that per-sample offsets read from
_NOISE_SEED = 20210927


@dataclass
class Rendered:
    images: Tensor | None  # float32 [B, 1, R, R] in [0, 1]
    masks: Tensor | None  # bool [B, len(CONCEPTS), R, R]
    labels: dict[str, Tensor]  # every task's targets, computed from the masks
    boxes: list[tuple[int, str, int, int, int, int]]  # (batch position, concept, r0, r1, c0, c1)


class _Grid:
    """Pixel-centre coordinates of an ``R x R`` image in normalised units, as float64 vectors,
    and the narrowest edge ramp allowed (``soft``: a pixel, or per sample a few pixels -- this
    is the phantom's blur, applied analytically to every edge instead of by convolution)."""

    def __init__(self, size: int) -> None:
        c = (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1
        self.size = size
        self.u = c.view(1, 1, size)
        self.v = c.view(1, size, 1)
        self.px = 2.0 / size
        self.soft: float | Tensor = self.px
        self.half = size // 2
        # Columns of side 0 (image left, u < 0) and side 1 (u >= 0).
        self.cols = (slice(0, self.half), slice(self.half, size))

    def us(self, side: int) -> Tensor:
        return self.u[..., self.cols[side]]

    def blurred(self, factor: Tensor) -> _Grid:
        """This grid with edges at least ``factor`` pixels wide (``factor``: ``[n, 1, 1]``)."""
        out = copy.copy(self)
        out.soft = self.px * factor
        return out

    def rows(self, rows: Tensor) -> _Grid:
        """This grid for a subset of the samples."""
        out = copy.copy(self)
        if isinstance(self.soft, Tensor):
            out.soft = self.soft[rows]
        return out

    def edge(self, width: float | Tensor) -> Tensor:
        """``width`` (normalised units), widened to the grid's softness where that is larger."""
        return torch.clamp(torch.as_tensor(width, dtype=torch.float64), min=self.soft)


class _Columns:
    """Named columns of a ``[n, K]`` table as ``[n, 1, 1]`` tensors, made on first use (a render
    reads only some of them, and each view costs a tensor op)."""

    def __init__(self, table: Tensor, names: tuple[str, ...]) -> None:
        self._table, self._index, self._cache = table, {k: i for i, k in enumerate(names)}, {}

    def __getitem__(self, key: str) -> Tensor:
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._table[:, self._index[key]].view(-1, 1, 1)
        return found

    def get(self, key: str, default=None):
        return self[key] if key in self._index else default

    def rows(self, rows: Tensor) -> _Columns:
        return _Columns(self._table[rows], tuple(self._index))


def _f(x: Tensor) -> Tensor:
    return x.to(torch.float32)


def _sep(x: Tensor, y: Tensor, out: Tensor | None = None) -> Tensor:
    """Full-resolution ``x + y`` of a column term ``[n, 1, W]`` and a row term ``[n, H, 1]``."""
    return torch.add(_f(x), _f(y), out=out)


def _soft(pre: Tensor) -> Tensor:
    return pre.clamp(0.0, 1.0)


def _sharpness(radius: Tensor, power: float | Tensor, edge: float | Tensor, grid: _Grid) -> Tensor:
    """``k`` such that coverage ramps from 0 to 1 over about ``edge`` (see :meth:`_Grid.edge`)
    inside a superellipse of that radius and power -- but over at most 30 % of the radius, so
    that blur never washes out a small nodule or a thin plate."""
    return radius / (power * torch.minimum(grid.edge(edge), 0.3 * radius))


def _ellipse_pre(grid: _Grid, cols: slice, cu, cv, ru, rv, p, k,
                 out: Tensor | None = None) -> Tensor:
    x = k * (1 - (abs(grid.u[..., cols] - cu) / ru) ** p)
    y = -k * (abs(grid.v - cv) / rv) ** p
    return _sep(x, y, out)


class _Workspace:
    """Named float32 scratch tensors ``[chunk, R, W]``, allocated once per render call and
    reused by every chunk: each fresh full-resolution tensor is a large allocation, and the
    allocator's page faults would cost more than the arithmetic done in it."""

    def __init__(self, chunk: int, size: int) -> None:
        self.chunk, self.size, self.n = chunk, size, chunk
        self._buffers: dict[tuple[str, int], Tensor] = {}

    def __call__(self, name: str, width: int | None = None) -> Tensor:
        """Buffer ``name`` for the current chunk's ``n`` samples (contents undefined)."""
        width = self.size if width is None else width
        buffer = self._buffers.get((name, width))
        if buffer is None:
            buffer = torch.empty(self.chunk, self.size, width, dtype=torch.float32)
            self._buffers[(name, width)] = buffer
        return buffer[: self.n]


@functools.lru_cache(maxsize=4)
def _noise_tile(size: int) -> Tensor:
    """A fixed tile of unit-variance grain (white noise blurred by a 3x3 binomial, as film and
    detector noise is), doubled in both axes so any window can be sliced without wrapping.
    Samples read it at their own random offset: per-pixel noise at the cost of a copy."""
    def binomial(x: np.ndarray, axis: int) -> np.ndarray:  # [1, 2, 1] / 4, wrapping around
        return 0.25 * np.roll(x, -1, axis) + 0.5 * x + 0.25 * np.roll(x, 1, axis)

    white = np.random.default_rng(_NOISE_SEED).standard_normal((size, size))
    grain = binomial(binomial(white, 0), 1)
    grain = (grain / grain.std()).astype(np.float32)
    return torch.from_numpy(np.tile(grain, (2, 2)))


def _noise(offsets: Tensor, size: int, out: Tensor | None = None) -> Tensor:
    """Each sample's ``size x size`` window of the noise tile, at its offsets ``[n, 2]``."""
    tile_size = max(_NOISE_TILE, 1 << (size - 1).bit_length())
    tile = _noise_tile(tile_size)
    windows = []
    for oy, ox in offsets.tolist():
        oy, ox = oy % tile_size, ox % tile_size
        window = tile[oy : oy + size, ox : ox + size]
        windows.append(window)
    return torch.stack(windows, out=out)


def _upsample(control: Tensor, grid: _Grid, ws: _Workspace | None = None) -> Tensor:
    """Bilinear interpolation of ``[n, G, G]`` control points spanning the image to ``[n, R, R]``,
    written as gathers and float32 multiply-adds (exact per pixel, unlike a batched matmul)."""
    g = control.shape[-1]
    t = (grid.u.view(-1) + 1) * 0.5 * (g - 1)
    i0 = torch.clamp(t.floor().long(), 0, g - 2)
    w = _f(t - i0)
    rows = control.index_select(-1, i0) * (1 - w) + control.index_select(-1, i0 + 1) * w
    w = w.view(1, -1, 1)  # rows: [n, G, R]
    out, tmp = (ws("texture"), ws("tmp")) if ws is not None else (None, None)
    out = torch.index_select(rows, 1, i0, out=out).mul_(1 - w)
    return out.add_(torch.index_select(rows, 1, i0 + 1, out=tmp).mul_(w))


# --- anatomy fields ----------------------------------------------------------------------------
# Full-resolution tensors are updated in place wherever possible: every fresh [n, R, R] tensor
# is a large allocation, and allocator churn (page faults) costs more than the arithmetic.


def _cardio_fields(a, grid: _Grid, ws: _Workspace) -> tuple[Tensor, Tensor]:
    """Pre-fields of the heart and of the whole cardiomediastinum (heart, mediastinum, knob)."""
    edge = 0.012
    cols = slice(None)
    k = _sharpness(torch.minimum(a["hw"], a["hh"]), a["ph"], edge, grid)
    heart = _ellipse_pre(grid, cols, a["hx"], a["hy"], a["hw"], a["hh"], a["ph"], k, ws("heart"))
    torch.minimum(heart, _f((a["hcut"] - grid.v) / grid.edge(0.05)), out=heart)  # fades out
    k = _sharpness(a["mw"], 4.0, edge, grid)
    cardio = _ellipse_pre(grid, cols, a["mx"], a["my"], a["mw"], a["mh"], 4.0, k, ws("cardio"))
    torch.maximum(cardio, heart, out=cardio)
    k = _sharpness(a["kr"], 2.0, edge, grid)
    knob = _ellipse_pre(grid, cols, a["kx"], a["ky"], a["kr"], a["kr"], 2.0, k, ws("tmp"))
    return heart, torch.maximum(cardio, knob, out=cardio)


def _lung_pre(a, side: int, grid: _Grid, cardio: Tensor | None, scale: tuple | None = None,
              ws: _Workspace | None = None) -> Tensor:
    """Pre-field of one lung on its half of the image: superellipse within the curved lateral
    border, above the dome, outside the cardiomediastinum.  ``scale=(c, au, av)`` instead gives
    the superellipse and border shrunk towards (au, av) by c (a collapsed lung)."""
    u, v = grid.us(side), grid.v
    su, sv = (u, v) if scale is None else (scale[1] + (u - scale[1]) / scale[0],
                                           scale[2] + (v - scale[2]) / scale[0])
    width = u.shape[-1]
    lung, tmp = (ws(f"lung{side}", width), ws("tmp", width)) if ws is not None else (None, None)
    k = _sharpness(a[f"awl{side}"], 2.5, 0.012, grid)
    lung = _sep(k * (1 - lung_x(su, a, side)), -k * lung_y(sv, a, side), lung)
    kt = 1.0 / grid.edge(0.012)
    taper = _sep(-kt * OUT[side] * su, kt * lung_taper(0.0, sv, a, side), tmp)
    torch.minimum(lung, taper, out=lung)
    if scale is not None:
        return lung
    kd = 1.0 / grid.edge(0.012)
    torch.minimum(lung, _sep(kd * dome(u, a, side), -kd * v, tmp), out=lung)
    # min(lung, -cardio) = -max(-lung, cardio), without a negated copy of cardio.
    return torch.maximum(lung.neg_(), cardio[..., grid.cols[side]], out=lung).neg_()


def _dome_full(a, grid: _Grid) -> Tensor:
    return torch.cat([dome(grid.us(0), a, 0), dome(grid.us(1), a, 1)], dim=-1)


def _smoothstep(x: Tensor) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


def _tri(x: Tensor) -> Tensor:
    """Triangle wave ``|frac(x) - 0.5|``: 0.5 at integers, 0 at half-integers."""
    return (x - x.floor()).sub_(0.5).abs_()


def _anatomy_image(a, grid: _Grid, cardio: Tensor, lung_soft: list[Tensor],
                   markings: list[Tensor], ws: _Workspace) -> Tensor:
    """Body, abdomen, heart, spine, trachea, ribs, clavicles and lung fields, before findings
    (in the workspace's ``img``).  ``markings`` is consumed (overwritten)."""
    tmp = ws("tmp")
    u, v = grid.u, grid.v
    du = abs(u - a["cx"])
    kb = 1.0 / grid.edge(0.02)
    t = ((v - (a["shoulder"] - 0.18)) / 0.22).clamp(0.0, 1.0)
    width = a["neck"] + (a["bw"] - a["neck"]) * t * t * (3 - 2 * t)
    tissue = _f(a["isoft"] * (1 - 0.25 * (du / a["bw"]) ** 2) - a["iair"])
    img = _sep(-kb * du, kb * width, ws("img")).clamp_(0, 1).mul_(tissue).add_(_f(a["iair"]))

    kd = 1.0 / grid.edge(0.02)
    below_dome = _sep(-kd * _dome_full(a, grid), kd * v, ws("below"))
    columns = _f(a["iabd"] * ((a["cgw"] - du) / 0.1).clamp(0, 1))  # abdomen, not chest wall
    img.add_(torch.clamp(below_dome, 0, 1, out=tmp).mul_(columns))
    img.add_(torch.clamp(cardio, 0, 1, out=tmp).mul_(_f(a["iheart"])))

    # Spine and trachea are products of a column profile and a row profile.
    ks = 1.0 / grid.edge(0.01)
    spine_cols = (ks * (a["spw"] - du)).clamp(0, 1) * a["spamp"]
    vert = 0.75 + 0.5 * _smoothstep(4 * (_tri(v / a["spp"] + a["spph"]) - 0.1))
    img.add_(torch.mul(_f(spine_cols), _f(vert), out=tmp))
    trachea_cols = (ks * (a["tw"] - abs(u - a["tx"]))).clamp(0, 1) * a["tamp"]
    img.sub_(torch.mul(_f(trachea_cols), _f((ks * (a["carina"] - v)).clamp(0, 1)), out=tmp))

    # Ribs: bands along curves v = g(|u - cx|), inside the rib cage, off the spine and fading
    # out just below the diaphragm.
    kc = _sharpness(a["cgw"], 3.0, 0.03, grid)
    cage = _sep(kc * (1 - (du / a["cgw"]) ** 3), -kc * (abs(v - a["cgy"]) / a["cgh"]) ** 3,
                ws("cage"))
    torch.minimum(cage, _f(ks * (du - 1.3 * a["spw"])), out=cage)
    torch.minimum(cage, below_dome.neg_().add_(2), out=cage).clamp_(0, 1)
    # The phase counts ribs from the cage centre (+64 keeps it positive for frac()); a rib is
    # where the phase is within (0.5 - rt0) of an integer.
    bend = (a["ra1"] * du + a["ra2"] * du**2) / a["rsp"]
    ribs = _sep(-bend, (v - a["cgy"]) / a["rsp"] + a["rph"] + 64, tmp)
    kr = torch.clamp(a["rsp"] / grid.edge(0.01), min=12.5)  # edge ramp: <= 0.08 of a period
    ribs.frac_().sub_(0.5).abs_().sub_(_f(a["rt0"])).mul_(_f(kr)).clamp_(0, 1)
    img.add_(ribs.mul_(cage).mul_(_f(a["ramp"])))

    # Clavicles: bands around v = c(|u - cx|) between the sternal end and the shoulder.
    x = du - 0.08
    centre = a["clv0"] + a["clslope"] * x + a["clcurv"] * x * x
    kc = 1.0 / grid.edge(0.01)
    clavicles = _sep(-kc * centre, kc * v, tmp).abs_().neg_().add_(_f(kc * a["clw"]))
    span = _f(kc * torch.minimum(x, a["clu1"] - du) * 4)
    img.add_(torch.minimum(clavicles, span, out=clavicles).clamp_(0, 1).mul_(_f(a["clamp"])))

    # Lung fields: dark, with vessel markings fading from the hila.
    for side in (0, 1):
        darkness = a["ilung"] * (0.85 + 0.15 * _smoothstep((v - a["lcy"] + a[f"aht{side}"]) / 0.4))
        lungs = markings[side].mul_(_f(a["imark"])).sub_(_f(darkness)).mul_(lung_soft[side])
        img[..., grid.cols[side]] += lungs

    # Gastric bubble under the left hemidiaphragm.
    if bool((a["gbamp"] > 0).any()):
        k = _sharpness(a["gbry"], 2.0, 0.02, grid)
        bubble = _ellipse_pre(grid, grid.cols[1], a["gbx"], a["gby"], a["gbrx"], a["gbry"], 2.0, k,
                              ws("tmp", img.shape[-1] - grid.half))
        img[..., grid.cols[1]] -= bubble.clamp_(0, 1).mul_(_f(a["gbamp"]))
    return img


def _markings(a, grid: _Grid, ridges: Tensor, side: int, ws: _Workspace) -> Tensor:
    """Vessel-like ridges (from :func:`_ridges`), strongest near the hilum, on one half."""
    r2 = a["hilr"] ** 2
    fall = _sep(1 - (grid.us(side) - a[f"hilu{side}"]) ** 2 / r2,
                -((grid.v - a[f"hilv{side}"]) ** 2) / r2, ws(f"markings{side}", grid.us(side).shape[-1]))
    return fall.clamp_(0, 1).add_(0.35).mul_(ridges[..., grid.cols[side]])


def _ridges(texture: Tensor) -> Tensor:
    """Thin bright lines along the level set 0.5 of a smooth texture in [0, 1) (in place)."""
    return texture.sub_(0.5).abs_().mul_(-9).add_(1).clamp_(0, 1)


# --- findings ----------------------------------------------------------------------------------


def _blob_pre(f, grid: _Grid, cols: slice) -> Tensor:
    p = f.get("p", torch.full_like(f["ru"], 2.0))
    k = _sharpness(torch.minimum(f["ru"], f["rv"]), p, f["edge"], grid)
    return _ellipse_pre(grid, cols, f["cu"], f["cv"], f["ru"], f["rv"], p, k)


def _band_pre(f, grid: _Grid, cols: slice) -> Tensor:
    """A rotated ellipse: level = A du^2 + C dv^2 + 2B du dv, still two vectors and one product."""
    du, dv = grid.u[..., cols] - f["cu"], grid.v - f["cv"]
    c, s = torch.cos(f["theta"]), torch.sin(f["theta"])
    ia, ib = 1 / f["ra"] ** 2, 1 / f["rb"] ** 2
    k = _sharpness(f["rb"], 2.0, f["edge"], grid)
    x = k * (1 - (c * c * ia + s * s * ib) * du * du)
    y = -k * (s * s * ia + c * c * ib) * dv * dv
    return _sep(x, y) + _f(-2 * k * c * s * (ia - ib) * du) * _f(dv)


def _effusion_pre(f, a: _Columns, side: int, grid: _Grid) -> Tensor:
    """Below a meniscus that is lowest medially and climbs the lateral chest wall."""
    u = grid.us(side)
    t = (((u - a["cx"]) * OUT[side] - a[f"mgap{side}"]) / a[f"wl{side}"]).clamp(0, 1)
    meniscus = f["level"] - f["rise"] * t * t
    k = 1.0 / grid.edge(f["edge"])
    return _sep(-k * meniscus, k * grid.v)


def _device_pre(concept: str, f, grid: _Grid) -> tuple[Tensor, Tensor]:
    """Pre-field of a tube or line and its image profile (radiopaque walls brighter)."""
    u, v, px = grid.u, grid.v, grid.px
    k = 1.0 / max(0.004, 0.5 * px)
    width = torch.clamp(f["w"], min=0.75 * px)  # stay at least a pixel wide on coarse grids
    if concept == "Endotracheal Tube":
        centre = f["u0"] + f["curv"] * (v + 1) ** 2
        dist = _sep(k * u, -k * centre).abs_()
        rows = _f(k * (f["tip"] - v))
        pre = torch.minimum(_f(k * width) - dist, rows)
        wall = torch.minimum(_f(k * 0.3 * width) - (dist - _f(k * 0.7 * width)).abs_(), rows)
        look = _soft(pre) * _f(f["amp"]) + _soft(wall) * _f(f["wall"])
        return pre, look
    span = f["ve"] - f["vs"]
    x = ((f["ve"] - v) / span).clamp(0, 1)
    centre = f["ue"] + (f["us"] - f["ue"]) * x * x
    slope = 2 * (f["us"] - f["ue"]) * x / span
    norm = 1 / torch.sqrt(1 + slope * slope)  # horizontal distance -> distance across the line
    dist = _sep(k * u, -k * centre).abs_() * _f(norm)
    rows = _f(k * torch.minimum(v - f["vs"], f["ve"] - v))
    pre = torch.minimum(_f(k * width) - dist, rows)
    return pre, _soft(pre) * _f(f["amp"])


# --- chunk -------------------------------------------------------------------------------------


class _Masks:
    """A chunk's concept masks, one ``[n, R, R]`` bool tensor per concept that has pixels;
    channels are created (zeroed) on first use, since most findings are absent from a chunk."""

    def __init__(self, n: int, size: int) -> None:
        self.shape = (n, size, size)
        self.channels: dict[str, Tensor] = {}

    def channel(self, name: str) -> Tensor:
        if name not in self.channels:
            self.channels[name] = torch.zeros(self.shape, dtype=torch.bool)
        return self.channels[name]


@dataclass
class _Found:
    """What a chunk's findings contribute: which pathologies each sample shows (bool
    ``[n, 8]``), the opacity coverage per lung side (``[n, R, W]``, None without opacity),
    image additions ``(rows, columns, intensity)`` and pneumothoraces ``(rows, side, coverage)``
    whose lung markings must go."""

    present: Tensor
    opacity: list[Tensor | None] = field(default_factory=lambda: [None, None])
    draws: list[tuple[Tensor, slice, Tensor]] = field(default_factory=list)
    ptx: list[tuple[Tensor, int, Tensor]] = field(default_factory=list)


class _Chunk:
    """Renders samples ``[c0, c1)`` of a batch into the batch's output tensors."""

    def __init__(self, spec: BatchSpec, c0: int, c1: int, grid: _Grid, ws: _Workspace) -> None:
        self.c0, self.c1, self.ws = c0, c1, ws
        ws.n = c1 - c0
        self.a = _Columns(spec.anatomy[c0:c1], spec.anatomy_names)
        self.grid = grid.blurred(self.a["blur"])
        self.findings = []  # ((concept, side), rows in this chunk, values)
        for key, (idx, names, values) in spec.findings.items():
            # idx is sorted, so this chunk's instances are one contiguous run.
            lo, hi = (int(x) for x in torch.searchsorted(idx, torch.tensor([c0, c1])))
            if hi > lo:
                self.findings.append((key, idx[lo:hi] - c0, _Columns(values[lo:hi], names)))
        self.textures = spec.textures[c0:c1]
        self.offsets = spec.noise_offsets[c0:c1]

    def render(self, images: Tensor | None, masks: _Masks | None, boxes: list | None,
               labels: bool) -> dict[str, Tensor] | None:
        """Draw this chunk's images into ``images`` and its concept masks into ``masks`` (either
        may be None), append bounding boxes to ``boxes`` when given, and return the labels when
        asked.  Labels come from the same fields as the masks, counted without building them."""
        grid, a, ws = self.grid, self.a, self.ws
        heart, cardio = _cardio_fields(a, grid, ws)
        lung_pre = [_lung_pre(a, s, grid, cardio, ws=ws) for s in (0, 1)]
        lung_soft = [torch.clamp(p, 0, 1, out=ws(f"soft{s}", p.shape[-1]))
                     for s, p in enumerate(lung_pre)]
        enlarged = torch.nonzero(a["cardiomegaly"].view(-1) > 0).view(-1)
        if masks is not None:
            masks.channels["Cardiomediastinum"] = torch.clamp(cardio, 0, 1, out=ws("tmp")).bool()
            for s, name in ((0, "Right Lung"), (1, "Left Lung")):
                masks.channel(name)[..., grid.cols[s]] = lung_soft[s].bool()
            for r in enlarged.tolist():
                masks.channel("Cardiomegaly")[r] = heart[r].clamp(0, 1).bool()
        if boxes is not None and len(enlarged):
            self._boxes(boxes, "Cardiomegaly", enlarged, _soft(heart[enlarged]), slice(None))
        found = self._findings(lung_pre, lung_soft, masks, boxes, images is not None)
        if images is not None:
            images[:, 0] = self._image(cardio, lung_soft, found.draws, found.ptx)
        if not labels:
            return None
        present = found.present
        for r in enlarged.tolist():
            present[r, PATHOLOGIES.index("Cardiomegaly")] = bool(heart[r].amax() > 0)
        zones = []
        for s in (0, 1):  # zones A-C, then D-F
            # ceil() of a coverage in [0, 1] is exactly its mask, as 0./1.; row sums are exact.
            width = lung_soft[s].shape[-1]
            lung_rows = torch.ceil(lung_soft[s], out=ws("tmp", width)).sum(dim=-1)
            opaque = found.opacity[s]
            opaque_rows = (torch.ceil(opaque, out=opaque).sum(dim=-1) if opaque is not None
                           else torch.zeros_like(lung_rows))
            zones.append(zones_from_rows(lung_rows, opaque_rows))
        return assemble(present, torch.cat(zones, dim=1))

    def _findings(self, lung_pre: list[Tensor], lung_soft: list[Tensor], masks: _Masks | None,
                  boxes: list | None, looks: bool) -> _Found:
        """Masks, boxes, presence and opacity coverage of every finding and device in the chunk;
        with ``looks``, also what each adds to the image (see :class:`_Found`)."""
        grid, ws = self.grid, self.ws
        found = _Found(torch.zeros(self.c1 - self.c0, len(PATHOLOGIES), dtype=torch.bool))
        for (concept, side), rows, f in self.findings:
            if side < 0:
                pre, look = _device_pre(concept, f, grid)
                cols = slice(None)
            else:
                cols = grid.cols[side]
                shape = self._finding_pre(concept, f, rows, side)
                pre = torch.minimum(shape, lung_pre[side][rows])  # findings stay inside the lung
                look = self._finding_look(concept, f, rows, side, _soft(pre)) if looks else None
                if concept == "Pneumothorax" and looks:
                    # shape = -(collapsed lung); its zero level is the visceral pleural line.
                    line = (1 - shape.abs()).clamp_(0, 1) * lung_soft[side][rows]
                    found.ptx.append((rows, side, _soft(pre)))
                    found.draws.append((rows, cols, line * _f(f["line"])))
            cover = _soft(pre)
            if concept in PATHOLOGIES:
                column = PATHOLOGIES.index(concept)
                hits = (cover.flatten(1).amax(dim=1) > 0).tolist()
                for r, hit in zip(rows.tolist(), hits, strict=True):
                    found.present[r, column] |= hit
            if concept in OPACITIES:
                if found.opacity[side] is None:
                    found.opacity[side] = ws(f"opacity{side}", cover.shape[-1]).zero_()
                opacity = found.opacity[side]
                for i, r in enumerate(rows.tolist()):
                    torch.maximum(opacity[r], cover[i], out=opacity[r])
            if masks is not None:
                inside, channel = cover.bool(), masks.channel(concept)
                for i, r in enumerate(rows.tolist()):
                    channel[r, :, cols] |= inside[i]
            if boxes is not None and side >= 0:
                self._boxes(boxes, concept, rows, cover, cols)
            if looks:
                found.draws.append((rows, cols, look))
        return found

    def _image(self, cardio: Tensor, lung_soft: list[Tensor], draws: list, ptx: list) -> Tensor:
        grid, a, ws = self.grid, self.a, self.ws
        ridges = _ridges(_upsample(self.textures[:, 0], grid, ws))
        markings = [_markings(a, grid, ridges, s, ws) for s in (0, 1)]
        for rows, side, cover in ptx:
            # Air without lung markings outside the collapsed lung.
            for i, r in enumerate(rows.tolist()):
                markings[side][r] *= 1 - cover[i]
        img = _anatomy_image(a, grid, cardio, lung_soft, markings, ws)
        for rows, cols, look in draws:
            for i, r in enumerate(rows.tolist()):
                img[r, :, cols] += look[i]
        img.add_(_noise(self.offsets, grid.size, ws("tmp")).mul_(_f(a["noise"])))
        return img.mul_(_f(a["contrast"])).add_(_f(a["bright"])).clamp_(0, 1)

    def _finding_pre(self, concept: str, f, rows: Tensor, side: int) -> Tensor:
        grid, cols = self.grid.rows(rows), self.grid.cols[side]
        if concept == "Pleural Effusion":
            return _effusion_pre(f, self.a.rows(rows), side, grid)
        if concept == "Pneumothorax":
            a = self.a.rows(rows)
            collapsed = _lung_pre(a, side, grid, cardio=None, scale=(f["c"], f["au"], f["av"]))
            return collapsed.neg()  # outside the collapsed lung (inside the lung after clipping)
        if concept == "Atelectasis":
            return _band_pre(f, grid, cols)
        return _blob_pre(f, grid, cols)

    def _finding_look(self, concept: str, f, rows: Tensor, side: int, cover: Tensor) -> Tensor:
        amp = _f(f["amp"])
        if concept == "Ground Glass Opacities":
            texture = _upsample(self.textures[rows, 1], self.grid)[..., self.grid.cols[side]]
            return cover * amp * (0.45 + 1.1 * texture)
        if concept == "Pneumothorax":
            return cover * -amp
        return cover * amp

    def _boxes(self, out: list, concept: str, rows: Tensor, cover: Tensor, cols: slice) -> None:
        col0 = cols.start or 0
        has_row = cover.amax(dim=2) > 0  # [m, H]
        has_col = cover.amax(dim=1) > 0  # [m, W]
        for i, r in enumerate(rows.tolist()):
            ys = torch.nonzero(has_row[i]).view(-1)
            xs = torch.nonzero(has_col[i]).view(-1)
            if len(ys):
                out.append((self.c0 + r, concept, int(ys[0]), int(ys[-1]) + 1,
                            col0 + int(xs[0]), col0 + int(xs[-1]) + 1))


def render(spec: BatchSpec, size: int, *, image: bool = True, masks: bool = True,
           labels: bool = True, boxes: bool = False, chunk: int | None = None) -> Rendered:
    """Draw ``spec`` at ``size`` pixels: the images, the 13 concept masks and/or the labels
    computed from those masks (and, for the box concept set, one bounding box per lesion
    instance and per enlarged heart).  Masks not asked for are kept per chunk only."""
    b = len(spec)
    chunk = chunk or max(1, CHUNK_PIXELS // (size * size))
    grid = _Grid(size)
    images = torch.empty(b, 1, size, size, dtype=torch.float32) if image else None
    mask_out = torch.zeros(b, len(CONCEPTS), size, size, dtype=torch.bool) if masks else None
    box_out: list | None = [] if boxes else None
    label_parts: list[dict[str, Tensor]] = []
    workspace = _Workspace(min(chunk, b), size)
    for c0 in range(0, b, chunk):
        c1 = min(b, c0 + chunk)
        chunk_masks = _Masks(c1 - c0, size) if masks else None
        chunk_images = images[c0:c1] if images is not None else None
        chunk_labels = _Chunk(spec, c0, c1, grid, workspace).render(
            chunk_images, chunk_masks, box_out, labels)
        if mask_out is not None:
            for name, channel in chunk_masks.channels.items():
                mask_out[c0:c1, CHANNEL[name]] = channel
        if chunk_labels is not None:
            label_parts.append(chunk_labels)
    out_labels = ({k: torch.cat([p[k] for p in label_parts]) for k in label_parts[0]}
                  if labels else {})
    return Rendered(images, mask_out, out_labels, sorted(box_out) if box_out is not None else [])
