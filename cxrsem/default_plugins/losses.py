"""Built-in training losses of Khakzar et al. (MICCAI 2021), section 2.1.

Every loss is an ``nn.Module`` called as ``loss(logits, targets, target_mask=None) -> scalar``.
``target_mask`` (bool, same shape as ``targets``) is False where a label is unknown (e.g. CheXpert
"U-Ignore"): such labels contribute nothing to the loss and are not counted in any batch statistic
(the beta of Eq. 1).  Their target value may be anything (NaN, -1, ...); it is never read.

Reductions, chosen so that every loss is a mean over *samples* and therefore does not change scale
with the batch size:

- BCE (Eq. 1): summed over the classes of a sample, as in the equation, then averaged over the
  samples that have at least one known label (for an unmasked batch: over the whole batch).
- MSE (Eq. 2): averaged over the samples whose score is known (the 1/N of the equation).
- SCCE + MAE (Eq. 3, 4): averaged over every known (sample, zone) pair (the 1/C of the equations,
  then the batch mean).

A batch in which nothing is known gives a loss of exactly 0 that is still connected to the logits
(so ``backward()`` works and yields zero gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrsem.components import LossInfo, Option
from cxrsem.errors import DataError, UsageError
from cxrsem.hookspecs import hookimpl
from cxrsem.tasks import ZONE_CLASSES, known_labels, zone_logits

__all__ = [
    "BCELoss",
    "MSELoss",
    "MAESCCELoss",
    "batch_beta",
    "score_weights",
    "register_losses",
]


def _check_shapes(name: str, logits: Tensor, targets: Tensor, target_mask: Tensor | None) -> None:
    if logits.shape != targets.shape:
        raise UsageError(
            f"loss {name!r} needs logits and targets of the same shape, got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )
    _check_mask_shape(name, targets, target_mask)


def _check_mask_shape(name: str, targets: Tensor, target_mask: Tensor | None) -> None:
    if target_mask is not None and target_mask.shape != targets.shape:
        raise UsageError(
            f"loss {name!r}: target_mask has shape {tuple(target_mask.shape)}, "
            f"expected {tuple(targets.shape)} like the targets"
        )


def batch_beta(targets: Tensor, known: Tensor) -> Tensor:
    """Eq. 1's beta per class: #negative / #positive known labels of that class in the batch.

    ``targets`` and ``known`` are ``[B, C]``; returns ``[C]``.  A class without a known positive
    in the batch gets beta = 1: its positive term is zero anyway, so the value only avoids 0/0.
    A class with positives but no negatives gets beta = 0, exactly as Eq. 1 defines it (that class
    then contributes nothing in this batch).  Beta is a batch statistic of the labels and carries
    no gradient.
    """
    with torch.no_grad():
        pos = ((targets > 0.5) & known).sum(dim=0).to(torch.float32)
        neg = ((targets <= 0.5) & known).sum(dim=0).to(torch.float32)
        beta = torch.where(pos > 0, neg / pos.clamp(min=1.0), torch.ones_like(pos))
    return beta


class BCELoss(nn.Module):
    """Binary cross-entropy of Eq. 1 on logits z, optionally with the per-batch beta.

    ``L = -sum_c [beta_c y_c log sigmoid(z_c) + (1 - y_c) log(1 - sigmoid(z_c))]`` per sample,
    averaged over the samples with at least one known label.  With ``weighted=False`` beta = 1
    (plain BCE); with ``weighted=True`` beta_c = #neg / #pos of class c among the known labels of
    the batch (:func:`batch_beta`).  Computed with ``logsigmoid`` so large logits never overflow.
    """

    def __init__(self, *, weighted: bool = False, name: str = "bce") -> None:
        super().__init__()
        self.weighted = weighted
        self.name = name

    def forward(self, logits: Tensor, targets: Tensor, target_mask: Tensor | None = None) -> Tensor:
        _check_shapes(self.name, logits, targets, target_mask)
        if logits.dim() == 1:  # a bare [B] binary head: treat as one class
            logits, targets = logits[:, None], targets[:, None]
            target_mask = None if target_mask is None else target_mask[:, None]
        known = known_labels(targets, target_mask)
        y = torch.where(known, targets.to(logits.dtype), torch.zeros((), dtype=logits.dtype,
                                                                       device=logits.device))
        # -log sigmoid(z) and -log(1 - sigmoid(z)) = -log sigmoid(-z), both stable for any z.
        pos_term = -y * F.logsigmoid(logits)
        neg_term = -(1.0 - y) * F.logsigmoid(-logits)
        if self.weighted:
            beta = batch_beta(y, known).to(device=logits.device, dtype=logits.dtype)
            pos_term = pos_term * beta
        per_label = torch.where(known, pos_term + neg_term, torch.zeros_like(pos_term))
        samples = known.flatten(1).any(dim=1).sum().clamp(min=1)
        return per_label.sum() / samples


class MSELoss(nn.Module):
    """(Weighted) mean squared error of Eq. 2 for the global severity score.

    ``L = 1/N sum_n beta_n (f(x_n) - y_n)^2`` over the N samples with a known score.  Without
    ``weights`` beta = 1.  With ``weights`` (a :func:`score_weights` table) beta_n is the weight of
    the sample's score rounded to the nearest integer; a score outside the table gets weight 1.
    """

    def __init__(self, *, weights: dict[int, float] | None = None, name: str = "mse") -> None:
        super().__init__()
        self.name = name
        self.weights = dict(weights) if weights is not None else None
        if self.weights:
            low, high = min(self.weights), max(self.weights)
            table = torch.ones(high - low + 1)
            for score, weight in self.weights.items():
                table[score - low] = weight
            self._low, self._high = low, high
            self.register_buffer("table", table, persistent=False)

    def sample_weights(self, targets: Tensor) -> Tensor:
        """beta_n of Eq. 2 for each target (1 everywhere when unweighted)."""
        if not self.weights:
            return torch.ones_like(targets)
        scores = torch.nan_to_num(targets.detach(), nan=float("inf")).round()
        inside = (scores >= self._low) & (scores <= self._high)
        index = torch.where(inside, scores - self._low, torch.zeros_like(scores)).long()
        table = self.table.to(device=targets.device, dtype=targets.dtype)
        return torch.where(inside, table[index], torch.ones_like(targets))

    def forward(self, logits: Tensor, targets: Tensor, target_mask: Tensor | None = None) -> Tensor:
        _check_shapes(self.name, logits, targets, target_mask)
        known = known_labels(targets, target_mask)
        y = torch.where(known, targets.to(logits.dtype), logits.detach())
        beta = self.sample_weights(y)
        per_sample = torch.where(known, beta * (logits - y) ** 2, torch.zeros_like(logits))
        return per_sample.sum() / known.sum().clamp(min=1)


def score_weights(train_targets: Tensor) -> dict[int, float]:
    """Eq. 2's beta for weighted MSE: inverse training-set frequency of each integer score.

    Scores are rounded to integers; weight(s) = count(rarest seen score) / count(s), i.e. the
    inverse frequency normalised so the largest weight (the rarest score) is 1, as in the paper's
    reference code.  Non-finite targets are ignored.
    """
    flat = torch.as_tensor(train_targets).detach().reshape(-1).to(torch.float64)
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        raise UsageError("weighted-mse needs at least one finite training target to weight by")
    scores, counts = flat.round().long().unique(return_counts=True)
    rarest = counts.min().item()
    return {int(s): rarest / int(c) for s, c in zip(scores.tolist(), counts.tolist(), strict=True)}


class MAESCCELoss(nn.Module):
    """BrixIA 6-zone loss: ``alpha * SCCE + (1 - alpha) * MAE^d`` (Eq. 3 and Eq. 4).

    The logits ``[B, 24]`` are read as ``[B, 6, 4]`` (zone, severity 0..3) and the targets are
    ``long [B, 6]``.  Per known (sample, zone):

    - SCCE (Eq. 3): ``-log softmax(z)_y``, the cross-entropy of the true severity class;
    - MAE^d (Eq. 4): ``|y - sum_k k softmax(z)_k|``, the distance to the expected severity under the
      softmax, which unlike an argmax is differentiable.

    Both are averaged over the known (sample, zone) pairs.  The mixing follows the paper's reference
    code (CAMP-eXplain-AI/CheXplain-Dissection, ``src/models/train.py``, ``train_brixia``:
    ``loss = alpha * loss_scce + (1 - alpha) * loss_mae``), which configures ``alpha = 0.7`` in
    ``main.py``.  The paper writes the sum ``L_SCCE + L_MAE^d``, i.e. equal weights up to a factor 2
    (``alpha = 0.5``).  Note that the reference code computes its MAE term with an argmax, which has
    no gradient; here Eq. 4's expectation is used as the paper defines it.
    """

    def __init__(self, *, alpha: float = 0.7, name: str = "mae-scce") -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"loss {name!r}: option 'alpha' must lie in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.name = name

    def forward(self, logits: Tensor, targets: Tensor, target_mask: Tensor | None = None) -> Tensor:
        zl = zone_logits(logits)
        if zl.shape[:2] != targets.shape or zl.shape[-1] != ZONE_CLASSES:
            raise UsageError(
                f"loss {self.name!r} needs logits [B, zones*{ZONE_CLASSES}] and targets "
                f"[B, zones], "
                f"got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}"
            )
        _check_mask_shape(self.name, targets, target_mask)
        known = known_labels(targets, target_mask)
        y = torch.where(known, targets, torch.zeros_like(targets)).long()
        if bool(((y < 0) | (y >= ZONE_CLASSES)).any()):
            raise DataError(
                f"loss {self.name!r}: zone targets must be integers in 0..{ZONE_CLASSES - 1}, "
                f"got values in {int(y.min())}..{int(y.max())}"
            )
        log_probs = F.log_softmax(zl, dim=-1)
        scce = -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        classes = torch.arange(ZONE_CLASSES, dtype=log_probs.dtype, device=log_probs.device)
        expected = log_probs.exp() @ classes
        mae = (y.to(expected.dtype) - expected).abs()
        per_zone = self.alpha * scce + (1.0 - self.alpha) * mae
        per_zone = torch.where(known, per_zone, torch.zeros_like(per_zone))
        return per_zone.sum() / known.sum().clamp(min=1)


def _bce_factory(*, train_targets: Tensor | None = None) -> nn.Module:
    return BCELoss(weighted=False, name="bce")


def _weighted_bce_factory(*, train_targets: Tensor | None = None) -> nn.Module:
    return BCELoss(weighted=True, name="weighted-bce")


def _weak_bce_factory(*, train_targets: Tensor | None = None, weighted: bool = False) -> nn.Module:
    return BCELoss(weighted=weighted, name="weak-bce")


def _mse_factory(*, train_targets: Tensor | None = None) -> nn.Module:
    return MSELoss(name="mse")


def _weighted_mse_factory(*, train_targets: Tensor | None = None) -> nn.Module:
    if train_targets is None:
        raise UsageError(
            "loss 'weighted-mse' weights each score by its training-set frequency and needs the "
            "training targets (train_targets); the dataset did not provide them"
        )
    return MSELoss(weights=score_weights(train_targets), name="weighted-mse")


def _mae_scce_factory(*, train_targets: Tensor | None = None, alpha: float = 0.7) -> nn.Module:
    return MAESCCELoss(alpha=alpha, name="mae-scce")


@hookimpl
def register_losses(register) -> None:
    register(LossInfo(
        name="bce",
        factory=_bce_factory,
        tasks=("multilabel", "binary"),
        description="Binary cross-entropy (Eq. 1 with beta = 1), summed over classes.",
    ))
    register(LossInfo(
        name="weighted-bce",
        factory=_weighted_bce_factory,
        tasks=("multilabel", "binary"),
        description="Eq. 1: BCE with beta = #neg/#pos per class in the batch.",
    ))
    register(LossInfo(
        name="mse",
        factory=_mse_factory,
        tasks=("global-score",),
        description="Mean squared error on the global severity score (Eq. 2 with beta = 1).",
    ))
    register(LossInfo(
        name="weighted-mse",
        factory=_weighted_mse_factory,
        tasks=("global-score",),
        description="Eq. 2: MSE weighted by the inverse training frequency of each score.",
    ))
    register(LossInfo(
        name="mae-scce",
        factory=_mae_scce_factory,
        tasks=("zones",),
        options=(
            Option("alpha", float, 0.7,
                   "weight of SCCE (Eq. 3); MAE^d (Eq. 4) gets 1 - alpha (reference code)"),
        ),
        description="BrixIA 6-zone loss: alpha * SCCE + (1 - alpha) * MAE^d (Eq. 3, 4).",
    ))
    register(LossInfo(
        name="weak-bce",
        factory=_weak_bce_factory,
        tasks=("binary",),
        options=(
            Option("weighted", bool, False, "apply Eq. 1's per-batch beta = #neg/#pos"),
        ),
        description="Healthy/unhealthy BCE for weakly labelled data (Eq. 1, beta optional).",
    ))
