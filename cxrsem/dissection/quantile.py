"""Exact per-unit quantile thresholds from a stream of activations, in bounded memory.

Network Dissection (paper Sec. 2.2) thresholds unit k at T_k with P(f_k > T_k) = q over *all*
activation values of the unit over the dissection set.  We take T_k as the empirical
(1 - q)-quantile with the inverse-CDF rule, ``numpy.quantile(values, 1 - q, method="inverted_cdf")``:
the smallest activation value v with P(f_k <= v) >= 1 - q, so at most a fraction q of values lie
above it (exactly q when n(1 - q) is an integer and values are distinct).  Unlike interpolating
rules it is a function of the empirical distribution alone, so duplicating the dataset leaves every
threshold, and hence every IoU, unchanged.

T_k only depends on the ``n - index`` largest values of the unit, so keeping that many per unit
while activations stream past gives the exact threshold without holding the dataset in memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cxrsem.errors import UsageError
from cxrsem.statistics import StatisticMismatch, check_kind, require_compatible

# Recorded in dissection.json (settings.quantile_on): what T_k is the quantile of, and by which rule.
QUANTILE_RULE = ("raw activations of the unit over all its spatial positions and images "
                 "(as in the paper), numpy.quantile(values, 1 - q, method='inverted_cdf')")


def quantile_index(n: int, quantile: float) -> int:
    """0-based position in the ascending sort of T = ``np.quantile(v, 1 - q, method="inverted_cdf")``,
    computed with NumPy's own floating-point steps so the two agree exactly."""
    if not 0.0 < quantile < 1.0:
        raise UsageError(f"--quantile must be in (0, 1), got {quantile}")
    virtual = n * (1.0 - quantile) - 1
    previous = math.floor(virtual)
    index = previous if virtual - previous == 0 else previous + 1
    return min(max(index, 0), n - 1)


class StreamingTopQuantile:
    """Per-unit exact threshold over ``n`` values per unit, fed in batches of ``[K, m]``.

    A :class:`~cxrsem.statistics.StreamingStatistic`: to split the data, give every part the full
    ``n`` (so ``index`` and ``keep`` are those of the whole) and merge; ``seen`` adds up.  The
    ``keep`` largest values of the whole are the ``keep`` largest of the parts' kept values, so the
    merged thresholds equal one pass's bit for bit.
    """

    KIND = "streaming-top-quantile"

    def __init__(self, units: int, n: int, quantile: float, device: torch.device | str = "cpu") -> None:
        if n < 1:
            raise UsageError("no activation values to take a quantile of")
        self.n = n
        self.quantile = float(quantile)
        self.index = quantile_index(n, quantile)
        self.keep = n - self.index  # the threshold is the smallest of the `keep` largest values
        self.top = torch.empty(units, 0, device=device)
        self.seen = 0

    def update(self, values: torch.Tensor) -> None:
        self.seen += values.shape[1]
        self._add(values)

    def _add(self, values: torch.Tensor) -> None:
        merged = torch.cat([self.top, values.to(self.top.dtype)], dim=1)
        if merged.shape[1] > self.keep:
            merged = torch.topk(merged, self.keep, dim=1, largest=True, sorted=False).values
        self.top = merged

    def merge(self, other: StreamingTopQuantile) -> StreamingTopQuantile:
        require_compatible(self.KIND, self._identity(), other._identity())
        if self.seen + other.seen > self.n:
            raise StatisticMismatch(f"cannot merge {self.KIND} statistics: {self.seen} + "
                                    f"{other.seen} values per unit exceed n = {self.n}")
        self.seen += other.seen
        self._add(other.top.to(self.top.device))
        return self

    def _identity(self) -> dict:
        return {"units": self.top.shape[0], "n": self.n, "index": self.index, "keep": self.keep}

    def state_dict(self) -> dict:
        return {"kind": self.KIND, "n": self.n, "quantile": self.quantile, "index": self.index,
                "keep": self.keep, "seen": self.seen, "top": self.top}

    @classmethod
    def from_state_dict(cls, state) -> StreamingTopQuantile:
        check_kind(cls.KIND, state)
        top = state["top"]
        stream = cls(top.shape[0], int(state["n"]), float(state["quantile"]), device=top.device)
        require_compatible(cls.KIND, stream._identity(),
                           {"units": top.shape[0], "n": int(state["n"]),
                            "index": int(state["index"]), "keep": int(state["keep"])})
        stream.top = top.clone()
        stream.seen = int(state["seen"])
        return stream

    def thresholds(self) -> np.ndarray:
        """Float64 ``[K]``; each is one of the unit's own activation values."""
        if self.seen != self.n:
            raise RuntimeError(f"expected {self.n} values per unit, got {self.seen}")
        return self.top.min(dim=1).values.double().cpu().numpy()

    def threshold_at(self, quantile: float) -> np.ndarray:
        """T_k for another ``quantile`` not above this stream's: the kept values are the unit's
        ``keep`` largest, so they hold the fewer largest ones that quantile needs -- one stream
        serves a whole grid of quantiles, exactly (the same values a stream of its own gives)."""
        if self.seen != self.n:
            raise RuntimeError(f"expected {self.n} values per unit, got {self.seen}")
        keep = self.n - quantile_index(self.n, quantile)
        if keep > self.keep:
            raise UsageError(f"quantile {quantile} needs the {keep} largest values per unit; this "
                             f"stream keeps {self.keep}")
        return torch.topk(self.top, keep, dim=1).values.min(dim=1).values.double().cpu().numpy()
