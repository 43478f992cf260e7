"""What DistributedDataParallel training needs beyond :mod:`cxrsem.engine.distributed`.

One process (no process group): every helper answers as for a world of one and does nothing else,
so the training loop runs the same code alone and under ``torchrun``.

Collectives of one training step, in order: :func:`agree_batch` after loading (did any rank fail
to load its part of the batch?), DDP's own in the forward pass (its gradient buckets are rebuilt
at the second step; ``forward_sync_buffers=False`` keeps the buffer broadcast out, see
:func:`broadcast_buffers` at the end of each epoch), :func:`agree_batch` after the loss (did any
rank fail in its forward pass or get a non-finite loss? and the global loss sums), then DDP's
gradient all-reduce inside ``backward``.  A rank that raises while loading or computing its loss is
therefore known to every rank before any of them waits in DDP's next collective (a forward
pass that raises does so after DDP's own collective at its start); one that raises inside
``backward`` or the optimizer step (e.g. CUDA out of memory there) leaves the others waiting
until torchrun stops them, once that rank has exited.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cxrsem.engine import distributed


def agree_batch(failure: Exception | None, values: Sequence[float], device: torch.device,
                what: str) -> list[float]:
    """``values`` summed over the ranks, after agreeing that no rank failed.

    ``failure``: what this rank raised while preparing its part of the step (None: nothing).  If
    any rank failed, every rank raises :class:`~cxrsem.engine.distributed.RankFailed` with the
    first failing rank's one-line message.  Alone: ``failure`` is raised as it is, ``values`` are
    returned unchanged."""
    if not distributed.active():
        if failure is not None:
            raise failure
        return [float(v) for v in values]
    import torch.distributed as dist

    sums = [0.0] * len(values) if failure is not None else [float(v) for v in values]
    reduced = torch.tensor([1.0 if failure is not None else 0.0, *sums], dtype=torch.float64,
                           device=device)
    dist.all_reduce(reduced)
    if reduced[0].item() > 0:
        with distributed.step(what):  # shares the first failing rank's message with every rank
            if failure is not None:
                raise failure
        raise AssertionError("distributed.step returned although a rank failed")  # pragma: no cover
    return reduced[1:].tolist()


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics: each rank's follow its own
    batches), so that validation and the checkpoint see one model."""
    if not distributed.active():
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when several ranks train (its parameters are rank
    0's afterwards), else ``module`` itself."""
    if not distributed.active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)

