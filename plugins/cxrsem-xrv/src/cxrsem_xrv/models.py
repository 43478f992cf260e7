"""TorchXRayVision's networks as cxrsem architectures: random initialisation, logits out.

Pretrained weights never come through here; the ``xrv`` model source (:mod:`cxrsem_xrv.source`)
reads them from a local file into a model built by these factories.  Nothing here downloads.
"""

from __future__ import annotations

import warnings
from types import ModuleType

from cxrsem.errors import UsageError
from torch import nn

__all__ = ["build_densenet121", "build_resnet50", "import_xrv"]


def import_xrv() -> ModuleType:
    """``torchxrayvision``, imported on first use and without its side effect on warnings.

    ``torchxrayvision.models`` runs ``warnings.filterwarnings("ignore")`` at import, which would
    silence every warning of the process, cxrsem's own included; ``catch_warnings`` restores the
    filters.  Importing lazily also keeps xrv's ~1 s import off cxrsem commands that never use it.
    """
    with warnings.catch_warnings():
        import torchxrayvision
        import torchxrayvision.datasets  # noqa: F401  (older releases do not import them eagerly)
        import torchxrayvision.models  # noqa: F401
    return torchxrayvision


def _check_sizes(num_outputs: int, in_channels: int) -> None:
    if int(num_outputs) < 1:
        raise UsageError(f"an architecture needs at least one output, got num_outputs={num_outputs}")
    if int(in_channels) < 1:
        raise UsageError(f"in_channels must be at least 1, got {in_channels}")


def build_densenet121(*, num_outputs: int, in_channels: int = 1) -> nn.Module:
    """``xrv.models.DenseNet`` (DenseNet-121) with ``num_outputs`` **logits**.

    ``weights=None`` is what makes it safe and plain: xrv then downloads nothing, sets no
    ``input_resolution`` (so ``forward`` does not resize; cxrsem resizes its inputs itself) and
    leaves ``op_threshs`` unset.  With ``op_threshs`` set, xrv's ``forward`` would return
    sigmoid outputs re-scaled so each operating point maps to 0.5 (``op_norm``): calibrated
    probabilities, not the logits that cxrsem's multilabel task kind and its attributions expect.
    Module names are torchvision's (``features.denseblock1..4``, ``features.norm5``, ``classifier``).
    """
    _check_sizes(num_outputs, in_channels)
    xrv = import_xrv()
    return xrv.models.DenseNet(num_classes=int(num_outputs), in_channels=int(in_channels),
                               weights=None, op_threshs=None)


def build_resnet50(*, num_outputs: int, in_channels: int = 1) -> nn.Module:
    """The ResNet-50 inside ``xrv.models.ResNet``, with ``num_outputs`` logits.

    ``xrv.models.ResNet`` cannot be built without weights (its ``__init__`` always fetches them),
    so this builds what it wraps, the way it does: torchvision's ``resnet50`` with a one-channel
    7x7 stem.  Its module names (``conv1``, ``layer1..4``, ``fc``) are those of xrv's weight file,
    without the ``model.`` prefix of the wrapper; ``--layer layer4`` works either way.
    """
    _check_sizes(num_outputs, in_channels)
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=int(num_outputs))
    model.conv1 = nn.Conv2d(int(in_channels), 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
