"""Built-in architectures: torchvision's DenseNet121 (the paper's network) and a tiny DenseNet.

Both are instances of :class:`torchvision.models.DenseNet`, so they share the module names the rest
of cxrsem and its users refer to (``features.conv0``, ``features.denseblock1..4``,
``features.transition1..3``, ``features.norm5``, ``classifier``) and are traceable by ``torch.fx``
(``torchvision.models.feature_extraction``).  Nothing here touches the network: ImageNet weights are
only ever read from a local file (:func:`load_densenet121_imagenet`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import DenseNet, densenet121

from cxrsem.components import ArchitectureInfo, Option
from cxrsem.errors import CheckpointError, UsageError
from cxrsem.hookspecs import hookimpl

__all__ = [
    "DENSENET121_IMAGENET_FILE",
    "build_densenet121",
    "build_densenet_mini",
    "load_densenet121_imagenet",
    "register_architectures",
]

# The file torchvision's DenseNet121_Weights.IMAGENET1K_V1 caches in
# torch.hub.get_dir()/checkpoints.
DENSENET121_IMAGENET_FILE = "densenet121-a639ec97.pth"

# torchvision's own remapping of the pre-0.3 DenseNet keys ('norm.1' -> 'norm1', ...): '.' is no
# longer allowed inside a module name, but the published checkpoint still uses it.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _check_sizes(num_outputs: int, in_channels: int) -> None:
    if int(num_outputs) < 1:
        raise UsageError(
            f"an architecture needs at least one output, got num_outputs={num_outputs}"
        )
    if int(in_channels) < 1:
        raise UsageError(f"in_channels must be at least 1, got {in_channels}")


def _set_in_channels(model: DenseNet, in_channels: int) -> DenseNet:
    """Replace ``features.conv0`` by a conv reading ``in_channels`` channels (same geometry)."""
    old = model.features.conv0
    if in_channels == old.in_channels:
        return model
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight)  # torchvision's DenseNet initialisation of every conv
    model.features.conv0 = new
    return model


def build_densenet121(
    *, num_outputs: int, in_channels: int = 1, drop_rate: float = 0.0
) -> DenseNet:
    """torchvision DenseNet121 (random init), ``num_outputs`` logits, ``in_channels`` inputs."""
    _check_sizes(num_outputs, in_channels)
    if not 0.0 <= drop_rate < 1.0:
        raise UsageError(f"option 'drop_rate' must lie in [0, 1), got {drop_rate}")
    model = densenet121(weights=None, num_classes=int(num_outputs), drop_rate=float(drop_rate))
    return _set_in_channels(model, int(in_channels))


def _parse_block_config(text: str) -> tuple[int, int, int, int]:
    try:
        blocks = tuple(int(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        blocks = ()
    if len(blocks) != 4 or any(b < 1 for b in blocks):
        raise UsageError(
            f"option 'block_config' must be four positive integers like \"3,3,3,3\", got {text!r}"
        )
    return blocks  # type: ignore[return-value]


def build_densenet_mini(
    *,
    num_outputs: int,
    in_channels: int = 1,
    growth_rate: int = 12,
    block_config: str = "3,3,3,3",
    drop_rate: float = 0.0,
    stem_pool: bool = False,
) -> DenseNet:
    """A small DenseNet-BC with DenseNet121's module names, for tests, demos and CPU training.

    Defaults: growth rate 12, 3 layers per dense block, 16 initial features, bottleneck factor 2:
    about 51k parameters and 69 units at ``features.denseblock4`` for a 1-channel input.

    Without ``stem_pool`` (the default) the stem's max-pool is an identity, so ``denseblock4`` sees
    1/16 of the input size: 6x6 at 96 px, close to DenseNet121's 7x7 at 224 px.  With the pool it
    would be 3x3, too coarse for the masks of Network Dissection on small phantom images.
    """
    _check_sizes(num_outputs, in_channels)
    if int(growth_rate) < 1:
        raise UsageError(f"option 'growth_rate' must be a positive integer, got {growth_rate}")
    if not 0.0 <= drop_rate < 1.0:
        raise UsageError(f"option 'drop_rate' must lie in [0, 1), got {drop_rate}")
    model = DenseNet(
        growth_rate=int(growth_rate),
        block_config=_parse_block_config(block_config),
        num_init_features=16,
        bn_size=2,
        drop_rate=float(drop_rate),
        num_classes=int(num_outputs),
    )
    if not stem_pool:
        model.features.pool0 = nn.Identity()
    return _set_in_channels(model, int(in_channels))


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ImageNet weights not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated / foreign file
        raise CheckpointError(
            f"cannot read ImageNet weights {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(
        loaded["state_dict"], Mapping
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(loaded)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB first-conv kernel ``[O, 3, k, k]`` into one for ``in_channels`` inputs.

    Every new input channel gets ``sum_c W_c / in_channels``.  For a 1-channel model that is the
    *sum* of the RGB kernels, which makes the model compute exactly what the ImageNet model computes
    on the gray image repeated in all three channels (with the same normalisation per channel).
    Summing rather than averaging keeps conv0's output at the scale that the pretrained
    ``features.norm0`` running statistics were measured at; averaging would shrink it by 3 and
    leave norm0 miscalibrated in eval mode.
    """
    if in_channels == weight.shape[1]:
        return weight
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / in_channels).repeat(1, in_channels, 1, 1)


def load_densenet121_imagenet(model: nn.Module, path: str | Path) -> None:
    """Load torchvision's ImageNet DenseNet121 weights from a local file into ``model``.

    Applies torchvision's remapping of the old ``denselayerN.norm.1``-style keys, skips the
    classifier when its shape differs from the model's (a new head stays randomly initialised), and
    adapts ``features.conv0`` to the model's input channels with :func:`adapt_first_conv`.  Any
    other missing, unexpected or mis-shaped tensor raises :class:`CheckpointError`.
    """
    state = _read_state_dict(path)
    remapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        remapped[match.group(1) + match.group(2) if match else key] = value

    target = model.state_dict()
    conv0 = "features.conv0.weight"
    if conv0 in remapped and conv0 in target:
        weight = remapped[conv0]
        if weight.dim() == 4 and weight.shape[1] == 3 and weight.shape[0] == target[conv0].shape[0]:
            remapped[conv0] = adapt_first_conv(weight, target[conv0].shape[1])
    for key in ("classifier.weight", "classifier.bias"):
        if key in remapped and key in target and remapped[key].shape != target[key].shape:
            del remapped[key]
            remapped.pop(key.replace("weight", "bias"), None)

    unexpected = sorted(set(remapped) - set(target))
    missing = sorted(
        k for k in set(target) - set(remapped)
        if not k.endswith("num_batches_tracked") and not k.startswith("classifier.")
    )
    mismatched = sorted(
        f"{k} (file {tuple(remapped[k].shape)}, model {tuple(target[k].shape)})"
        for k in set(remapped) & set(target) if remapped[k].shape != target[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} of the wrong shape (e.g. {', '.join(mismatched[:2])})")
    if problems:
        raise CheckpointError(
            f"{path} does not hold DenseNet121 ImageNet weights for this model: "
            + "; ".join(problems)
        )
    merged = dict(target)
    for key, value in remapped.items():
        merged[key] = value.to(dtype=target[key].dtype)
    model.load_state_dict(merged)


@hookimpl
def register_architectures(register) -> None:
    register(ArchitectureInfo(
        name="densenet121",
        factory=build_densenet121,
        options=(
            Option("drop_rate", float, 0.0, "dropout after each dense layer"),
        ),
        description="torchvision DenseNet121, the network of the paper (7.0M parameters).",
        load_imagenet=load_densenet121_imagenet,
        imagenet_filename=DENSENET121_IMAGENET_FILE,
        default_layer="features.denseblock4",
    ))
    register(ArchitectureInfo(
        name="densenet-mini",
        factory=build_densenet_mini,
        options=(
            Option("growth_rate", int, 12, "channels each dense layer adds"),
            Option("block_config", str, "3,3,3,3", "layers in each of the four dense blocks"),
            Option("drop_rate", float, 0.0, "dropout after each dense layer"),
            Option("stem_pool", bool, False, "keep the stem max-pool (denseblock4 at 1/32, not 1/16)"),
        ),
        description="A ~51k-parameter DenseNet with DenseNet121's layer names, for CPU training.",
        default_layer="features.denseblock4",
    ))
