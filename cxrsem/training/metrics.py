"""Validation metrics per task kind (see :mod:`cxrsem.tasks`), computed with torchmetrics.

:func:`compute_metrics` returns a flat ``{name: float}`` dict whose values are always finite Python
floats, so it can go straight into a checkpoint or JSON.  A metric that is undefined on the given
data (an AUROC over one label value, a global MAE without fully known samples) is *omitted* rather
than reported as NaN; ``auroc_undefined`` counts the outputs whose AUROC was skipped.
:func:`primary_metric` names the metric that selects the best checkpoint and drives the LR schedule.

Conventions: labels are thresholded at 0.5; F1 uses a 0.5 threshold on the sigmoid and is 0 for an
output with neither true nor predicted positives (torchmetrics' ``zero_division=0``).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import Tensor

from cxrsem.errors import UsageError
from cxrsem.tasks import check_kind, expected_zone_score, known_labels, zone_logits

__all__ = ["compute_metrics", "primary_metric"]

_PRIMARY = {
    "multilabel": ("auroc_mean", "max"),
    "binary": ("auroc", "max"),
    "global-score": ("mae", "min"),
    "zones": ("mae_mean", "min"),
}


def primary_metric(kind: str) -> tuple[str, str]:
    """(metric name, "max" or "min") used for best-checkpoint selection and ReduceLROnPlateau."""
    return _PRIMARY[check_kind(kind)]


def _f(value: Tensor | float) -> float:
    return float(value.item() if isinstance(value, Tensor) else value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _tm() -> SimpleNamespace:
    """torchmetrics' functions, imported on first use: importing torchmetrics pulls in torchvision
    and torch._dynamo (~6 s), which every ``cxrsem`` command would otherwise pay at start-up."""
    from torchmetrics.functional import mean_absolute_error, pearson_corrcoef
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_f1_score

    return SimpleNamespace(mean_absolute_error=mean_absolute_error, pearson_corrcoef=pearson_corrcoef,
                           binary_accuracy=binary_accuracy, binary_auroc=binary_auroc,
                           binary_f1_score=binary_f1_score)


def _binary_scores(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """AUROC (when both label values occur), F1 and accuracy of one binary output."""
    out: dict[str, float] = {}
    labels = labels.long()
    if labels.numel() == 0:
        return out
    if 0 < int(labels.sum()) < labels.numel():
        out["auroc"] = _f(_tm().binary_auroc(probs, labels))
    out["f1"] = _f(_tm().binary_f1_score(probs, labels, threshold=0.5))
    out["accuracy"] = _f(_tm().binary_accuracy(probs, labels, threshold=0.5))
    return out


def _known(targets: Tensor, target_mask: Tensor | None) -> Tensor:
    known = known_labels(targets, target_mask)
    if targets.is_floating_point():
        known = known & torch.isfinite(targets)
    return known


def _check(kind: str, logits: Tensor, targets: Tensor, names: list[str], mask: Tensor | None,
           head: int, target_width: int) -> None:
    if logits.dim() != 2 or logits.shape[1] != head:
        raise UsageError(
            f"{kind} metrics for {len(names)} outputs need logits [N, {head}], "
            f"got {tuple(logits.shape)}"
        )
    if targets.shape != (logits.shape[0], target_width):
        raise UsageError(
            f"{kind} metrics need targets [N, {target_width}], got {tuple(targets.shape)}"
        )
    if mask is not None and mask.shape != targets.shape:
        raise UsageError(
            f"target_mask {tuple(mask.shape)} does not match targets {tuple(targets.shape)}"
        )


def compute_metrics(
    kind: str,
    logits: Tensor,
    targets: Tensor,
    output_names: list[str],
    target_mask: Tensor | None = None,
) -> dict[str, float]:
    """Validation metrics for one task kind over a whole validation set.

    ``logits`` are the raw head outputs ``[N, head_size]``, ``targets`` as in :mod:`cxrsem.tasks`,
    ``target_mask`` (optional, same shape as ``targets``) is False for unknown labels, which are
    left out of every metric.

    - multilabel: ``auroc/<name>``, ``f1/<name>``, ``auroc_mean`` and ``f1_mean`` (both over the
      outputs whose AUROC is defined), ``auroc_undefined`` (how many outputs were skipped);
    - binary: ``auroc``, ``f1``, ``accuracy`` (and ``auroc_undefined``);
    - global-score: ``mae``, ``pearson`` (0.0 when predictions or targets are constant);
    - zones: per zone ``mae/<zone>`` of the expected score (Eq. 4) and ``accuracy/<zone>`` of the
      argmax class, their means ``mae_mean`` and ``accuracy_mean``, and ``global_mae`` of the summed
      expected scores against the summed true scores (samples with every zone known).
    """
    kind = check_kind(kind)
    names = list(output_names)
    logits = logits.detach().float().cpu()
    targets = targets.detach().cpu()
    mask = None if target_mask is None else target_mask.detach().cpu()
    if kind == "multilabel":
        _check(kind, logits, targets, names, mask, len(names), len(names))
        return _multilabel(logits, targets.float(), names, mask)
    if kind == "binary":
        _check(kind, logits, targets, names, mask, 1, 1)
        return _binary(logits, targets.float(), mask)
    if kind == "global-score":
        _check(kind, logits, targets, names, mask, 1, 1)
        return _global_score(logits, targets.float(), mask)
    _check(kind, logits, targets, names, mask, 4 * len(names), len(names))
    return _zones(logits, targets, names, mask)


def _multilabel(logits: Tensor, targets: Tensor, names: list[str],
                mask: Tensor | None) -> dict[str, float]:
    known = _known(targets, mask)
    probs = torch.sigmoid(logits)
    out: dict[str, float] = {}
    aurocs: list[float] = []
    f1s: list[float] = []
    undefined = 0
    for c, name in enumerate(names):
        sel = known[:, c]
        scores = _binary_scores(probs[sel, c], targets[sel, c] > 0.5)
        if "f1" in scores:
            out[f"f1/{name}"] = scores["f1"]
        if "auroc" in scores:
            out[f"auroc/{name}"] = scores["auroc"]
            aurocs.append(scores["auroc"])
            f1s.append(scores["f1"])
        else:
            undefined += 1
    if aurocs:
        out["auroc_mean"] = _mean(aurocs)
        out["f1_mean"] = _mean(f1s)
    out["auroc_undefined"] = float(undefined)
    return out


def _binary(logits: Tensor, targets: Tensor, mask: Tensor | None) -> dict[str, float]:
    sel = _known(targets, mask)[:, 0]
    out = _binary_scores(torch.sigmoid(logits[sel, 0]), targets[sel, 0] > 0.5)
    out["auroc_undefined"] = 0.0 if "auroc" in out else 1.0
    return out


def _global_score(logits: Tensor, targets: Tensor, mask: Tensor | None) -> dict[str, float]:
    sel = _known(targets, mask)[:, 0]
    pred, true = logits[sel, 0], targets[sel, 0]
    if pred.numel() == 0:
        return {}
    out = {"mae": _f(_tm().mean_absolute_error(pred, true))}
    # Pearson's r is 0/0 when either side is constant; report "no linear relation" instead of NaN.
    if pred.numel() > 1 and bool(pred.std() > 0) and bool(true.std() > 0):
        r = _f(_tm().pearson_corrcoef(pred.double(), true.double()))
        out["pearson"] = r if math.isfinite(r) else 0.0
    else:
        out["pearson"] = 0.0
    return out


def _zones(logits: Tensor, targets: Tensor, names: list[str],
           mask: Tensor | None) -> dict[str, float]:
    known = _known(targets, mask)
    true = torch.where(known, targets, torch.zeros_like(targets)).float()
    expected = expected_zone_score(logits)
    argmax = zone_logits(logits).argmax(dim=-1).float()
    out: dict[str, float] = {}
    maes: list[float] = []
    accs: list[float] = []
    for z, name in enumerate(names):
        sel = known[:, z]
        if not bool(sel.any()):
            continue
        mae = _f(_tm().mean_absolute_error(expected[sel, z], true[sel, z]))
        acc = _f((argmax[sel, z] == true[sel, z]).float().mean())
        out[f"mae/{name}"] = mae
        out[f"accuracy/{name}"] = acc
        maes.append(mae)
        accs.append(acc)
    if maes:
        out["mae_mean"] = _mean(maes)
        out["accuracy_mean"] = _mean(accs)
    complete = known.all(dim=1)
    if bool(complete.any()):
        out["global_mae"] = _f(
            _tm().mean_absolute_error(expected[complete].sum(dim=1), true[complete].sum(dim=1))
        )
    return out
