"""Unit ablation at the explained layer: do the units an attribution method ranks first matter?

For an image with activations ``A`` at layer ``L`` and the explained scalar ``f`` (the tail of the
split model, :class:`cxrsem.engine.split.Split`), with the units ranked by a method's scores
(``sum |s_k|``, the paper's unit contribution) and ``T_k`` the top-k units:

- **deletion**   ``d(k) = f(A) - f(A with the units T_k set to 0)`` -- what removing them costs;
- **insertion**  ``i(k) = f(A with only the units T_k kept) - f(0)`` -- what they carry alone;
- the same for ``R`` random sets of ``k`` units (drawn without replacement, seeded per image), the
  reference a method's ranking must beat.

``d(K) = f(A) - f(0)`` and ``i(0) = 0`` by construction.  Every ablation is one row of the tail:
the head runs once per image (the expensive part), then all ``2 (1 + R) |ks| + 2`` rows go through
the tail in batches, as the interpolation points of integrated gradients do.  ``ks`` larger than
the layer's unit count are capped at it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrsem.engine.split import Split
from cxrsem.errors import UsageError

DEFAULT_KS = (1, 2, 5, 10, 20)
DEFAULT_RANDOM = 10

ValuesFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AblationSettings:
    """Which ``ks`` to ablate, how many random draws per k, and their seed."""

    ks: tuple[int, ...] = DEFAULT_KS
    random_draws: int = DEFAULT_RANDOM
    seed: int = 0

    def validate(self) -> None:
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise UsageError(f"--ablate-k must list positive unit counts, got {list(self.ks)}")
        if self.random_draws < 0:
            raise UsageError(f"--ablate-random must be 0 or positive, got {self.random_draws}")

    def ks_for(self, units: int) -> list[int]:
        """The ks capped at ``units``, sorted, without duplicates."""
        return sorted({min(int(k), units) for k in self.ks})


def parse_ks(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,2,5"`` (or a sequence) -> ``(1, 2, 5)``, with a one-line error for anything else."""
    if not isinstance(text, str):
        return tuple(int(k) for k in text)
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--ablate-k must be comma-separated whole numbers, got {text!r}") from None


@dataclass
class ImageAblation:
    """One image's ablation curves (all float64 NumPy arrays over ``ks``)."""

    ks: list[int]
    f_input: float
    f_baseline: float
    deletion: np.ndarray            # [len(ks)]
    insertion: np.ndarray           # [len(ks)]
    random_deletion: np.ndarray     # [R, len(ks)]
    random_insertion: np.ndarray    # [R, len(ks)]

    def to_json(self, random_draws: int, seed: int) -> dict:
        def summary(draws: np.ndarray) -> dict:
            if draws.size == 0:
                return {"mean": [], "low": [], "high": []}
            return {"mean": [float(v) for v in draws.mean(axis=0)],
                    "low": [float(v) for v in draws.min(axis=0)],
                    "high": [float(v) for v in draws.max(axis=0)]}

        return {"ks": self.ks, "random_draws": random_draws, "seed": seed,
                "f_input": self.f_input, "f_baseline": self.f_baseline,
                "deletion": [float(v) for v in self.deletion],
                "insertion": [float(v) for v in self.insertion],
                "random_deletion": summary(self.random_deletion),
                "random_insertion": summary(self.random_insertion),
                "definition": "deletion(k) = f(A) - f(A, top-k units zeroed); insertion(k) = "
                              "f(A, only the top-k units kept) - f(0); random: the same for "
                              "random sets of k units (low/high: the smallest/largest draw)"}


def random_unit_sets(units: int, ks: Sequence[int], draws: int, seed: int, image: int
                     ) -> torch.Tensor:
    """``[R, len(ks), K]`` bool: draw ``r`` keeps a random set of ``k`` units (seeded by the
    run's seed and the image's position, so a batch size never changes the draws)."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(image))
    out = torch.zeros(draws, len(ks), units, dtype=torch.bool)
    for r in range(draws):
        order = torch.randperm(units, generator=generator)
        for j, k in enumerate(ks):
            out[r, j, order[:k]] = True
    return out


def top_unit_sets(scores: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """``[len(ks), K]`` bool: the ``k`` highest-scoring units (ties: the lower unit index)."""
    units = scores.shape[0]
    order = torch.argsort(-scores.detach().cpu().double(), stable=True)  # ties: lower unit first
    rank = torch.empty(units, dtype=torch.long)
    rank[order] = torch.arange(units)
    return rank[None, :] < torch.as_tensor(list(ks))[:, None]


def ablate_image(split: Split, activations: torch.Tensor, extras: tuple, image: int,
                 num_images: int, scores: torch.Tensor, values: ValuesFn, column: int,
                 settings: AblationSettings, batch_size: int, position: int) -> ImageAblation:
    """The ablation curves of image ``image`` of a head batch (``activations [N, K, h, w]`` and
    ``extras`` from ``split.head``), ranked by ``scores [K]``; ``position`` is the image's place in
    the whole run (it seeds the random draws)."""
    units = activations.shape[1]
    ks = settings.ks_for(units)
    top = top_unit_sets(scores, ks)                                          # [J, K]
    rand = random_unit_sets(units, ks, settings.random_draws, settings.seed, position)  # [R, J, K]
    keep = torch.cat([torch.ones(1, units, dtype=torch.bool), torch.zeros(1, units, dtype=torch.bool),
                      ~top, top, ~rand.reshape(-1, units), rand.reshape(-1, units)])
    a = activations[image]
    outputs = []
    for start in range(0, keep.shape[0], batch_size):
        rows = keep[start:start + batch_size].to(a.device)
        masked = a[None] * rows[:, :, None, None].to(a.dtype)
        index = torch.full((rows.shape[0],), image, dtype=torch.long, device=a.device)
        with torch.no_grad():
            logits = split.tail(masked, split.rows(extras, index, num_images))
        outputs.append(values(logits)[:, column].double().cpu())
    f = torch.cat(outputs).numpy()
    j, r = len(ks), settings.random_draws
    f_a, f_0 = float(f[0]), float(f[1])
    deleted, kept = f[2:2 + j], f[2 + j:2 + 2 * j]
    rand_deleted = f[2 + 2 * j:2 + 2 * j + r * j].reshape(r, j)
    rand_kept = f[2 + 2 * j + r * j:].reshape(r, j)
    return ImageAblation(ks, f_a, f_0, f_a - deleted, kept - f_0, f_a - rand_deleted,
                         rand_kept - f_0)
