"""Chance baselines computed inside the dissection's passes over the activation cache.

- :class:`ShuffledNull` (``--null shuffle[:P]``): the intersections of every permutation of the
  shuffled-annotation null (:func:`cxrsem.statistics.nulls.shuffled_partners`), from the unit
  masks the IoU tally has just upsampled for a batch (:class:`~cxrsem.dissection.tally.BatchMasks`):
  all P permutations in the same read of the cache, and no mask upsampled twice.  The partner
  labels come from the annotation store, held in memory (it is small: bits at the seg size).
  It also gives, at no extra cost, the *expected* intersection under a random pairing.
- :class:`RotatedBases` (``--null rotation[:R]``): the unit axis of the activations multiplied by
  random orthogonal matrices, thresholded by its own exact quantile streams in the threshold pass
  and tallied in the tally pass, alongside the real basis.

Both are streaming statistics (``update``, ``merge``, ``state_dict``) like the tally itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrsem.dissection.quantile import StreamingTopQuantile
from cxrsem.dissection.tally import BatchMasks, IoUTally, iou_of
from cxrsem.formats.dissection import is_detector
from cxrsem.statistics import check_kind, require_compatible
from cxrsem.statistics.nulls import benjamini_hochberg, count_summary, empirical_p


@dataclass
class ShuffledNull:
    """``intersection[p, k, c] = sum_x |M_k(x) & L_c(partner[p, c, x])|`` over the images x that
    hold c, and ``pooled[k, c] = sum_x |M_k(x) & S_c|`` with ``S_c`` the sum of the concept's masks
    over the images that hold it (the expected intersection under random pairing follows from it
    and the observed one: :meth:`expected_intersection`).

    ``labels`` ``[N, C, M*M]`` bool holds every image's masks (global rows); ``partners``
    ``[P, C, N]`` int64 the pairing of each permutation."""

    partners: torch.Tensor
    labels: torch.Tensor
    intersection: torch.Tensor   # [P, K, C] int64
    pooled: torch.Tensor         # [K, C] float64 (exact: integer sums below 2^53)
    label_sum: torch.Tensor      # [C, M*M] float32, S_c
    holders: torch.Tensor        # [C] images holding each concept

    KIND = "shuffled-null"

    @classmethod
    def create(cls, units: int, labels: torch.Tensor, partners: np.ndarray) -> ShuffledNull:
        """``labels [N, C, M, M]`` (or flattened) bool on the device of the computation."""
        labels = labels.reshape(labels.shape[0], labels.shape[1], -1).bool()
        device = labels.device
        partners_t = torch.as_tensor(partners, dtype=torch.int64, device=device)
        permutations, concepts, _ = partners_t.shape
        present = labels.any(dim=2)                                    # [N, C]
        label_sum = (labels.float() * present[:, :, None]).sum(dim=0)  # [C, M*M]
        return cls(partners_t, labels,
                   torch.zeros(permutations, units, concepts, dtype=torch.int64, device=device),
                   torch.zeros(units, concepts, dtype=torch.float64, device=device),
                   label_sum, present.sum(dim=0))

    @property
    def permutations(self) -> int:
        return int(self.partners.shape[0])

    def update(self, batch: BatchMasks | None) -> None:
        """Add the null terms of one tallied batch (the tally's own :class:`BatchMasks`)."""
        if batch is None:
            return
        permutations = self.permutations
        for image in torch.unique_consecutive(batch.image_idx).tolist():
            concepts = batch.present[image].nonzero(as_tuple=True)[0]
            if concepts.numel() == 0:
                continue
            start, stop = int(batch.bounds[image]), int(batch.bounds[image + 1])
            masks, units = batch.masks[start:stop], batch.unit_idx[start:stop]
            row = batch.offset + image
            partner = self.partners[:, concepts, row]                   # [P, Cx]
            paired = self.labels[partner, concepts[None, :]].float()   # [P, Cx, M*M]
            product = masks @ paired.reshape(-1, paired.shape[-1]).T    # [Pb, P*Cx], exact
            values = product.round().to(torch.int64).reshape(len(units), permutations, -1)
            index = (torch.arange(permutations, device=units.device)[None, :, None],
                     units[:, None, None], concepts[None, None, :])
            self.intersection.index_put_(index, values, accumulate=True)
            pooled = (masks @ self.label_sum[concepts].T).double()      # [Pb, Cx]
            self.pooled.index_put_((units[:, None], concepts[None, :]), pooled, accumulate=True)

    def merge(self, other: ShuffledNull) -> ShuffledNull:
        """Add another part's sums (parts over disjoint images, the same pairing)."""
        require_compatible(self.KIND, self._identity(), other._identity())
        self.intersection += other.intersection.to(self.intersection.device)
        self.pooled += other.pooled.to(self.pooled.device)
        return self

    def _identity(self) -> dict:
        return {"shape": tuple(self.intersection.shape),
                "partners": int(self.partners.sum()) if self.partners.numel() else 0}

    def state_dict(self) -> dict:
        return {"kind": self.KIND, "intersection": self.intersection, "pooled": self.pooled,
                "partners": self.partners}

    def load_sums(self, state) -> ShuffledNull:
        """Restore the sums of :meth:`state_dict` into this null (same labels and pairing)."""
        check_kind(self.KIND, state)
        require_compatible(self.KIND, self._identity(),
                           {"shape": tuple(state["intersection"].shape),
                            "partners": int(state["partners"].sum())})
        self.intersection = state["intersection"].clone()
        self.pooled = state["pooled"].clone()
        return self

    def null_iou(self, tally: IoUTally, over: str = "containing") -> np.ndarray:
        """``[P, K, C]`` IoUs under each permutation.  The unit areas and label areas of Eq. 5 are
        the observed ones: every partner is again an image that holds the concept."""
        return iou_of(self.intersection, _unit_area(tally, over), tally.label_area)

    def expected_intersection(self, tally: IoUTally) -> np.ndarray:
        """``E[I_kc]`` when each image's partner is uniform over the *other* images holding c
        (the marginal of the cyclic pairing): ``(sum_x <M_k(x), S_c> - I_kc) / (n_c - 1)``; the
        observed ``I_kc`` where ``n_c <= 1``."""
        pooled = self.pooled.cpu().numpy()
        observed = tally.intersection.cpu().numpy().astype(np.float64)
        others = self.holders.cpu().numpy().astype(np.float64)[None, :] - 1.0
        out = observed.copy()
        np.divide(pooled - observed, others, out=out, where=others > 0)
        return out

    def expected_iou(self, tally: IoUTally, over: str = "containing") -> np.ndarray:
        """``[K, C]``: the expected intersection over the union it implies (a ratio of
        expectations, not the expectation of the ratio: close to the null's mean IoU when the
        concept is on many images)."""
        return iou_of(self.expected_intersection(tally), _unit_area(tally, over), tally.label_area)


def _unit_area(tally: IoUTally, over: str) -> torch.Tensor:
    return tally.unit_area_all[:, None] if over == "all" else tally.unit_area


@dataclass
class RotatedBases:
    """The rotated-basis control: ``rotations [R, K, K]`` (float32, on the device), one exact
    quantile stream per rotation (threshold pass) and one IoU tally per rotation (tally pass)."""

    rotations: torch.Tensor
    streams: list[StreamingTopQuantile]
    tallies: list[IoUTally]

    @classmethod
    def create(cls, rotations: np.ndarray, values_per_unit: int, quantile: float, concepts: int,
               device: torch.device | str) -> RotatedBases:
        rotations_t = torch.as_tensor(np.asarray(rotations), dtype=torch.float32, device=device)
        units = rotations_t.shape[-1]
        return cls(rotations_t,
                   [StreamingTopQuantile(units, values_per_unit, quantile, device=device)
                    for _ in range(len(rotations_t))],
                   [IoUTally.zeros(units, concepts, device=device, per_image=False)
                    for _ in range(len(rotations_t))])

    def rotate(self, r: int, activations: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` activations in the basis of rotation ``r``."""
        return torch.einsum("jk,bkhw->bjhw", self.rotations[r], activations)

    def update_thresholds(self, activations: torch.Tensor) -> None:
        units = activations.shape[1]
        for r, stream in enumerate(self.streams):
            stream.update(self.rotate(r, activations).permute(1, 0, 2, 3).reshape(units, -1))

    def thresholds(self) -> list[torch.Tensor]:
        return [torch.from_numpy(stream.thresholds()).to(self.rotations.device)
                for stream in self.streams]

    def update_tallies(self, activations: torch.Tensor, thresholds: list[torch.Tensor],
                       labels: torch.Tensor, image_offset: int, all_images: bool = False) -> None:
        for r, tally in enumerate(self.tallies):
            tally.update(self.rotate(r, activations), thresholds[r], labels,
                         image_offset=image_offset, all_images=all_images)


# --- summaries for dissection.json -----------------------------------------------------------------


def _best(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best concept and its IoU per unit along the last axis (ties: the first concept)."""
    index = iou.argmax(axis=-1)
    return index, np.take_along_axis(iou, index[..., None], axis=-1)[..., 0]


def counts_per_concept(best_index: np.ndarray, detector: np.ndarray, concepts: int) -> np.ndarray:
    """Detectors per concept ``[..., C]`` from best concepts and detector flags ``[..., K]``."""
    flat_index = best_index.reshape(-1, best_index.shape[-1])
    flat_detector = detector.reshape(flat_index.shape)
    counts = np.zeros((flat_index.shape[0], concepts), dtype=np.int64)
    rows = np.repeat(np.arange(flat_index.shape[0]), flat_index.shape[1])
    np.add.at(counts, (rows, flat_index.ravel()), flat_detector.ravel().astype(np.int64))
    return counts.reshape(*best_index.shape[:-1], concepts)


PER_DRAW_LIMIT = 20  # nulls with at most this many draws list each draw's total


def count_block(counts: np.ndarray, concepts: list[str]) -> dict:
    """``{"draws", "detectors": {c: {mean, low, high}}, "num_detectors": {...}}`` of a null's
    per-draw counts ``[D, C]``; a null of few draws (random networks, rotations) also lists each
    draw's total (``num_detectors_per_draw``)."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, len(concepts))
    block = {"draws": int(counts.shape[0]),
             "detectors": {c: count_summary(counts[:, j]) for j, c in enumerate(concepts)},
             "num_detectors": count_summary(counts.sum(axis=1))}
    if counts.shape[0] <= PER_DRAW_LIMIT:
        block["num_detectors_per_draw"] = [int(v) for v in counts.sum(axis=1)]
    return block


def null_summary(iou: np.ndarray, tally: IoUTally, settings, shuffled: ShuffledNull | None,
                 rotated: RotatedBases | None, concepts: list[str], seed: int
                 ) -> tuple[dict, list[dict]]:
    """The ``nulls`` block of ``dissection.json`` and each unit's null fields.

    Shuffled null: each unit's best concept (by the observed IoU) is tested against that
    concept's IoUs under the P pairings (one-sided empirical p-value), the p-values of the
    paper-rule detectors are Benjamini-Hochberg adjusted (``p_adjusted`` is None for the other
    units), and a detector is *significant* when its adjusted p-value is at most
    ``settings.fdr``.  Per pairing, the detectors the paper's rule finds (each unit's best null IoU
    above the threshold) give the location prior's expected count.  Rotation: detectors
    per concept in each rotated basis."""
    threshold = settings.iou_threshold
    best_index, best_iou = _best(iou)
    detector = is_detector(best_iou, threshold)
    block: dict = {"fdr": settings.fdr, "iou_threshold": threshold}
    units: list[dict] = [{} for _ in range(len(best_iou))]
    if shuffled is not None:
        null = shuffled.null_iou(tally, settings.iou_over)                  # [P, K, C]
        at_best = np.take_along_axis(null, best_index[None, :, None], axis=2)[:, :, 0]
        p = empirical_p(best_iou, at_best)
        # The family is the paper-rule detectors (the claims being tested): with P permutations
        # no p-value is below 1 / (P + 1), so Benjamini-Hochberg over every unit of a wide layer
        # (m = 1024) could never reach a discovery, however strong.
        adjusted = np.full(len(p), np.nan)
        adjusted[detector] = benjamini_hochberg(p[detector])
        significant = detector & (np.nan_to_num(adjusted, nan=1.0) <= settings.fdr)
        expected = shuffled.expected_iou(tally, settings.iou_over)[np.arange(len(best_iou)), best_index]
        null_index, null_best = _best(null)
        null_counts = counts_per_concept(null_index, is_detector(null_best, threshold), len(concepts))
        block["shuffle"] = {
            "permutations": shuffled.permutations, "seed": seed,
            "pairing": "per concept, the images holding it in a random cyclic order, each paired "
                       "with the next (no image keeps its own annotation)",
            "test": "one-sided empirical p of each unit's best concept, (1 + #{null >= observed}) "
                    "/ (1 + permutations); Benjamini-Hochberg over the paper-rule detectors",
            "tested": int(detector.sum()),
            "smallest_p": 1.0 / (shuffled.permutations + 1),
            "significant": {c: int(((best_index == j) & significant).sum())
                            for j, c in enumerate(concepts)},
            "num_significant": int(significant.sum()),
            **count_block(null_counts, concepts),
        }
        for k, unit in enumerate(units):
            unit.update({"p_value": float(p[k]),
                         "p_adjusted": None if np.isnan(adjusted[k]) else float(adjusted[k]),
                         "significant": bool(significant[k]),
                         "expected_iou": round(float(expected[k]), 8),
                         "null_iou_mean": round(float(at_best[:, k].mean()), 8)})
    if rotated is not None:
        per_rotation = []
        for tally_r in rotated.tallies:
            index_r, best_r = _best(tally_r.iou(settings.iou_over))
            per_rotation.append(counts_per_concept(index_r, is_detector(best_r, threshold), len(concepts)))
        block["rotation"] = {"rotations": len(per_rotation), "seed": seed,
                             "basis": "unit axis multiplied by a Haar-random orthogonal matrix, "
                                      "re-thresholded at the same quantile",
                             # Rotated units are denser: more (image, unit) pairs reach T_k and
                             # are upsampled than in the real basis (the cost of this null).
                             "upsampled_fraction": float(np.mean(
                                 [t.upsampled_pairs / max(t.total_pairs, 1) for t in rotated.tallies])),
                             **count_block(np.stack(per_rotation), concepts)}
    return block, units


def definitions_summary(iou: np.ndarray, paper_iou: np.ndarray, concepts: list[str], settings
                        ) -> dict:
    """How the detectors of a variant definition (``settings``) and of the paper's (Sec. 2.2:
    q = 0.005 over all images, IoU over the images holding the concept, one mask per concept)
    differ on the same model at the same IoU threshold: the paper's counts and the units that
    move."""
    from cxrsem.formats.dissection import DEFAULT_QUANTILE

    threshold = settings.iou_threshold
    here_index, here_iou = _best(iou)
    paper_index, paper_best = _best(paper_iou)
    here, paper = is_detector(here_iou, threshold), is_detector(paper_best, threshold)
    paper_counts = counts_per_concept(paper_index, paper, len(concepts))
    return {
        "this": {"quantile": settings.quantile, "quantile_sample": settings.quantile_sample,
                 "iou_over": settings.iou_over, "merge_concepts": settings.merge_concepts},
        "paper": {"quantile": DEFAULT_QUANTILE, "quantile_sample": 0, "iou_over": "containing",
                  "merge_concepts": False},
        "paper_detectors": {c: int(paper_counts[j]) for j, c in enumerate(concepts)},
        "paper_num_detectors": int(paper.sum()),
        "only_this": [int(k) for k in np.flatnonzero(here & ~paper)],
        "only_paper": [int(k) for k in np.flatnonzero(paper & ~here)],
        "relabelled": [int(k) for k in np.flatnonzero(here & paper & (here_index != paper_index))],
    }
