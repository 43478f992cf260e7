"""The four task kinds of the paper (section 2.1 and 3) and how a model head maps to predictions.

Task kinds are part of the checkpoint contract, so they are fixed here rather than plugins:

===============  =============================  ===========  ==================================
kind             target per sample              head size    prediction per output
===============  =============================  ===========  ==================================
multilabel       float ``[C]`` in {0, 1}         C            sigmoid(logit)
binary           float ``[1]`` (1 = unhealthy)   1            sigmoid(logit)
global-score     float ``[1]`` in 0..18          1            the raw output (a regression)
zones            long ``[6]`` in 0..3            6 x 4        expected score under the softmax
===============  =============================  ===========  ==================================
"""

from __future__ import annotations

import torch

from cxrsem.errors import UsageError

ZONE_NAMES = ["A", "B", "C", "D", "E", "F"]  # BrixIA zones: A-C right lung (image left), D-F left
ZONE_CLASSES = 4  # severity 0..3 per zone


def check_kind(kind: str) -> str:
    from cxrsem.components import TASK_KINDS

    if kind not in TASK_KINDS:
        raise UsageError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    return kind


def head_size(kind: str, num_outputs: int) -> int:
    """Number of logits the model head needs for ``num_outputs`` named outputs."""
    return num_outputs * ZONE_CLASSES if check_kind(kind) == "zones" else num_outputs


def known_labels(targets: torch.Tensor, target_mask: torch.Tensor | None) -> torch.Tensor:
    """Bool mask of the labels that are known (``target_masks`` contract: False = unknown)."""
    if target_mask is None:
        return torch.ones_like(targets, dtype=torch.bool)
    return target_mask.to(device=targets.device, dtype=torch.bool)


def zone_logits(logits: torch.Tensor) -> torch.Tensor:
    """View a zones head ``[B, 6*4]`` as ``[B, 6, 4]`` (zone, severity class)."""
    return logits.reshape(logits.shape[0], -1, ZONE_CLASSES)


def expected_zone_score(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4's differentiable score: sum_c c * softmax(logits)_c per zone -> ``[B, 6]``."""
    probs = torch.softmax(zone_logits(logits), dim=-1)
    classes = torch.arange(ZONE_CLASSES, dtype=probs.dtype, device=probs.device)
    return probs @ classes


def predict(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Map raw head outputs to one prediction per named output (``[B, num_outputs]``)."""
    kind = check_kind(kind)
    if kind in ("multilabel", "binary"):
        return torch.sigmoid(logits)
    if kind == "zones":
        return expected_zone_score(logits)
    return logits


def target_function(kind: str, index: int):
    """The scalar a semantic attribution explains for output ``index``: a function ``logits -> [B]``.

    Classification tasks explain the logit (as the paper does); regression the score itself; the
    zones task the zone's expected score (Eq. 4), which is what a severity reader cares about.
    """
    kind = check_kind(kind)
    if kind == "zones":
        return lambda logits: expected_zone_score(logits)[:, index]
    return lambda logits: logits[:, index]
