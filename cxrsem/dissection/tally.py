"""Streaming IoU tallies of unit masks against concept masks (paper Eq. 5), exact and sparse.

For unit k and concept c, over the images x that contain c::

    IoU_kc = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|,   M_k(x) = S'_k(x) >= T_k

with S'_k the unit's map bilinearly upsampled to the annotation size.  Per batch, only the
(image, unit) pairs whose low-resolution maximum reaches T_k are upsampled: bilinear interpolation
is a convex combination of its inputs, so it never exceeds their maximum, and every other pair has
an empty mask.  At the 0.5% quantile that skips most pairs.

The comparison is made exact by interpolating ``a - T_k`` in float64 and testing ``>= 0``: T_k is
one of the unit's own values, so neighbourhoods equal to it give exactly 0 (interpolating ``a`` in
float32 and comparing with T_k would let rounding decide those pixels).  That float64 rule
(:func:`unit_masks`) is the definition; the tally computes the same masks faster
(:func:`fast_unit_masks`): it upsamples in float32 and re-decides with :func:`unit_masks` only the
pairs holding a pixel whose float32 value lies within a proven rounding bound of 0 (the bound is
derived above :func:`float32_rounding_bound`).  Intersections of the masks with all concepts of
their image, and the mask areas, are one matrix product per image; unions follow from mask sizes:
``|M u L| = |M| + |L| - |M n L|``.  Counts are int64 (the per-image float32 products are exact:
they are integers below 2^24).

The tally also keeps each image's own terms of those sums, sparsely (the per-image sufficient
statistics of :mod:`cxrsem.statistics.imagestats`): every non-empty ``|M_k(x)|`` of a candidate
pair, every non-zero ``|M_k(x) & L_c(x)|`` and each image's label areas ``|L_c(x)|``, keyed by the
image's global row.  They are gathered per batch as int64 CPU tensors and concatenated once, when
asked for (:meth:`IoUTally.image_stats`, :meth:`IoUTally.state_dict`).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from cxrsem.statistics import StatisticMismatch, check_kind, require_compatible
from cxrsem.statistics.imagestats import ImageStats

# What unit_masks applies, recorded verbatim in every dissection.json (settings.interpolation and
# settings.mask_rule), so the record cannot drift from the code.
INTERPOLATION = {"mode": "bilinear", "align_corners": False}
MASK_RULE = "upsampled activation >= T_k"


def iou_of(intersection: torch.Tensor | np.ndarray, unit_area: torch.Tensor | np.ndarray,
           label_area: torch.Tensor | np.ndarray) -> np.ndarray:
    """Eq. 5's ratio ``I / (U + L - I)`` in float64 (0 where the union is empty); any leading
    dimensions (a null's permutations) broadcast against ``unit_area [K, C]`` and ``label_area [C]``."""
    as_array = lambda t: (t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
                          ).astype(np.float64)
    inter, unit, label = as_array(intersection), as_array(unit_area), as_array(label_area)
    union = unit + label - inter
    out = np.zeros(np.broadcast_shapes(inter.shape, union.shape))
    np.divide(inter, union, out=out, where=union > 0)
    return out


def unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M_k = S'_k >= T_k for maps ``[P, h, w]`` with thresholds ``[P]``: bool ``[P, *size]``."""
    centred = maps.double() - thresholds.double()[:, None, None]
    upsampled = F.interpolate(centred.unsqueeze(1), size=size, **INTERPOLATION)
    return upsampled[:, 0] >= 0


# --- Exact fast masks --------------------------------------------------------------------------
# unit_masks above is the definition: the sign of F.interpolate(a - T_k) computed in float64.  The
# tally decides the same signs from a float32 upsampling and re-decides in float64 (with
# unit_masks itself) only the pairs holding a pixel whose float32 value is too close to 0 to be
# sure of its sign.  The float32 upsampling is separable, ``Wy @ x @ Wx^T``, with dense weight
# matrices built from exact rational weights (below), so its rounding error has a bound that
# depends only on IEEE arithmetic, not on how a kernel orders its operations.
#
# Bound.  Let x = a - T_k (real), m = max|x| over the pair's low-resolution map, W the exact
# bilinear weights (rows of each axis matrix are >= 0 and sum to 1, so the exact value V of every
# output pixel is a convex combination of x with |V| <= m), u = 2^-24 and u64 = 2^-53.
# * float32 value v32: x32 = fl32(fl64(x)) errs by <= (u + u64)|x|; each weight fl32(W) by
#   <= u*W; the two products are sums of h then w terms, and any summation order (BLAS blocking,
#   FMA) keeps |fl(sum p_i) - sum p_i| <= gamma_n * sum |p_i| with gamma_n = n u / (1 - n u).
#   Altogether |v32 - V| <= m * ((h + w + 4) u + O(u^2)).
# * float64 value v64 (torch's kernel, any operation order): its source coordinate
#   (dst + 0.5) * in/out - 0.5 errs by <= 4 u64 (n_in + 2), each weight is 1-Lipschitz in it (also
#   where the floor flips), and its four-term sum adds gamma_4(u64):
#   |v64 - V| <= m * (64 (max(h, w) + 2) + 8) u64 (generous; tests/test_tally_fast.py checks it).
# A pixel with |v32| > B = 2 * m * ((h + w + 8) u + (64 (max(h, w) + 2) + 8) u64) + 2^-100 therefore
# has v64 of the same sign as v32 and v64 != 0: its mask bit is decided.  The factor 2 absorbs every
# second-order term (and m being taken from x32, within a factor 1 + 2u of the real one); 2^-100
# absorbs underflow (gradual or flushed to zero: at most 2^-126 per operation, a few hundred
# operations per pixel).  Pairs whose m is not finite or above 2^100
# (overflow in float32, NaN spread by the dense products) take the float64 path whole.  The bound
# needs IEEE float32 products: with TF32 / bf16 matmul settings the whole tally takes unit_masks.
_U32, _U64 = 2.0 ** -24, 2.0 ** -53
_TINY, _HUGE = 2.0 ** -100, 2.0 ** 100


def float32_rounding_bound(h: int, w: int) -> float:
    """The relative part of the bound B above (times m = max|a - T_k| of a pair)."""
    return 2 * ((h + w + 8) * _U32 + (64 * (max(h, w) + 2) + 8) * _U64)


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[n_out, n_in]`` bilinear weights (align_corners=False), each the correct
    rounding of the exact rational weight: source coordinate ``((2 dst + 1) n_in - n_out) /
    (2 n_out)``, clamped at 0, split between floor and floor + 1 (clamped at n_in - 1)."""
    den = 2 * n_out
    num = np.maximum((2 * np.arange(n_out) + 1) * n_in - n_out, 0)
    low, rem = num // den, num % den
    high = np.minimum(low + 1, n_in - 1)
    weights = np.zeros((n_out, n_in), dtype=np.int64)
    np.add.at(weights, (np.arange(n_out), low), den - rem)
    np.add.at(weights, (np.arange(n_out), high), rem)
    # Numerators and denominator are integers below 2^24, so one IEEE division rounds correctly.
    return (torch.from_numpy(weights).to(dtype) / float(den)).to(device)


def _ieee_float32_matmul(device: torch.device) -> bool:
    """Whether float32 products on ``device`` are plain IEEE float32 (no TF32/bf16 shortcut)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if torch.get_float32_matmul_precision() != "highest":
            return False
        if device.type == "cuda":
            matmul = torch.backends.cuda.matmul
            return not matmul.allow_tf32 and getattr(matmul, "fp32_precision", "none") in ("none", "ieee")
        if device.type == "cpu":
            matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
            return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")
    return False


class FastMasks(NamedTuple):
    masks: torch.Tensor        # [P, *size] float32 0/1, equal to unit_masks(maps, thresholds, size)
    exact_pairs: torch.Tensor  # [E] the pairs re-decided in float64 (by unit_masks itself)


def _float32_stage(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]):
    """The first (small) product ``Wy @ x32 [P, M0, w]``, ``Wx`` and each pair's bound B ``[P]``
    (inf where the pair must take the float64 path)."""
    h, w = maps.shape[-2:]
    x32 = (maps.double() - thresholds.double()[:, None, None]).to(torch.float32)
    device = str(maps.device)
    wy, wx = _axis_weights(h, size[0], device), _axis_weights(w, size[1], device)
    m = x32.abs().amax(dim=(1, 2)).double()   # NaN when the map holds one
    bound = m * float32_rounding_bound(h, w) + _TINY
    bound[~torch.isfinite(m) | (m > _HUGE)] = float("inf")
    return wy @ x32, wx, bound


def float32_upsampled(maps: torch.Tensor, thresholds: torch.Tensor,
                      size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 values ``v32 [P, *size]`` of the upsampled ``a - T_k`` and each pair's bound B
    ``[P]``: where ``|v32| > B`` the sign of v32 is that of unit_masks' float64 value."""
    stage, wx, bound = _float32_stage(maps, thresholds, size)
    return (stage.reshape(-1, stage.shape[-1]) @ wx.T).reshape(maps.shape[0], *size), bound


# Pairs per chunk of the fast path: the chunk's values (~chunk * M0 * M1 floats) stay in cache
# between the product, the distance to 0 and the thresholding.
_CHUNK_VALUES = 1 << 21


def fast_unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> FastMasks:
    """:func:`unit_masks` bit for bit, as float32 0/1, upsampling in float32 and re-deciding in
    float64 the pairs with a pixel within the rounding bound of T_k (see the bound above)."""
    size = (int(size[0]), int(size[1]))
    pairs, pixels = maps.shape[0], size[0] * size[1]
    if pairs == 0 or not _ieee_float32_matmul(maps.device):
        masks = unit_masks(maps, thresholds, size).to(torch.float32)
        return FastMasks(masks, torch.arange(pairs, device=maps.device))
    stage, wx, bound = _float32_stage(maps, thresholds, size)
    masks = torch.empty(pairs, pixels, dtype=torch.float32, device=maps.device)
    closest = torch.empty(pairs, dtype=torch.float32, device=maps.device)
    chunk = max(1, _CHUNK_VALUES // pixels)
    scratch = torch.empty(min(chunk, pairs), pixels, dtype=torch.float32, device=maps.device)
    one = torch.ones((), dtype=torch.float32, device=maps.device)
    for start in range(0, pairs, chunk):
        stop = min(start + chunk, pairs)
        values = masks[start:stop]
        torch.mm(stage[start:stop].reshape(-1, stage.shape[-1]), wx.T,
                 out=values.view(-1, size[1]))
        torch.amin(torch.abs(values, out=scratch[:stop - start]), dim=1, out=closest[start:stop])
        values.heaviside_(one)   # 1 where v32 >= 0 (ambiguous pixels are re-decided below)
    # NaN distances (never <= B) come from maps whose bound is inf.
    exact = ((closest.double() <= bound) | torch.isinf(bound)).nonzero().squeeze(1)
    if exact.numel():
        masks[exact] = unit_masks(maps[exact], thresholds[exact], size).flatten(1).to(torch.float32)
    return FastMasks(masks.view(pairs, *size), exact)


# Per-image entries, in the order of the state dict: (image, unit, area) per non-empty mask and
# (image, unit, concept, value) per non-zero intersection; label rows are (image, [C] areas).
_MASK_FIELDS = ("mask_image", "mask_unit", "mask_area")
_INTER_FIELDS = ("inter_image", "inter_unit", "inter_concept", "inter_value")
_LABEL_FIELDS = ("label_image", "label_rows")
_ENTRY_FIELDS = _MASK_FIELDS + _INTER_FIELDS + _LABEL_FIELDS


def _empty_entries(concepts: int) -> dict[str, torch.Tensor]:
    entries = {name: torch.zeros(0, dtype=torch.int64) for name in _ENTRY_FIELDS}
    entries["label_rows"] = torch.zeros(0, concepts, dtype=torch.int64)
    return entries


@dataclass
class IoUTally:
    """Running sums for one layer: ``intersection[k, c]``, ``unit_area[k, c]`` (|M_k| on images
    containing c), ``label_area[c]`` (|L_c|) and ``images_with[c]``; with ``per_image`` (default)
    also every image's own terms of them (see the module docstring, :meth:`image_stats`).

    A :class:`~cxrsem.statistics.StreamingStatistic`: ``update(activations, thresholds, labels,
    image_offset=None)``, ``merge``, ``state_dict``/``from_state_dict``.  Parts that tally
    disjoint images merge exactly, per-image entries included, when each part was given the
    global row of its batches (``image_offset``)."""

    intersection: torch.Tensor
    unit_area: torch.Tensor
    label_area: torch.Tensor
    images_with: torch.Tensor
    # |M_k| summed over every image tallied (``unit_area`` counts only images holding the concept):
    # the denominator of the released code's "IoU over all images" (``--iou-over all``).  Complete
    # only when the batches were tallied with ``all_images=True``.
    unit_area_all: torch.Tensor = None  # type: ignore[assignment]
    upsampled_pairs: int = 0
    total_pairs: int = 0
    # Candidate pairs whose masks were re-decided in float64 (fast_unit_masks): a diagnostic of
    # the fast path, merged but not part of the state.
    exact_pairs: int = 0
    per_image: bool = True
    images: int = 0   # images tallied (the default offset of the next batch)
    # Per-image entries: a list of per-batch chunks, concatenated once when read (_entries()).
    _chunks: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)
    _dropped: str = field(default="", repr=False)  # why per-image entries were given up

    @classmethod
    def zeros(cls, units: int, concepts: int, device: torch.device | str = "cpu",
              per_image: bool = True) -> IoUTally:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=device)  # noqa: E731
        return cls(z(units, concepts), z(units, concepts), z(concepts), z(concepts), z(units),
                   per_image=per_image)

    def __post_init__(self) -> None:
        if self.unit_area_all is None:
            self.unit_area_all = torch.zeros(self.intersection.shape[0], dtype=torch.int64,
                                             device=self.intersection.device)

    KIND = "iou-tally"
    _COUNTS = ("intersection", "unit_area", "label_area", "images_with", "unit_area_all")

    def update(self, activations: torch.Tensor, thresholds: torch.Tensor,
               labels: torch.Tensor, image_offset: int | None = None,
               all_images: bool = False) -> BatchMasks | None:
        """Add one batch (see :func:`update_tally`); its images are the global rows
        ``image_offset ..`` (default: right after the images this tally has seen)."""
        return update_tally(self, activations, thresholds, labels, image_offset, all_images)

    def _entries(self) -> dict[str, torch.Tensor]:
        """The per-image entries, concatenated (once: the chunks are replaced by the result)."""
        concepts = self.intersection.shape[1]
        if len(self._chunks) != 1:
            chunks = self._chunks or [_empty_entries(concepts)]
            self._chunks = [{name: torch.cat([c[name] for c in chunks]) for name in _ENTRY_FIELDS}]
        return self._chunks[0]

    def merge(self, other: IoUTally) -> IoUTally:
        """Add another part's sums (a :class:`~cxrsem.statistics.StreamingStatistic`): every field
        is an integer sum, so any split merges to exactly one pass's tally.  Both parts must use
        the same thresholds; that is the caller's contract (they come from one merged quantile).
        Per-image entries are concatenated when the parts cover disjoint image rows; otherwise
        (or when a part has none) they are dropped and :meth:`image_stats` says why."""
        require_compatible(self.KIND, self._identity(), other._identity())
        if self.per_image and other.per_image:
            mine, theirs = self._entries(), other._entries()
            overlap = np.intersect1d(mine["label_image"].numpy(), theirs["label_image"].numpy())
            if overlap.size:
                self._drop_entries(f"merged parts both held image row {int(overlap[0])} "
                                   f"({overlap.size} rows in common): give each part the global "
                                   f"rows of its images (update's image_offset)")
            else:
                self._chunks = [mine, theirs]
        elif self.per_image:
            self._drop_entries(other._dropped or "merged with a part made without per-image entries")
        # The sums stay exact either way; only the per-image entries are lost.
        for name in self._COUNTS:
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))
        self.upsampled_pairs += other.upsampled_pairs
        self.total_pairs += other.total_pairs
        self.exact_pairs += other.exact_pairs
        self.images += other.images
        return self

    def _identity(self) -> dict:
        return {"units": self.intersection.shape[0], "concepts": self.intersection.shape[1]}

    def _drop_entries(self, why: str) -> None:
        self.per_image, self._chunks, self._dropped = False, [], why

    def state_dict(self) -> dict:
        state = {"kind": self.KIND, **{name: getattr(self, name) for name in self._COUNTS},
                 "upsampled_pairs": self.upsampled_pairs, "total_pairs": self.total_pairs,
                 "images": self.images}
        if self.per_image:
            state.update(self._entries())
        return state

    @classmethod
    def from_state_dict(cls, state) -> IoUTally:
        check_kind(cls.KIND, state)
        if "unit_area_all" not in state:  # a state written before the field existed
            state = {**state, "unit_area_all": torch.zeros(state["intersection"].shape[0],
                                                           dtype=torch.int64)}
        counts = [state[name].clone() for name in cls._COUNTS]
        units, concepts = counts[0].shape
        for name, tensor, shape in zip(cls._COUNTS, counts, [(units, concepts), (units, concepts),
                                                                (concepts,), (concepts,), (units,)],
                                       strict=True):
            if tuple(tensor.shape) != shape or tensor.dtype != torch.int64:
                raise StatisticMismatch(f"{cls.KIND} state: {name} is {tensor.dtype} "
                                        f"{tuple(tensor.shape)}, expected int64 {shape}")
        # A state without per-image entries (written before they existed) restores without them.
        per_image = all(name in state for name in _ENTRY_FIELDS)
        tally = cls(*counts, upsampled_pairs=int(state["upsampled_pairs"]),
                    total_pairs=int(state["total_pairs"]), per_image=per_image,
                    images=int(state.get("images", 0)))
        if per_image:
            entries = {name: state[name].detach().cpu().clone() for name in _ENTRY_FIELDS}
            for group in (_MASK_FIELDS, _INTER_FIELDS, _LABEL_FIELDS):
                lengths = {name: entries[name].shape[0] for name in group}
                bad = [n for n in group if entries[n].dtype != torch.int64
                       or entries[n].dim() != (2 if n == "label_rows" else 1)]
                if bad or len(set(lengths.values())) != 1:
                    raise StatisticMismatch(f"{cls.KIND} state: per-image entries {', '.join(group)}"
                                            f" must be int64 of one length, got {lengths}")
            if entries["label_rows"].shape[1] != concepts:
                raise StatisticMismatch(f"{cls.KIND} state: label_rows has "
                                        f"{entries['label_rows'].shape[1]} concepts, expected "
                                        f"{concepts}")
            tally._chunks = [entries]
        return tally

    def iou(self, over: str = "containing") -> np.ndarray:
        """IoU_kc as float64 ``[K, C]``; 0 where the union is empty (a concept never present).

        ``over="containing"`` (the paper's Eq. 5): unions over the images that contain c;
        ``"all"`` (the authors' released code): |M_k| over every image in the union (tally the
        batches with ``all_images=True``)."""
        return iou_of(self.intersection, self.unit_area_all[:, None] if over == "all"
                      else self.unit_area, self.label_area)

    def image_stats(self, concepts: list[str], num_images: int | None = None,
                    groups: np.ndarray | None = None,
                    group_names: list[str] | None = None) -> ImageStats:
        """The per-image terms as :class:`~cxrsem.statistics.imagestats.ImageStats` over image
        rows ``0..num_images-1`` (default: up to the largest row tallied; rows never tallied are
        empty).  Entries are sorted by (image, unit[, concept]), so any split into parts gives the
        same arrays as one pass."""
        if not self.per_image:
            raise StatisticMismatch(f"this {self.KIND} holds no per-image entries: "
                                    f"{self._dropped or 'it was made without them'}")
        if len(concepts) != self.intersection.shape[1]:
            raise ValueError(f"{len(concepts)} concept names for {self.intersection.shape[1]} "
                             f"concepts")
        e = {name: value.numpy() for name, value in self._entries().items()}
        seen = int(e["label_image"].max(initial=-1)) + 1
        n = seen if num_images is None else int(num_images)
        if seen > n:
            raise ValueError(f"the tally holds image row {seen - 1}, outside 0..{n - 1}")
        label_area = np.zeros((n, len(concepts)), dtype=np.int64)
        label_area[e["label_image"]] = e["label_rows"]
        mask_order = np.lexsort((e["mask_unit"], e["mask_image"]))
        inter_order = np.lexsort((e["inter_concept"], e["inter_unit"], e["inter_image"]))
        return ImageStats(
            num_units=int(self.intersection.shape[0]), concepts=list(concepts),
            label_area=label_area,
            **{name: e[name][mask_order] for name in _MASK_FIELDS},
            **{name: e[name][inter_order] for name in _INTER_FIELDS},
            groups=groups, group_names=list(group_names or []))


class BatchMasks(NamedTuple):
    """The unit masks one batch's tally computed (the expensive part), for statistics that reuse
    them (the shuffled-annotation null): the candidate pairs sorted by image, their masks as
    float32 ``[P, M*M]`` and the global row of the batch's first image."""

    image_idx: torch.Tensor   # [P] batch-local image of each pair
    unit_idx: torch.Tensor    # [P]
    masks: torch.Tensor       # [P, M*M] float32 (0/1)
    bounds: torch.Tensor      # [B + 1]: pairs of image b are bounds[b]:bounds[b+1]
    present: torch.Tensor     # [B, C] bool
    offset: int


def update_tally(tally: IoUTally, activations: torch.Tensor, thresholds: torch.Tensor,
                 labels: torch.Tensor, image_offset: int | None = None,
                 all_images: bool = False) -> BatchMasks | None:
    """Add one batch: ``activations [B, K, h, w]``, ``thresholds [K]`` (float64 T_k), ``labels
    [B, C, M, M]`` (bool concept masks at the annotation size); the batch's images are the global
    rows ``image_offset .. image_offset + B - 1`` (default: ``tally.images ..``).

    Returns the batch's unit masks (:class:`BatchMasks`; None when no mask is non-empty).
    ``all_images``: also upsample pairs on images holding no concept (their areas count in
    :attr:`IoUTally.unit_area_all`, the released code's IoU over all images)."""
    batch, _units, _, _ = activations.shape
    offset = tally.images if image_offset is None else int(image_offset)
    tally.images += batch
    size = labels.shape[-2:]
    flat_labels = labels.reshape(batch, labels.shape[1], -1)
    present = flat_labels.any(dim=2)                                 # [B, C]
    image_label_area = flat_labels.sum(dim=2)                        # [B, C]
    tally.label_area += image_label_area.sum(dim=0)
    tally.images_with += present.sum(dim=0)
    tally.total_pairs += batch * thresholds.numel()
    chunk = None
    if tally.per_image:
        chunk = {"label_image": torch.arange(offset, offset + batch, dtype=torch.int64),
                 "label_rows": image_label_area.to(device="cpu", dtype=torch.int64)}
        tally._chunks.append(chunk)

    maxima = activations.amax(dim=(2, 3)).double()                   # [B, K]
    candidates = maxima >= thresholds[None, :]
    if not all_images:
        # Pairs on images with no concept at all cannot contribute to any sum of Eq. 5.
        candidates &= present.any(dim=1, keepdim=True)
    image_idx, unit_idx = candidates.nonzero(as_tuple=True)
    if image_idx.numel() == 0:
        if chunk is not None:
            chunk.update({name: torch.zeros(0, dtype=torch.int64)
                          for name in _MASK_FIELDS + _INTER_FIELDS})
        return None
    tally.upsampled_pairs += image_idx.numel()

    fast = fast_unit_masks(activations[image_idx, unit_idx], thresholds[unit_idx], size)
    float_masks = fast.masks.flatten(1)                              # [P, M*M] 0/1
    tally.exact_pairs += fast.exact_pairs.numel()

    present_of_pair = present[image_idx].to(torch.int64)             # [P, C]
    concepts = present.shape[1]
    counts = torch.zeros(image_idx.numel(), concepts + 1, dtype=torch.int64,
                         device=image_idx.device)
    # Each image's labels plus a row of ones: the product's last column is the mask area.
    float_labels = torch.cat([flat_labels.to(torch.float32),
                              flat_labels.new_ones(batch, 1, flat_labels.shape[2],
                                                   dtype=torch.float32)], dim=1)
    # One small product per image (pairs are sorted by image): no loop over units or concepts.
    bounds = torch.searchsorted(image_idx, torch.arange(batch + 1, device=image_idx.device))
    for image in torch.unique_consecutive(image_idx).tolist():
        start, stop = int(bounds[image]), int(bounds[image + 1])
        product = float_masks[start:stop] @ float_labels[image].T    # [P_b, C + 1], exact integers
        counts[start:stop] = product.round().to(torch.int64)
    intersections, areas = counts[:, :concepts], counts[:, concepts]
    tally.unit_area.index_add_(0, unit_idx, areas[:, None] * present_of_pair)
    tally.unit_area_all.index_add_(0, unit_idx, areas)
    tally.intersection.index_add_(0, unit_idx, intersections)
    batch_masks = BatchMasks(image_idx, unit_idx, float_masks, bounds, present, offset)

    if chunk is not None:
        # Only the non-zero terms: an empty mask or intersection adds nothing to any sum.
        # One transfer per kind of entry (a device sync each on a GPU).
        nonempty = areas > 0
        pair, concept = intersections.nonzero(as_tuple=True)
        mask_rows = torch.stack([image_idx[nonempty], unit_idx[nonempty], areas[nonempty]])
        inter_rows = torch.stack([image_idx[pair], unit_idx[pair], concept,
                                  intersections[pair, concept]])
        mask_rows = mask_rows.to(device="cpu", dtype=torch.int64)
        inter_rows = inter_rows.to(device="cpu", dtype=torch.int64)
        mask_rows[0] += offset
        inter_rows[0] += offset
        chunk.update(zip(_MASK_FIELDS, mask_rows, strict=True))
        chunk.update(zip(_INTER_FIELDS, inter_rows, strict=True))
    return batch_masks
