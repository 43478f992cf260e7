"""torch.distributed under ``torchrun``: the process group, image shards, gathers and shared errors.

``torchrun --nproc-per-node N -m cxrsem ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set.  :func:`process_group` initialises the default group once (gloo on CPU, nccl when
the ranks compute on CUDA) and destroys it again; without torchrun (no ``WORLD_SIZE``, or 1) it does
nothing and every helper here answers as for one process (rank 0 of 1, a gather of one), so code
written against these helpers runs unchanged on one process.

Errors: a rank that raises while the others wait in a collective would hang them (until the
group's timeout).  Work between two collectives therefore runs inside :func:`step`, which ends with
an all-gather of each rank's status: every rank then raises the same :class:`CxrsemError` naming the
first failing rank and its one-line message.  (A rank that *dies* is torchrun's to handle: it stops
the others.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

from cxrsem.errors import CxrsemError, UsageError


def requested() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    """Whether a process group of more than one rank is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    import torch.distributed as dist

    return str(dist.get_backend()) if active() else None


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``), before any group exists: 0 alone."""
    return int(os.environ.get("RANK", "0") or 0) if requested() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def rank_device(spec: str | torch.device = "auto") -> str | torch.device:
    """The device of this rank: under torchrun ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` (one
    GPU per process); ``cpu`` and an explicit ``cuda:N`` are kept.  Alone: ``spec`` unchanged."""
    if not requested() or isinstance(spec, torch.device):
        return spec
    text = spec.strip().lower()
    if text == "cuda" or (text == "auto" and torch.cuda.is_available()):
        return f"cuda:{local_rank()}"
    return "cpu" if text == "auto" else text


@contextmanager
def process_group(device: torch.device, timeout_s: float = 1800.0) -> Iterator[bool]:
    """Initialise the default process group for this block when torchrun asked for several
    ranks and none exists yet (yields whether a group of several ranks is active); the group is
    destroyed at the end only when this call made it."""
    import torch.distributed as dist

    if not requested() or (dist.is_available() and dist.is_initialized()):
        yield active()
        return
    if not dist.is_available():
        raise UsageError("WORLD_SIZE asks for several processes but this torch has no "
                         "torch.distributed")
    name = "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl":
        torch.cuda.set_device(device)  # nccl's object gathers go through the current device
    dist.init_process_group(name, timeout=timedelta(seconds=timeout_s))
    try:
        yield True
    finally:
        dist.destroy_process_group()


def shard(n: int, block: int = 1) -> range:
    """This rank's part of items ``0..n-1``: contiguous runs of whole ``block``s (the last block
    may be short), in rank order, block counts differing by at most one (the first ranks take
    one more).  Concatenated over ranks: ``range(n)``.  Deterministic: a function of ``n``,
    ``block``, the rank and the world size only."""
    world, me = world_size(), rank()
    blocks = -(-n // block)
    base, extra = divmod(blocks, world)
    first = me * base + min(me, extra)
    last = first + base + (1 if me < extra else 0)
    return range(min(first * block, n), min(last * block, n))


def batch_shard(count: int, batch_size: int) -> range:
    """This rank's items of ``0..count-1`` for a pass in batches: contiguous whole batches in rank
    order (rank 0 the first), so every batch holds the items it holds on one process (a model's
    outputs can change in the last bits with the batch)."""
    return shard(count, block=batch_size)


def describe(shards: str | None = "contiguous") -> dict[str, Any] | None:
    """``{"world_size", "backend", "shards"}`` of a run of several ranks (None alone): what a
    result's manifest records about how the work was split (``shards=None``: work not split into
    shards of items, e.g. DDP training, records no ``shards``)."""
    if not active():
        return None
    out: dict[str, Any] = {"world_size": world_size(), "backend": backend()}
    return out if shards is None else {**out, "shards": shards}


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable; tensors are moved to the CPU first), in rank order."""
    if not active():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, _to_cpu(obj))
    return gathered


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class RankFailed(CxrsemError):
    """Another rank (or this one) failed in a distributed step; the message is that rank's."""


@contextmanager
def step(what: str = "") -> Iterator[None]:
    """Run the block on every rank, then agree: if any rank raised, all raise :class:`RankFailed`
    with the first failing rank's one-line message (that rank chains its own exception).  Every
    rank does exactly one collective here, failing or not, so none is left waiting."""
    if not active():
        yield
        return
    try:
        yield
    except RankFailed:
        raise  # a step inside this one: every rank has raised it already, together
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then raised
        code = exc.exit_code if isinstance(exc, CxrsemError) else 1
        _agree((_one_line(exc) or type(exc).__name__, code), what, exc)
        raise  # _agree always raises; this keeps type checkers content
    _agree(None, what, None)


def _agree(status: tuple[str, int] | None, what: str, exc: BaseException | None) -> None:
    statuses = all_gather(status)
    failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
    if not failed:
        return
    first, (text, code) = failed[0]
    where = f" ({what})" if what else ""
    error = RankFailed(f"rank {first} of {len(statuses)}{where}: {text}")
    error.exit_code = code  # every rank exits as the failing one would have
    raise error from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
