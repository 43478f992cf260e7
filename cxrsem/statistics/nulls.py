"""Chance baselines for Network Dissection: what IoUs and detector counts chance alone gives.

Three nulls (``cxrsem dissect --null ...``; definitions in ``docs/dissection.md``):

- **shuffled annotations** (the location prior): each image's unit masks are paired with the
  concept masks of *another* image that contains the concept.  Per concept and permutation the
  images holding it are put in a random cyclic order and each is paired with the next one
  (:func:`shuffled_partners`): a derangement, so no image keeps its own annotation, and every
  other image is equally likely as a partner.  The pairing keeps the unit's spatial statistics and
  the annotation's (where in a radiograph the heart or a lung sits), and breaks only their
  correspondence image by image -- a unit that merely fires where the heart usually is keeps its
  IoU under it.  Because the partner of each image is again an image holding the concept, the
  unit and label areas of Eq. 5 are unchanged; only the intersections change.
- **rotated basis** (Bau et al. 2017): the cached activations' unit axis is multiplied by a random
  orthogonal matrix (:func:`random_rotation`), re-thresholded and re-tallied.
- **random networks**: freshly initialised models of the checkpoint's architecture.

Empirical p-values count the observed value among the null ones (:func:`empirical_p`), and
:func:`benjamini_hochberg` controls the false-discovery rate over units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrsem.errors import UsageError
from cxrsem.statistics.bootstrap import interval


def shuffled_partners(present: np.ndarray, permutations: int, seed: int) -> np.ndarray:
    """``partner[p, c, x]``: the image whose concept-``c`` mask image ``x`` is paired with in
    permutation ``p`` (int64 ``[P, C, N]``; ``-1`` where ``x`` does not hold ``c``).

    Per (permutation, concept), the ``n_c`` images holding ``c`` are put in a random order and
    each is paired with the next (the last with the first): a single cycle, so for ``n_c >= 2`` no
    image keeps its own mask and the partner of an image is uniform over the ``n_c - 1`` others.
    A concept on one image only has no other image to pair with: it keeps its own (its null equals
    the observed value; its p-value is 1).  Seeded: the same ``seed`` gives the same pairings."""
    present = np.asarray(present, dtype=bool)
    n, concepts = present.shape
    partners = np.full((permutations, concepts, n), -1, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5EED])
    for c in range(concepts):
        holders = np.flatnonzero(present[:, c])
        for p in range(permutations):
            order = rng.permutation(holders)
            partners[p, c, order] = np.roll(order, -1)
    return partners


def identity_partners(present: np.ndarray, permutations: int = 1) -> np.ndarray:
    """Every image paired with its own masks: the null that must reproduce the real IoUs."""
    present = np.asarray(present, dtype=bool)
    rows = np.where(present.T, np.arange(present.shape[0])[None, :], -1)
    return np.repeat(rows[None], permutations, axis=0).astype(np.int64)


def random_rotation(units: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal ``[K, K]`` matrix (QR of a Gaussian matrix with the signs of R's
    diagonal folded into Q, so the distribution is uniform over the orthogonal group)."""
    rng = np.random.default_rng([int(seed), 0x0DD])
    q, r = np.linalg.qr(rng.standard_normal((units, units)))
    return q * np.sign(np.diag(r))[None, :]


def empirical_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p-values ``(1 + #{null >= observed}) / (1 + P)`` for ``observed [K]`` against
    ``null [P, K]`` (the observed value counts as one draw of the null: never 0)."""
    null = np.asarray(null, dtype=np.float64)
    at_least = (null >= np.asarray(observed, dtype=np.float64)[None, :]).sum(axis=0)
    return (1.0 + at_least) / (1.0 + null.shape[0])


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up; monotone; at most 1): reject where the
    adjusted value is at most the false-discovery rate."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def count_summary(samples: np.ndarray) -> dict[str, float]:
    """``{"mean", "low", "high"}`` of a null's counts: the mean and the 95% range of the draws
    (observed values, as the bootstrap's intervals; with few draws, the smallest and largest)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    low, high = interval(samples, 0.95)
    return {"mean": float(samples.mean()), "low": float(low), "high": float(high)}


# --- the --null option ---------------------------------------------------------------------------

NULL_KINDS = {"shuffle": 100, "random-init": 5, "rotation": 1}  # kind -> default repetitions


def parse_null(spec: str) -> tuple[str, int]:
    """``"shuffle"``, ``"random-init:5"``, ``"rotation:2"`` -> ``(kind, repetitions)``."""
    kind, _, count = str(spec).strip().partition(":")
    if kind not in NULL_KINDS:
        raise UsageError(f"--null {spec!r}: unknown null {kind!r}; choose from "
                         f"{', '.join(NULL_KINDS)} (optionally :N)")
    if not count:
        return kind, NULL_KINDS[kind]
    try:
        value = int(count)
    except ValueError:
        raise UsageError(f"--null {spec!r}: the count after ':' must be a whole number") from None
    if value < 1:
        raise UsageError(f"--null {spec!r}: the count must be at least 1")
    return kind, value
