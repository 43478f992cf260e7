"""Which scalar an attribution explains (``--target``): a class logit, the global score, or a zone's
expected score, chosen by the checkpoint's output names (see :func:`cxrsem.tasks.target_function`).

Every task kind gets a *value table* ``values(logits) -> [B, T]``: one column per named output
(``tasks.target_function(kind, i)``), and for zones models one more column, ``score``, the sum of
the six expected zone scores (the BrixIA global severity).  A target is a column of that table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cxrsem.errors import UsageError
from cxrsem.tasks import check_kind, predict, target_function

SCORE = "score"


@dataclass(frozen=True)
class Target:
    """A column of the value table: ``name`` and output ``index`` (``None`` for the zones score)."""

    name: str
    index: int | None
    column: int
    default: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "index": self.index, "default": self.default}


def values_function(kind: str, num_outputs: int):
    """``logits -> [B, T]``: the explainable scalars of every output (and the zones score)."""
    kind = check_kind(kind)
    functions = [target_function(kind, i) for i in range(num_outputs)]

    def values(logits: torch.Tensor) -> torch.Tensor:
        table = torch.stack([fn(logits) for fn in functions], dim=1)
        if kind == "zones":
            table = torch.cat([table, table.sum(dim=1, keepdim=True)], dim=1)
        return table

    return values


def prediction_table(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Predictions per output (``tasks.predict``), plus the zones total score as a last column."""
    preds = predict(kind, logits)
    if kind == "zones":
        preds = torch.cat([preds, preds.sum(dim=1, keepdim=True)], dim=1)
    return preds


def _names(kind: str, outputs: Sequence[str]) -> str:
    names = list(outputs) + ([SCORE] if kind in ("zones", "global-score") else [])
    return ", ".join(dict.fromkeys(names))


def parse_target(spec: str | int | None, kind: str, outputs: Sequence[str]) -> Target | None:
    """Resolve ``--target`` (a name, an index or ``score``); ``None`` means the default target.

    Defaults: ``score`` for global-score and zones models; ``None`` (the most probable output of
    each image, see :func:`default_columns`) for multilabel and binary models.
    """
    kind = check_kind(kind)
    outputs = list(outputs)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        if kind == "zones":
            return Target(SCORE, None, len(outputs), default=True)
        if kind == "global-score":
            return Target(outputs[0], 0, 0, default=True)
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        index = spec
    else:
        text = str(spec).strip()
        if text in outputs:
            index = outputs.index(text)
            return Target(text, index, index)
        if text.lower() == SCORE:
            if kind == "zones":
                return Target(SCORE, None, len(outputs))
            if kind == "global-score":
                return Target(outputs[0], 0, 0)
            raise UsageError(f"--target score is defined for global-score and zones models; this "
                             f"{kind} model's outputs are: {_names(kind, outputs)}")
        try:
            index = int(text)
        except ValueError:
            raise UsageError(f"--target {text!r} is not an output of this {kind} model; choose "
                             f"one of: {_names(kind, outputs)} (or an index 0..{len(outputs) - 1})"
                             ) from None
    if not 0 <= index < len(outputs):
        raise UsageError(f"--target index {index} is out of range: this model has {len(outputs)} "
                         f"output(s): {_names(kind, outputs)}")
    return Target(outputs[index], index, index)


def default_columns(kind: str):
    """``logits -> [B]`` columns of the most probable output per image (multilabel, binary)."""
    def columns(logits: torch.Tensor) -> torch.Tensor:
        return predict(kind, logits).argmax(dim=1)

    return columns


def target_for_column(kind: str, outputs: Sequence[str], column: int, default: bool) -> Target:
    if kind == "zones" and column == len(outputs):
        return Target(SCORE, None, column, default)
    return Target(list(outputs)[column], column, column, default)
