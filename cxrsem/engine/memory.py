"""Up-front memory checks: refuse settings whose buffers cannot fit, before anything is allocated.

A typo such as ``--image-size 100000`` or ``--seg-size 100000`` would otherwise reach the
allocator as one 40-120 GB request (or swap the machine to a halt), and ``--steps 100000000``
asks numpy for a 10^16-element matrix.  Each estimate below is a *lower bound* -- the buffers
cxrsem itself must hold, not the model's activations -- so a refusal is always right, and a
setting that passes may still run out of memory inside the model.

The limit is the memory of the machine: physical RAM, or the cgroup (container) limit when that
is lower.  ``CXRSEM_MEMORY_LIMIT_GB`` overrides it (e.g. for a shared node).
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrsem.errors import UsageError

GIB = 1024**3
FLOAT32 = 4


def memory_limit() -> tuple[int, str]:
    """``(bytes, where the figure comes from)``."""
    env = os.environ.get("CXRSEM_MEMORY_LIMIT_GB", "").strip()
    if env:
        try:
            return int(float(env) * GIB), "CXRSEM_MEMORY_LIMIT_GB"
        except ValueError:
            raise UsageError(f"CXRSEM_MEMORY_LIMIT_GB must be a number of GiB, got {env!r}") from None
    limit, where = 0, "the machine's memory"
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no figure, no check
        limit = 0
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (limit or int(text) + 1):
            limit, where = int(text), "the container's memory limit"
    return limit, where


def require(needed: int, what: str) -> None:
    """Raise one :class:`UsageError` when ``needed`` bytes exceed :func:`memory_limit`."""
    limit, where = memory_limit()
    if limit and needed > limit:
        raise UsageError(f"{what} needs at least ~{needed / GIB:,.1f} GiB of memory; the limit is "
                         f"{limit / GIB:,.1f} GiB ({where})")


def training_bytes(image_size: int, batch_size: int, channels: int = 1) -> int:
    """A batch of float32 images twice over (the batch and its normalised model input), plus the
    image a dataset decodes and resizes."""
    pixels = int(image_size) ** 2
    return (2 * int(batch_size) * int(channels) + 1) * pixels * FLOAT32


def dissection_bytes(seg_size: int, batch_size: int) -> int:
    """Per batch, at least one unit's map upsampled to the annotation size (float32) and one
    concept's mask at that size (bool): the smallest IoU tally there is (Eq. 5)."""
    return int(batch_size) * int(seg_size) ** 2 * (FLOAT32 + 1)


def quadrature_bytes(steps: int, rule: str | None) -> int:
    """Gauss-Legendre nodes come from the eigenvalues of a ``steps x steps`` float64 matrix; the
    Riemann rules keep a node and a weight per step."""
    steps = int(steps)
    if rule in (None, "", "gausslegendre"):
        return steps * steps * 8
    return 2 * steps * 8


def check_training(image_size: int, batch_size: int, channels: int = 1) -> None:
    require(training_bytes(image_size, batch_size, channels),
            f"--image-size {image_size} with --batch-size {batch_size} (float32 input batches)")


def check_dissection(seg_size: int, batch_size: int) -> None:
    require(dissection_bytes(seg_size, batch_size),
            f"--seg-size {seg_size} with --batch-size {batch_size} (upsampled maps and masks)")


def check_quadrature(steps: int | None, rule: str | None) -> None:
    if steps is None:
        return
    require(quadrature_bytes(steps, rule),
            f"--steps {steps} ({rule or 'gausslegendre'} quadrature nodes)")
