"""Launching cxrsem under torchrun from a test: real subprocesses (gloo on CPU) under a timeout, so
a hang fails the test instead of blocking CI.  Both sides run with one thread per process: a
convolution's last bits depend on the thread count (torchrun sets ``OMP_NUM_THREADS=1``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[1]


def env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, one thread, the checkout importable
    and a wide terminal for rich's tables."""
    out = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    out.update(OMP_NUM_THREADS="1", COLUMNS="200",  # rich: wide enough for whole table rows
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")])),
               **extra)
    return out


def torchrun(args: list[str], procs: int = 2, timeout: float = TIMEOUT_S, **extra_env: str
             ) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node procs ARGS`` (``args`` start with ``-m cxrsem`` or
    a launcher script), with ``extra_env`` added to :func:`env`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env(**extra_env), cwd=REPO)


def single(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """The same ``args`` as one plain process (the reference a torchrun run is compared with)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=REPO)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
