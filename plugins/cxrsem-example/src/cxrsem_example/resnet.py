"""``resnet50``: torchvision's ResNet-50 for cxrsem, with a grey (1-channel) stem.

Layer names for dissection and attribution
------------------------------------------
cxrsem refers to layers by their module path in ``model.named_modules()``; any module whose output
is a 4-D ``[B, K, h, w]`` feature map can be dissected.  A DenseNet's are ``features.denseblock4``
and friends; torchvision's ResNet names its stages ``layer1`` .. ``layer4`` (strides 4, 8, 16 and
32; 256, 512, 1024 and 2048 units), each a sequence of bottleneck blocks (``layer4.0`` ..
``layer4.2``, with ``conv1``..``conv3``, ``bn1``..``bn3`` inside).  The paper's choice -- the last
convolutional stage -- is ``layer4``::

    cxrsem dissect --model RUN/best.pt --layer layer4 --concepts mask-folder ...

``layer4`` works at 1/32 of the input: 7x7 at 224 px, 2x2 at 64 px, too coarse for dissection below
about 128 px.  (``avgpool`` is 4-D too, but 1x1: nothing to localise.)

ImageNet weights
----------------
``--init imagenet`` reads torchvision's ``IMAGENET1K_V1`` file from ``--weights FILE`` or from
torchvision's cache (``torch.hub.get_dir()/checkpoints/resnet50-0676ba61.pth``); nothing is ever
downloaded.  For a grey input the three RGB kernels of ``conv1`` are summed, as cxrsem's
``densenet121`` does: the model then computes exactly what the ImageNet model computes on the grey
image repeated in all three channels, so ``bn1``'s running statistics stay calibrated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from cxrsem.errors import CheckpointError, UsageError
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, resnet50

# The name torch.hub gives the downloaded file: the last part of the weights' URL.
RESNET50_IMAGENET_FILE = ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


def build_resnet50(*, num_outputs: int, in_channels: int = 1) -> ResNet:
    """torchvision ResNet-50 (random init): ``[B, in_channels, S, S] -> [B, num_outputs]``."""
    if int(num_outputs) < 1 or int(in_channels) < 1:
        raise UsageError(f"resnet50 needs num_outputs >= 1 and in_channels >= 1, "
                         f"got {num_outputs} and {in_channels}")
    model = resnet50(weights=None, num_classes=int(num_outputs))
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(int(in_channels), old.out_channels, kernel_size=old.kernel_size,
                                stride=old.stride, padding=old.padding, bias=False)
        # torchvision's own initialisation of every ResNet conv
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def load_resnet50_imagenet(model: nn.Module, path: str | Path) -> None:
    """Load torchvision's ImageNet ResNet-50 state dict from the local file ``path`` into ``model``.

    ``conv1`` is adapted to the model's input channels (RGB kernels summed, then shared equally);
    ``fc`` is skipped when its shape differs (a new head stays randomly initialised).  Any other
    missing, unexpected or mis-shaped tensor raises :class:`~cxrsem.errors.CheckpointError`.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, truncated or foreign file: torch raises many types
        raise CheckpointError(f"cannot read ImageNet weights {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (a mapping of names to tensors)")
    state = dict(state)
    target = model.state_dict()

    weight = state.get("conv1.weight")
    wanted = target["conv1.weight"].shape[1]
    if weight is not None and weight.dim() == 4 and weight.shape[1] == 3 and wanted != 3:
        state["conv1.weight"] = (weight.sum(dim=1, keepdim=True) / wanted).repeat(1, wanted, 1, 1)
    if state.get("fc.weight") is not None and state["fc.weight"].shape != target["fc.weight"].shape:
        del state["fc.weight"]
        state.pop("fc.bias", None)

    # Older torchvision files predate BatchNorm's num_batches_tracked; the model's own value is kept.
    missing = sorted(k for k in target.keys() - state.keys()
                     if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - target.keys())
    wrong = sorted(k for k in state.keys() & target.keys() if state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not hold ResNet-50 ImageNet weights for this model: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict({**target, **state})
