"""Fake xrv weight files (random weights, saved the way xrv publishes them).

A uniquely named module rather than ``conftest`` helpers, so that it never clashes with another
project's ``conftest`` when several test folders run in one pytest session.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.backends.thnn import _get_thnn_function_backend


def random_densenet(xrv, seed: int = 0) -> torch.nn.Module:
    """An xrv DenseNet with random weights *and* random batch-norm statistics, so a weight that
    failed to load would change the outputs."""
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def weights_path(xrv, folder: Path, spec: str) -> Path:
    return folder / xrv.models.model_urls[spec]["weights_url"].rsplit("/", 1)[1]


class _OldBackend:
    """What torch < 1.6 pickled as every module's ``_backend`` attribute."""

    def __reduce__(self):
        return (_get_thnn_function_backend, ())


def save_as_old_torch(model: torch.nn.Module, path: Path) -> None:
    """Pickle ``model`` (consumed) as torch < 1.6 did: legacy format, a ``_backend`` attribute, no
    ``_non_persistent_buffers_set`` and, like batch norm before torch 0.4.1, no
    ``num_batches_tracked`` buffers."""
    for module in model.modules():
        module.__dict__["_backend"] = _OldBackend()
        del module.__dict__["_non_persistent_buffers_set"]
        module._buffers.pop("num_batches_tracked", None)
    torch.save(model, path, _use_new_zipfile_serialization=False)
