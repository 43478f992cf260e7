"""Per-sample random parameters of the phantom: anatomy, findings and devices.

Everything here is plain Python/NumPy on a handful of numbers per image; the pixel work happens
in :mod:`.render`.  A sample's numbers depend only on ``(seed, split, index)`` and the prevalences,
never on which other samples share its batch, which is what makes the phantom deterministic.

Coordinates are normalised: ``u`` runs from -1 (image left) to +1 (image right), ``v`` from -1
(top) to +1 (bottom), whatever the pixel size.  Side 0 is the patient's RIGHT lung, drawn on the
IMAGE LEFT (radiological convention); side 1 the left lung on the image right.  ``OUT[side]`` is
the sign of the lateral direction of that side.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cxrsem.default_plugins.phantom.concepts import CONFIGURABLE

SALT = 0x5048_4E54  # "PHNT": part of every per-sample seed; change it to change every image
OUT = (-1.0, 1.0)  # lateral direction (sign of u) of side 0 (right lung) and side 1 (left lung)
TEXTURE_GRID = 16  # control points per axis of the smooth noise fields (lung markings, GGO)
_ROW = 128  # uniforms per random stream; a stream never reads past its own row
_PLACEMENT_TRIES = 8  # candidate centres per lesion, all drawn whether used or not


@dataclass
class Finding:
    """One drawn instance of a finding or device: a lesion blob, an effusion on one side, a tube."""

    concept: str
    slot: int  # instance number within the concept (effusion: the side)
    side: int  # 0 right lung (image left), 1 left lung (image right), -1 not tied to a lung
    values: dict[str, float]


@dataclass
class SampleSpec:
    """All random numbers of one phantom image."""

    index: int
    anatomy: dict[str, float]
    findings: list[Finding]
    textures: np.ndarray  # float32 [2, TEXTURE_GRID, TEXTURE_GRID] in [0, 1): markings, GGO
    noise_offset: tuple[int, int]  # (row, column) where this image reads the shared noise tile


@dataclass
class BatchSpec:
    """Many samples' numbers stacked into tensors, ready for batched rendering.

    ``anatomy`` is float64 ``[B, len(anatomy_names)]``.  ``findings[(concept, side)]`` holds every
    instance of a concept on one side (-1: devices): the batch positions ``[n]`` (sorted; a
    position repeats when a sample has several instances), the value names, and the values,
    float64 ``[n, len(names)]``.
    """

    indices: list[int]
    anatomy_names: tuple[str, ...]
    anatomy: torch.Tensor
    findings: dict[tuple[str, int], tuple[torch.Tensor, tuple[str, ...], torch.Tensor]]
    textures: torch.Tensor  # float32 [B, 2, G, G]
    noise_offsets: torch.Tensor  # long [B, 2]
    present: dict[str, torch.Tensor] = field(default_factory=dict)  # bool [B] drawn presence

    def __len__(self) -> int:
        return len(self.indices)


class _Stream:
    """Reads a fixed row of uniforms in order.

    ``sub(n)`` hands out the next ``n`` numbers as their own stream and always advances by ``n``,
    so how many numbers one part consumes never shifts the numbers of the parts after it.
    """

    def __init__(self, row: Sequence[float]) -> None:
        self._row = row  # a list: indexing it is much cheaper than indexing a NumPy array
        self._pos = 0

    def next(self) -> float:
        if self._pos >= len(self._row):
            raise IndexError("phantom random stream exhausted (increase _ROW)")
        self._pos += 1
        return self._row[self._pos - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.next()

    def sub(self, n: int) -> _Stream:
        if self._pos + n > len(self._row):
            raise IndexError("phantom random stream exhausted (increase _ROW)")
        part = _Stream(self._row[self._pos : self._pos + n])
        self._pos += n
        return part


def split_code(split: str) -> int:
    """A stable number for a split name (``hash()`` is salted per process, crc32 is not)."""
    return zlib.crc32(split.encode("utf-8"))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([SALT, seed % (1 << 63), split_code(split), index])


# --- shape functions shared with the renderer --------------------------------------------------
# They use only arithmetic, abs and ** so that they run on floats, NumPy arrays and tensors alike.


def lung_x(u, a: Mapping, s: int):
    """Horizontal term of side ``s``'s lung superellipse (< 1 inside when added to ``lung_y``)."""
    d = (u - a[f"lcx{s}"]) * OUT[s]  # > 0 towards the lateral chest wall
    lateral = abs(d / a[f"awl{s}"]) ** a[f"pl{s}"]
    medial = abs(d / a[f"awm{s}"]) ** a[f"pm{s}"]
    return _select(d > 0, lateral, medial)


def lung_y(v, a: Mapping, s: int):
    d = v - a["lcy"]
    top = abs(d / a[f"aht{s}"]) ** a[f"pt{s}"]
    bottom = abs(d / a[f"ahb{s}"]) ** a[f"pb{s}"]
    return _select(d > 0, bottom, top)


def lung_taper(u, v, a: Mapping, s: int):
    """Distance inside side ``s``'s curved lateral border, which narrows the lung towards its
    apex (> 0 inside).  The border is ``u = L(v)``, a parabola in ``v`` above the widest level."""
    t = (a[f"vwide{s}"] - v) / (a[f"vwide{s}"] - a["lcy"] + a[f"aht{s}"])
    t = _select(t > 0, t, t * 0)
    border = a[f"lat{s}"] - OUT[s] * a[f"taper{s}"] * a[f"wl{s}"] * t * t
    return OUT[s] * (border - u)


def dome(u, a: Mapping, s: int):
    """Height (v) of side ``s``'s hemidiaphragm at ``u``: a parabola whose apex lies mid-lung and
    which falls to ``dbase`` at the costophrenic angle and on down the lateral chest wall."""
    t = (u - a[f"dcu{s}"]) / a[f"dw{s}"]
    return a[f"dbase{s}"] - a[f"dh{s}"] * (1 - t * t)


def superellipse(du, dv, ru, rv, p):
    return abs(du / ru) ** p + abs(dv / rv) ** p


def _select(cond, x, y):
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, x, y)
    if isinstance(cond, np.ndarray):
        return np.where(cond, x, y)
    return x if cond else y


def lung_depth(a: Mapping, s: int, u: float, v: float) -> float:
    """About how far (u, v) lies inside side ``s``'s lung (negative outside): the smallest
    margin to the lung's superellipse, lateral border, dome, heart and mediastinum, with level
    differences of the superellipses turned into rough distances."""
    return min(
        (1 - lung_x(u, a, s) - lung_y(v, a, s)) * a[f"awl{s}"] / 2.5,
        lung_taper(u, v, a, s),
        dome(u, a, s) - v,
        (superellipse(u - a["hx"], v - a["hy"], a["hw"], a["hh"], a["ph"]) - 1)
        * min(a["hw"], a["hh"]) / a["ph"],
        (superellipse(u - a["mx"], v - a["my"], a["mw"], a["mh"], 4.0) - 1) * a["mw"] / 4,
    )


# --- anatomy -----------------------------------------------------------------------------------


def _draw_anatomy(r: _Stream, atelectasis_side: int | None, cardiomegaly: bool) -> dict[str, float]:
    """Normal anatomy with per-sample variation; volume loss and cardiomegaly shift it."""
    a: dict[str, float] = {}
    a["cx"] = cx = r.uniform(-0.035, 0.035)  # midline
    sw, sv = r.uniform(0.93, 1.06), r.uniform(0.93, 1.05)  # thorax width / height scale
    a["lcy"] = r.uniform(0.0, 0.08) * sv
    lateral_edge = [0.0, 0.0]
    for s in (0, 1):
        out = OUT[s]
        gap = r.uniform(0.075, 0.105)  # lung's medial edge from the midline
        width = r.uniform(0.56, 0.64) * sw * (1.03 if s == 0 else 1.0)
        medial_edge = cx + out * gap
        lateral_edge[s] = medial_edge + out * width
        a[f"lcx{s}"] = medial_edge + out * 0.45 * width  # the lateral half is the wider one
        a[f"awm{s}"], a[f"awl{s}"] = 0.45 * width, 0.55 * width
        a[f"mgap{s}"], a[f"wl{s}"] = gap, width
        top = -0.74 * sv + r.uniform(-0.025, 0.025)
        a[f"aht{s}"] = a["lcy"] - top
        a[f"ahb{s}"] = r.uniform(0.58, 0.66) * sv
        a[f"lat{s}"] = lateral_edge[s]
        a[f"vwide{s}"] = a["lcy"] + r.uniform(0.15, 0.3) * a[f"ahb{s}"]
        a[f"taper{s}"] = r.uniform(0.28, 0.4)
        # Superellipse powers: a straight medial border, a rounded apex, deep costophrenic sulci.
        a[f"pl{s}"], a[f"pm{s}"] = r.uniform(2.5, 3.0), r.uniform(3.0, 4.0)
        a[f"pt{s}"], a[f"pb{s}"] = r.uniform(1.9, 2.3), r.uniform(3.0, 4.0)
        a[f"dh{s}"] = r.uniform(0.2, 0.27) * sv
        a[f"dcu{s}"] = a[f"lcx{s}"] - out * r.uniform(0.0, 0.06)
        a[f"dw{s}"] = (0.55 * width + out * (a[f"lcx{s}"] - a[f"dcu{s}"])) * r.uniform(1.0, 1.1)
    a["dbase0"] = r.uniform(0.58, 0.64) * sv
    a["dbase1"] = a["dbase0"] + r.uniform(0.02, 0.06)  # the left hemidiaphragm sits lower
    shift = 0.0
    vol_loss = r.uniform(0.05, 0.09)
    mediastinal_shift = r.uniform(0.015, 0.03)
    if atelectasis_side is not None:
        # Volume loss: the hemidiaphragm rises and the mediastinum moves towards the collapse.
        a[f"dbase{atelectasis_side}"] -= vol_loss
        a[f"ahb{atelectasis_side}"] -= 0.5 * vol_loss
        shift = OUT[atelectasis_side] * mediastinal_shift
    a["thorax"] = lateral_edge[1] - lateral_edge[0]
    dome_apex = 0.5 * (a["dbase0"] - a["dh0"] + a["dbase1"] - a["dh1"])
    lung_top = a["lcy"] - 0.5 * (a["aht0"] + a["aht1"])

    # Heart: its width is the cardiothoracic ratio times the thorax width (> 0.5 = cardiomegaly).
    # An ellipse centred at the diaphragm, so only its upper half shows above the domes.
    ctr = r.uniform(0.56, 0.66) if cardiomegaly else r.uniform(0.40, 0.47)
    a["ctr"], a["cardiomegaly"] = ctr, float(cardiomegaly)
    a["hw"] = 0.5 * ctr * a["thorax"]
    a["hx"] = cx + shift + r.uniform(0.1, 0.14) + 0.6 * (a["hw"] - 0.29)  # enlarges to the left
    a["hy"] = dome_apex + r.uniform(0.0, 0.05)
    a["hh"] = (a["hy"] - r.uniform(-0.08, 0.0) * sv) * (1.1 if cardiomegaly else 1.0)
    a["hcut"] = dome_apex + r.uniform(0.08, 0.12)  # the heart ends at the diaphragm
    a["ph"] = r.uniform(2.0, 2.3)
    # Upper mediastinum from the thoracic inlet down into the heart, and the aortic knob.
    a["mx"], a["mw"] = cx + shift + r.uniform(0.0, 0.02), r.uniform(0.085, 0.105)
    m_top = lung_top - 0.2
    a["my"], a["mh"] = 0.5 * (m_top + a["hy"]), 0.5 * (a["hy"] - m_top)
    a["kx"], a["ky"] = cx + shift + r.uniform(0.08, 0.11), r.uniform(-0.42, -0.34) * sv
    a["kr"] = r.uniform(0.045, 0.06)
    # Trachea (an air column) ending at the carina; hila where the lung markings start.
    a["tx"], a["tw"] = cx + 0.5 * shift + r.uniform(-0.01, 0.01), r.uniform(0.028, 0.036)
    a["carina"], a["tamp"] = r.uniform(-0.36, -0.28) * sv, r.uniform(0.04, 0.07)
    for s in (0, 1):
        a[f"hilu{s}"] = cx + OUT[s] * (a[f"mgap{s}"] + 0.08)
        a[f"hilv{s}"] = r.uniform(-0.1, 0.0)
    a["hilr"] = r.uniform(0.6, 0.75)
    # Body outline: neck, shoulders, chest wall (air outside).
    a["bw"] = max(r.uniform(0.9, 1.02), 0.5 * a["thorax"] + 0.12)
    a["neck"], a["shoulder"] = r.uniform(0.2, 0.26), r.uniform(-0.92, -0.82) * sv
    # Rib cage envelope and the posterior ribs, which arch down laterally.
    a["cgx"], a["cgw"] = cx, 0.5 * a["thorax"] + r.uniform(0.04, 0.07)
    a["cgy"] = 0.5 * (lung_top - 0.1 + 0.5 * (a["dbase0"] + a["dbase1"]) + 0.12)
    a["cgh"] = 0.5 * (0.5 * (a["dbase0"] + a["dbase1"]) + 0.12 - lung_top + 0.1)
    a["rsp"], a["rph"] = r.uniform(0.115, 0.135) * sv, r.next()
    a["ra2"] = r.uniform(0.8, 1.0)
    a["ra1"] = -a["ra2"] * r.uniform(0.45, 0.65)  # posterior ribs rise, then arch down laterally
    a["ramp"], a["rt0"] = r.uniform(0.035, 0.06), r.uniform(0.18, 0.24)
    # Clavicles: from the sternal end, rising slightly towards the shoulder.
    a["clv0"], a["clslope"] = r.uniform(-0.64, -0.56) * sv, r.uniform(-0.42, -0.3)
    a["clcurv"], a["clw"] = r.uniform(0.1, 0.25), r.uniform(0.028, 0.036)
    a["clu1"], a["clamp"] = r.uniform(0.55, 0.65), r.uniform(0.08, 0.12)
    # Spine behind the mediastinum, with vertebral bodies and disc spaces.
    a["spw"], a["spp"] = r.uniform(0.045, 0.06), r.uniform(0.085, 0.1) * sv
    a["spph"], a["spamp"] = r.next(), r.uniform(0.05, 0.08)
    # Gastric bubble under the left hemidiaphragm.
    gb_on = r.next() < 0.6
    a["gbx"] = a["lcx1"] + r.uniform(-0.02, 0.08)
    a["gby"] = dome(a["gbx"], a, 1) + r.uniform(0.07, 0.1)
    a["gbrx"], a["gbry"] = r.uniform(0.05, 0.08), r.uniform(0.035, 0.05)
    a["gbamp"] = r.uniform(0.08, 0.14) * gb_on
    # Exposure: tissue densities, noise, blur and window.
    a["iair"], a["isoft"] = r.uniform(0.02, 0.06), r.uniform(0.42, 0.5)
    a["ilung"], a["iheart"] = r.uniform(0.24, 0.3), r.uniform(0.07, 0.1)
    a["iabd"], a["imark"] = a["iheart"] + r.uniform(-0.02, 0.0), r.uniform(0.04, 0.06)
    a["noise"], a["blur"] = r.uniform(0.008, 0.018), r.uniform(1.0, 2.2)  # blur: edge px
    a["contrast"], a["bright"] = r.uniform(0.9, 1.1), r.uniform(-0.04, 0.04)
    return a


# --- findings ----------------------------------------------------------------------------------


_SAFE_SPOTS = ((0.6, 0.35), (0.5, 0.45), (0.7, 0.25))  # lung-relative, away from heart and dome


def _place(r: _Stream, a: Mapping, side: int, lateral: tuple[float, float],
           height: tuple[float, float], margin: float) -> tuple[float, float]:
    """A point inside the lung, drawn in lung-relative coordinates (0 = medial/top, 1 = lateral/
    bottom) and kept at ``margin`` from the border.  When no drawn candidate fits (a lung
    squeezed by a big heart and volume loss), fixed safe spots are tried, then the deepest
    point found is used."""
    tries = [(r.uniform(*lateral), r.uniform(*height)) for _ in range(_PLACEMENT_TRIES)]
    best, best_depth = (0.0, 0.0), -float("inf")
    for fa, fb in tries + list(_SAFE_SPOTS):
        u = a["cx"] + OUT[side] * (a[f"mgap{side}"] + fa * a[f"wl{side}"])
        top = a["lcy"] - a[f"aht{side}"]
        v = top + fb * (dome(u, a, side) - top)
        depth = lung_depth(a, side, u, v)
        if depth > margin:
            return u, v
        if depth > best_depth:
            best, best_depth = (u, v), depth
    return best


def _side(r: _Stream) -> int:
    return 0 if r.next() < 0.5 else 1


def _blobs(r: _Stream, a: Mapping, concept: str, counts: Sequence[float], size: tuple[float, float],
           aspect: tuple[float, float], amp: tuple[float, float], edge: float,
           lateral: tuple[float, float], height: tuple[float, float]) -> list[Finding]:
    """1..len(counts)+1 elliptical blobs; ``counts[k]`` is the chance of an instance beyond k+1."""
    n = 1 + sum(r.next() < c for c in counts)
    found = []
    for slot in range(len(counts) + 1):
        part = r.sub(2 * _PLACEMENT_TRIES + 6)
        side = _side(part)
        ru = part.uniform(*size)
        rv = ru * part.uniform(*aspect)
        u, v = _place(part, a, side, lateral, height, margin=0.5 * min(ru, rv))
        if slot < n:
            found.append(Finding(concept, slot, side, {
                "cu": u, "cv": v, "ru": ru, "rv": rv, "amp": part.uniform(*amp), "edge": edge,
            }))
    return found


def _consolidation(r: _Stream, a: Mapping) -> list[Finding]:
    # Dense, homogeneous, sizeable (several % of the image): the easiest finding to learn.
    return _blobs(r, a, "Consolidation", [0.3], size=(0.13, 0.22), aspect=(0.9, 1.5),
                  amp=(0.26, 0.34), edge=0.02, lateral=(0.25, 0.85), height=(0.15, 0.8))


def _ggo(r: _Stream, a: Mapping) -> list[Finding]:
    # Faint, hazy and textured, larger, fuzzy-edged, favouring the lower and peripheral lung.
    return _blobs(r, a, "Ground Glass Opacities", [0.5, 0.2], size=(0.15, 0.26), aspect=(0.9, 1.4),
                  amp=(0.12, 0.17), edge=0.05, lateral=(0.4, 0.9), height=(0.3, 0.85))


def _nodule(r: _Stream, a: Mapping) -> list[Finding]:
    return _blobs(r, a, "Nodule", [0.25], size=(0.045, 0.07), aspect=(0.9, 1.1),
                  amp=(0.25, 0.35), edge=0.012, lateral=(0.15, 0.9), height=(0.1, 0.85))


def _mass(r: _Stream, a: Mapping) -> list[Finding]:
    found = _blobs(r, a, "Mass", [], size=(0.10, 0.16), aspect=(0.85, 1.15), amp=(0.3, 0.4),
                   edge=0.015, lateral=(0.2, 0.8), height=(0.15, 0.75))
    for f in found:
        f.values["p"] = r.uniform(1.8, 2.4)  # from rounded-diamond to rounded-square outlines
    return found


def _atelectasis(r: _Stream, a: Mapping, side: int) -> list[Finding]:
    # A plate of collapsed lung in the lower zone, tilted down laterally.
    half_len = r.uniform(0.15, 0.24)
    u, v = _place(r, a, side, (0.3, 0.75), (0.55, 0.8), margin=0.05)
    return [Finding("Atelectasis", 0, side, {
        "cu": u, "cv": v, "ra": half_len, "rb": r.uniform(0.035, 0.055),
        "theta": OUT[side] * r.uniform(0.1, 0.45), "amp": r.uniform(0.22, 0.3), "edge": 0.015,
    })]


def _effusion(r: _Stream, a: Mapping) -> list[Finding]:
    """Fluid filling the lung base up to a meniscus that climbs the lateral chest wall."""
    x = r.next()
    sides = [0] if x < 0.4 else [1] if x < 0.75 else [0, 1]
    found = []
    for s in (0, 1):
        part = r.sub(4)
        apex = a[f"dbase{s}"] - a[f"dh{s}"]
        height = apex - (a["lcy"] - a[f"aht{s}"])
        level = apex - part.uniform(0.15, 0.35) * height
        values = {"level": level, "rise": part.uniform(0.15, 0.28), "amp": part.uniform(0.3, 0.4),
                  "edge": 0.04}
        if s in sides:
            found.append(Finding("Pleural Effusion", s, s, values))
    return found


def _pneumothorax(r: _Stream, a: Mapping) -> list[Finding]:
    """The lung collapses towards its lower medial corner, leaving air apically and laterally."""
    side = _side(r)
    out = OUT[side]
    anchor_u = a["cx"] + out * (a[f"mgap{side}"] + 0.2 * a[f"wl{side}"])
    anchor_v = a[f"dbase{side}"] - a[f"dh{side}"] - 0.05
    return [Finding("Pneumothorax", 0, side, {
        "c": r.uniform(0.55, 0.78), "au": anchor_u, "av": anchor_v, "amp": r.uniform(0.1, 0.14),
        "line": r.uniform(0.06, 0.1), "edge": 0.01,
    })]


def _tube(r: _Stream, a: Mapping) -> list[Finding]:
    return [Finding("Endotracheal Tube", 0, -1, {
        "u0": a["tx"] + r.uniform(-0.008, 0.008), "curv": r.uniform(-0.02, 0.02),
        "tip": a["carina"] - r.uniform(0.06, 0.14), "w": r.uniform(0.016, 0.022),
        "amp": r.uniform(0.1, 0.14), "wall": r.uniform(0.12, 0.18),
    })]


def _line(r: _Stream, a: Mapping) -> list[Finding]:
    """A central venous line from a subclavian vein down the superior vena cava (image left of
    the midline), entering on the patient's right two times out of three."""
    entry = 0 if r.next() < 0.65 else 1
    return [Finding("Central Venous Line", 0, -1, {
        "us": a["cx"] + OUT[entry] * r.uniform(0.45, 0.6), "vs": a["clv0"] + r.uniform(0.0, 0.06),
        "ue": a["cx"] - r.uniform(0.03, 0.07), "ve": r.uniform(-0.15, 0.0),
        "w": r.uniform(0.008, 0.011), "amp": r.uniform(0.2, 0.3),
    })]


def draw_sample(seed: int, split: str, index: int, prevalence: Mapping[str, float]) -> SampleSpec:
    """Every random number of image ``index`` of ``split``.

    Each configurable concept reads its own row of uniforms and decides presence from the row's
    first number, so changing one prevalence never changes the rest of an image.
    """
    rng = sample_rng(seed, split, index)
    rows = rng.random((2 + len(CONFIGURABLE), _ROW)).tolist()
    textures = rng.random((2, TEXTURE_GRID, TEXTURE_GRID), dtype=np.float32)
    noise_offset = (int(rng.integers(0, 1 << 30)), int(rng.integers(0, 1 << 30)))
    streams = {name: _Stream(rows[2 + i]) for i, name in enumerate(CONFIGURABLE)}
    present = {name: streams[name].next() < prevalence[name] for name in CONFIGURABLE}

    atelectasis_side = _side(streams["Atelectasis"]) if present["Atelectasis"] else None
    anatomy = _draw_anatomy(_Stream(rows[0]), atelectasis_side, present["Cardiomegaly"])
    builders = {
        "Consolidation": _consolidation,
        "Ground Glass Opacities": _ggo,
        "Nodule": _nodule,
        "Mass": _mass,
        "Pleural Effusion": _effusion,
        "Pneumothorax": _pneumothorax,
        "Endotracheal Tube": _tube,
        "Central Venous Line": _line,
    }
    findings: list[Finding] = []
    for name, build in builders.items():
        if present[name]:
            findings.extend(build(streams[name], anatomy))
    if atelectasis_side is not None:
        findings.extend(_atelectasis(streams["Atelectasis"], anatomy, atelectasis_side))
    return SampleSpec(index, anatomy, findings, textures, noise_offset)


def collate(specs: Sequence[SampleSpec]) -> BatchSpec:
    """Stack per-sample numbers into float64 tensors (float64 so shape terms like ``|x|**p``
    round identically whatever the batch; pixels are float32 later)."""
    names = tuple(specs[0].anatomy)
    anatomy = torch.tensor([[s.anatomy[k] for k in names] for s in specs], dtype=torch.float64)
    groups: dict[tuple[str, int], list[tuple[int, int, Finding]]] = {}
    for pos, spec in enumerate(specs):
        for f in spec.findings:
            groups.setdefault((f.concept, f.side), []).append((pos, f.slot, f))
    findings = {}
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda m: m[:2])
        value_names = tuple(members[0][2].values)
        idx = torch.tensor([pos for pos, _, _ in members], dtype=torch.long)
        values = torch.tensor([[f.values[k] for k in value_names] for _, _, f in members],
                              dtype=torch.float64)
        findings[key] = (idx, value_names, values)
    present = {}
    for name in CONFIGURABLE:
        flags = [any(f.concept == name for f in s.findings) for s in specs]
        present[name] = torch.tensor(flags, dtype=torch.bool)
    present["Cardiomegaly"] = anatomy[:, names.index("cardiomegaly")] > 0
    textures = torch.from_numpy(np.stack([s.textures for s in specs]))
    offsets = torch.tensor([s.noise_offset for s in specs], dtype=torch.long)
    return BatchSpec([s.index for s in specs], names, anatomy, findings, textures, offsets,
                     present)
