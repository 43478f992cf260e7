"""``focal``: the sigmoid focal loss of Lin et al., "Focal Loss for Dense Object Detection" (2017).

Per label with logit z, target y in {0, 1}, p = sigmoid(z), p_t = p if y = 1 else 1 - p and
alpha_t = alpha if y = 1 else 1 - alpha (their Eq. 5)::

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)

gamma = 0 and no alpha weighting is plain binary cross-entropy; a larger gamma shrinks the loss of
labels the model already gets right, which is the point of the loss under heavy class imbalance.
The element-wise loss is torchvision's :func:`torchvision.ops.sigmoid_focal_loss` (numerically
stable: it goes through ``binary_cross_entropy_with_logits``); this module only adds cxrsem's
``target_mask`` rule: unknown labels contribute nothing, and the loss is the mean over known ones.
"""

from __future__ import annotations

import torch
from cxrsem.errors import UsageError
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss


class FocalLoss(nn.Module):
    """``loss(logits, targets, target_mask=None)``: sigmoid focal loss, mean over known labels."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        if gamma < 0:
            raise UsageError(f"loss 'focal': option 'gamma' must be >= 0, got {gamma}")
        if alpha > 1:
            raise UsageError(f"loss 'focal': option 'alpha' must be at most 1 (negative: no alpha "
                             f"weighting), got {alpha}")
        self.gamma = float(gamma)
        # torchvision accepts exactly -1 for "no weighting"; any negative value means that here.
        self.alpha = float(alpha) if alpha >= 0 else -1.0

    def forward(self, logits: Tensor, targets: Tensor, target_mask: Tensor | None = None) -> Tensor:
        if logits.shape != targets.shape or (target_mask is not None and target_mask.shape != targets.shape):
            raise UsageError(
                f"loss 'focal' needs logits, targets and target_mask of one shape, got "
                f"{tuple(logits.shape)}, {tuple(targets.shape)} and "
                f"{None if target_mask is None else tuple(target_mask.shape)}")
        if target_mask is None:
            known = torch.ones_like(logits, dtype=torch.bool)
        else:
            known = target_mask.to(device=logits.device, dtype=torch.bool)
        # Unknown targets may hold anything (NaN, -1): replace them before they reach the formula,
        # and zero their loss with where() so they send no gradient back either.
        y = torch.where(known, targets.to(logits.dtype), torch.zeros_like(logits))
        per_label = sigmoid_focal_loss(logits, y, alpha=self.alpha, gamma=self.gamma, reduction="none")
        per_label = torch.where(known, per_label, torch.zeros_like(per_label))
        # clamp: a batch with nothing known gives 0, still connected to the logits for backward().
        return per_label.sum() / known.sum().clamp(min=1)


def create_focal_loss(*, train_targets: Tensor | None = None, gamma: float = 2.0,
                      alpha: float = 0.25) -> FocalLoss:
    """Factory of ``focal`` (the ``LossInfo.factory`` signature; training targets are not needed)."""
    return FocalLoss(gamma=gamma, alpha=alpha)
