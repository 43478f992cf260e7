"""Exact layer Integrated Gradients with a zero-activation baseline (paper Sec. 2.3, Eq. 6).

For an image with activations ``A`` at layer ``L`` and a scalar output ``f`` of the network after
``L``::

    s_k^i = a_k^i * int_0^1  d f(alpha * A) / d a_k^i  d alpha                     (Eq. 6)

approximated by a quadrature rule ``sum_j w_j * grad f(alpha_j * A)``.  ``A`` is computed once per
image (the *head* of a :class:`~cxrsem.engine.split.Split`); only the *tail* is evaluated at the
``alpha_j * A``, every step of every image as rows of one batch.  Two more rows per image,
``alpha = 1`` and ``alpha = 0``, give ``f(A)`` and ``f(0)`` for the completeness check
``sum_k sum_i s_k^i ~= f(A) - f(0)``.  Rows are independent (the model is in eval mode), so the
gradient of the *sum* of the row outputs gives every row's own gradient, exactly.

This is *not* what ``captum.attr.LayerIntegratedGradients`` computes by default: Captum
interpolates between the layer activations of a baseline *input* (zeros image) and of the input,
and re-runs the whole model at every step.  The definition here -- a zero-activation baseline --
matches ``captum.attr.IntegratedGradients`` applied to the sub-network after ``L``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cxrsem.attribution.methods import Columns, LayerAttribution, ValuesFn
from cxrsem.attribution.quadrature import Quadrature
from cxrsem.engine.split import Split, repeat_rows, split_at
from cxrsem.errors import UsageError

__all__ = ["IntegratedGradients", "LayerAttribution", "LayerIntegratedGradients",
           "integrated_gradients", "layer_integrated_gradients"]

BASELINE = "zero activations"
Progress = Callable[..., None]


@dataclass(frozen=True)
class IntegratedGradients:
    """The registered method ``ig`` (an :class:`~cxrsem.attribution.methods.AttributionMethod`):
    exact layer IG (Eq. 6) with the checked quadrature ``quadrature``."""

    quadrature: Quadrature

    @classmethod
    def from_options(cls, *, rule: str = "gausslegendre", steps: int = 32) -> IntegratedGradients:
        return cls(Quadrature.of(rule, steps))

    @property
    def options(self) -> dict[str, object]:
        """The canonical options (``riemann_left`` given is ``riemann-left``), as recorded."""
        return {"rule": self.quadrature.rule, "steps": self.quadrature.steps}

    def __call__(self, split: Split, images: torch.Tensor, *, values: ValuesFn, columns: Columns,
                 batch_size: int = 64, progress: Progress | None = None) -> LayerAttribution:
        return _integrate(split, images, self.quadrature, values=values, columns=columns,
                          batch_size=batch_size, progress=progress)


def integrated_gradients(split: Split, images: torch.Tensor, *, values: ValuesFn,
                         columns: Columns, steps: int = 32, method: str = "gausslegendre",
                         batch_size: int = 64, progress: Progress | None = None) -> LayerAttribution:
    """Layer IG (Eq. 6) of ``images`` (model-ready ``[N, C, H, W]``) through ``split``.

    The explained scalar of image ``n`` is ``values(logits)[:, columns[n]]``; ``columns`` may also
    be a function of the logits at ``A`` (``[N, ...] -> [N]``), e.g. "the most probable class".
    ``batch_size`` bounds both the images per head pass and the rows per tail pass.
    """
    return _integrate(split, images, Quadrature.of(method, steps), values=values, columns=columns,
                      batch_size=batch_size, progress=progress)


def _integrate(split: Split, images: torch.Tensor, quadrature: Quadrature, *, values: ValuesFn,
               columns: Columns, batch_size: int, progress: Progress | None) -> LayerAttribution:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if images.dim() < 2 or images.shape[0] == 0:
        raise UsageError(f"expected a batch of images [N, C, H, W], got {tuple(images.shape)}")
    steps = quadrature.steps
    alphas_list, weights_list = list(quadrature.alphas), list(quadrature.weights)
    # Per image: the quadrature rows, then alpha = 1 (f(A)) and alpha = 0 (f(0)) with weight 0.
    alphas_list = [*alphas_list, 1.0, 0.0]
    weights_list = [*weights_list, 0.0, 0.0]
    per_image = len(alphas_list)

    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in ("s", "a", "fa", "f0", "logits", "col")}
    n_total = images.shape[0]
    for start in range(0, n_total, batch_size):
        group = images[start:start + batch_size]
        with torch.no_grad():
            acts, extras = split.head(group)
        n = acts.shape[0]
        dtype, device = acts.dtype, acts.device
        alphas = torch.tensor(alphas_list, dtype=dtype, device=device)
        weights = torch.tensor(weights_list, dtype=dtype, device=device)
        if callable(columns):
            with torch.no_grad():
                index = torch.arange(n, device=device)
                cols = columns(split.tail(acts, split.rows(extras, index, n))).to(device).long()
        else:
            cols = torch.as_tensor(columns, device=device).long()[start:start + n]

        rows_image = torch.arange(n, device=device).repeat_interleave(per_image)
        rows_alpha = alphas.repeat(n)
        rows_weight = weights.repeat(n)
        grad_sum = torch.zeros_like(acts)
        f_rows = torch.empty(n * per_image, dtype=dtype, device=device)
        logits_rows: list[torch.Tensor] = []
        for r0 in range(0, n * per_image, batch_size):
            img = rows_image[r0:r0 + batch_size]
            x = repeat_rows(acts, img, rows_alpha[r0:r0 + batch_size]).requires_grad_(True)
            with torch.enable_grad():
                # A clone: a tail that starts with an in-place op (relu_) must not hit the leaf.
                logits = split.tail(x.clone(), split.rows(extras, img, n))
                table = values(logits)
                f = table.gather(1, cols.index_select(0, img).view(-1, 1)).squeeze(1)
                (grad,) = torch.autograd.grad(f.sum(), x, allow_unused=True)
            if grad is None:  # f does not depend on L at all (e.g. a zero classifier row)
                grad = torch.zeros_like(x)
            # Weighted sum of the rows of each image as one matrix product ([n, rows] @ [rows, D]);
            # index_add_ with repeated indices is an order of magnitude slower on CPU.
            mix = torch.zeros(n, img.numel(), dtype=dtype, device=device)
            mix[img, torch.arange(img.numel(), device=device)] = rows_weight[r0:r0 + batch_size]
            grad_sum += (mix @ grad.reshape(img.numel(), -1)).view_as(grad_sum)
            f_rows[r0:r0 + batch_size] = f.detach()
            logits_rows.append(logits.detach())
        all_logits = torch.cat(logits_rows)
        ends = torch.arange(n, device=device) * per_image + steps
        outputs["s"].append(acts * grad_sum)
        outputs["a"].append(acts)
        outputs["fa"].append(f_rows[ends])
        outputs["f0"].append(f_rows[ends + 1])
        outputs["logits"].append(all_logits[ends])
        outputs["col"].append(cols)
        if progress is not None:
            progress("ig_batch", done=start + n, total=n_total)
    return LayerAttribution(
        attributions=torch.cat(outputs["s"]), activations=torch.cat(outputs["a"]),
        f_input=torch.cat(outputs["fa"]), f_baseline=torch.cat(outputs["f0"]),
        logits=torch.cat(outputs["logits"]), columns=torch.cat(outputs["col"]),
        path=split.path, split_reason=split.reason, method=quadrature.rule, steps=steps)


class LayerIntegratedGradients:
    """Integrated Gradients at ``layer`` of ``model`` (eval mode), zero-activation baseline (Eq. 6),
    in Captum's ``LayerIntegratedGradients(model, layer).attribute(inputs, target=...)`` style.

    The model is split at the layer once per input shape, dtype and device
    (:func:`~cxrsem.engine.split.split_at`, which traces and checks the split), and the split is
    reused by every later call: per-image calls in a loop then cost what the engine costs, not a
    trace each.  The split shares the model's modules, so changed weights are seen; a model whose
    modules were replaced (``model.fc = ...``) or that was put into training mode is split again.
    """

    def __init__(self, model: nn.Module, layer: str, *, split: str = "auto") -> None:
        self.model, self.layer, self.mode = model, layer, split
        self._splits: dict[tuple, Split] = {}

    def _fingerprint(self) -> tuple:
        return tuple((name, id(module)) for name, module in self.model.named_modules())

    def split_for(self, inputs: torch.Tensor) -> Split:
        key = (tuple(inputs.shape[1:]), inputs.dtype, inputs.device, self.model.training,
               self._fingerprint())
        found = self._splits.get(key)
        if found is None:
            self._splits = {}  # one structure at a time: an old one is never used again
            found = self._splits[key] = split_at(self.model, self.layer, inputs[:1], mode=self.mode)
        return found

    def attribute(self, inputs: torch.Tensor,
                  target: int | Sequence[int] | Callable[[torch.Tensor], torch.Tensor], *,
                  steps: int = 32, method: str = "gausslegendre",
                  batch_size: int = 64) -> LayerAttribution:
        """See :func:`layer_integrated_gradients`."""
        return layer_integrated_gradients(self.model, self.layer, inputs, target, steps=steps,
                                          method=method, batch_size=batch_size,
                                          split=self.split_for(inputs))


# layer_integrated_gradients keeps one LayerIntegratedGradients per (model, layer, mode), held
# weakly by the model: calling it in a loop reuses the split like the class does.
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], LayerIntegratedGradients]] = \
    weakref.WeakKeyDictionary()


def layer_integrated_gradients(
        model: nn.Module, layer: str, inputs: torch.Tensor,
        target: int | Sequence[int] | Callable[[torch.Tensor], torch.Tensor], *,
        steps: int = 32, method: str = "gausslegendre", batch_size: int = 64,
        split: Split | str = "auto") -> LayerAttribution:
    """Integrated Gradients at module ``layer`` of ``model`` (eval mode), zero-activation baseline.

    ``inputs`` are model-ready (already normalised).  ``target`` is an output index, one index per
    image, or a function ``logits -> [B]`` giving the explained scalar.  ``split`` is a ready
    :class:`~cxrsem.engine.split.Split` or a mode for :func:`~cxrsem.engine.split.split_at`
    (``auto``, ``fx`` or ``hook``); the split made for a mode is kept for the next call on the
    same model, layer and input shape (:class:`LayerIntegratedGradients`).
    """
    if isinstance(split, str):
        per_model = _CACHE.setdefault(model, {})
        explainer = per_model.setdefault((layer, split), LayerIntegratedGradients(model, layer,
                                                                                  split=split))
        split = explainer.split_for(inputs)
    n = inputs.shape[0]
    if callable(target):
        def values(logits: torch.Tensor) -> torch.Tensor:
            return target(logits).reshape(-1, 1)

        cols = torch.zeros(n, dtype=torch.long)
    else:
        def values(logits: torch.Tensor) -> torch.Tensor:
            return logits

        cols = torch.as_tensor([target] * n if isinstance(target, int) else list(target)).long()
        if cols.numel() != n:
            raise UsageError(f"got {cols.numel()} targets for {n} images")
    return integrated_gradients(split, inputs, values=values, columns=cols, steps=steps,
                                method=method, batch_size=batch_size)
