"""The runner: a model over a stream of batches, with the layer activations captured.

Training's evaluation, dissection's forward pass and any other "model over a dataset" go through
:func:`run_model`, so every stage feeds a checkpoint's model the same input (size, channels,
normalisation: :meth:`cxrsem.engine.preprocess.InputSpec.prepare`) on the same device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxrsem.engine.device import autocast
from cxrsem.engine.layers import capture
from cxrsem.engine.precision import (
    DEFAULT_PRECISION,
    as_float32,
    channels_last,
    forward_autocast,
    reduced,
    supported_precision,
    uses_channels_last,
)
from cxrsem.engine.preprocess import InputSpec


@dataclass
class ModelPass:
    """One batch through the model: the ``batch`` as it came (masks, targets, ids untouched, on
    their own device), the model ``inputs`` made from ``batch["image"]``, the model ``outputs``
    and the captured ``activations`` ``{layer: tensor}`` (clones, on the model's device)."""

    batch: Mapping[str, Any]
    inputs: torch.Tensor
    outputs: Any
    activations: dict[str, torch.Tensor]


def run_model(model: nn.Module, spec: InputSpec, batches: Iterable[Mapping[str, Any]], *,
              device: torch.device | str, layers: Sequence[str] = (),
              dtype: torch.dtype | None = None, amp: bool = False,
              precision: str = DEFAULT_PRECISION) -> Iterator[ModelPass]:
    """Yield a :class:`ModelPass` per batch of ``batches`` (dicts with ``"image"``: grey
    ``[B, 1, S, S]`` in [0, 1]), running ``model`` without gradients on
    ``spec.prepare(image, device=device, dtype=dtype)`` and capturing ``layers``.

    ``amp`` runs the forward pass under :func:`cxrsem.engine.device.autocast` (mixed precision on
    CUDA, nothing on CPU).  ``precision`` (``fp32``, ``bf16``, ``fp16``;
    :mod:`cxrsem.engine.precision`) runs it under ``torch.autocast`` to that dtype on any device
    (on CUDA with the model and inputs in channels_last, the model's own tensors put back
    afterwards), and returns the activations and tensor outputs in float32; ``fp32`` is the plain
    pass (the default; bit for bit what it was without the option).  ``amp`` and a reduced
    ``precision`` together are an error.

    The model's mode is the caller's: put it in eval mode first.  Only the forward call runs
    under ``no_grad``, so grad mode is unchanged while the caller holds a batch.
    Forward hooks stay registered until the generator finishes; a caller that may stop early
    wraps it in :func:`contextlib.closing` so they are removed at once.
    """
    if not reduced(precision):
        with capture(model, list(layers)) if layers else nullcontext({}) as captured:
            for batch in batches:
                inputs = spec.prepare(batch["image"], device=device, dtype=dtype)
                captured.clear()
                with torch.no_grad(), autocast(torch.device(device), enabled=amp):
                    outputs = model(inputs)
                yield ModelPass(batch, inputs, outputs, dict(captured))
        return
    if amp:
        raise ValueError("run_model: give amp or a reduced precision, not both")
    supported_precision(precision, device)
    last = uses_channels_last(device, precision)
    with channels_last(model, last), \
            capture(model, list(layers)) if layers else nullcontext({}) as captured:
        for batch in batches:
            inputs = spec.prepare(batch["image"], device=device, dtype=dtype)
            fed = inputs.contiguous(memory_format=torch.channels_last) if last else inputs
            captured.clear()
            with torch.no_grad(), forward_autocast(device, precision):
                outputs = model(fed)
            # Statistics downstream are exact float32 arithmetic on these values.
            activations = {k: v.float().contiguous() for k, v in captured.items()}
            yield ModelPass(batch, inputs, as_float32(outputs), activations)
