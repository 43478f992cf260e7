"""Ready-made architectures with your weights: ``--model torchvision:NAME`` and ``--model timm:NAME``.

Every torchvision classification model (``torchvision.models.list_models(module=
torchvision.models)``) and, when timm is installed, every timm model becomes a cxrsem model:
the source builds the architecture *without* weights (nothing is ever downloaded), loads the
user's ``weights`` file (a state dict or a checkpoint dict holding one under ``state_dict`` or
``model``; a ``module.`` prefix from DataParallel/DDP is dropped; always
``torch.load(weights_only=True)``) and describes the input with ``input_size``, ``channels``
(default 3: the grey radiograph is repeated, as for an RGB ImageNet model),
``normalization`` (default ``imagenet``; ``xrv``, ``none`` or ``MEAN,STD``) and the outputs
(``outputs`` names, or ``num_outputs``, or the weights' classifier size).  Without ``weights`` the
model has random weights (a chance baseline, or a test).

The architectures ``torchvision`` and ``timm`` (option ``model``) rebuild such models from the
checkpoint, so a model saved by ``cxrsem train`` or exported from a source loads like any other.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrsem import ArchitectureInfo, Option, hookimpl
from cxrsem.components import ModelSourceInfo
from cxrsem.errors import CheckpointError, UsageError

_TASKS = ("multilabel", "binary", "global-score", "zones")


# --- building the architectures ------------------------------------------------------------------

def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            return parent, attr, module
    return None


def set_input_channels(model: nn.Module, channels: int) -> nn.Module:
    """Replace the first convolution by one with ``channels`` inputs (same output channels,
    kernel, stride, padding), its weights the old ones averaged over the input channels and
    repeated: a grey image fed to all inputs then gives what the RGB stem gave it."""
    found = _first_conv(model)
    if found is None or found[2].in_channels == channels:
        return model
    parent, attr, conv = found
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, channels, 1, 1) * conv.in_channels / channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new)
    return model


def build_torchvision(*, num_outputs: int, in_channels: int = 3, model: str = "resnet18") -> nn.Module:
    """torchvision model ``model`` with ``num_outputs`` classes and ``in_channels`` inputs, random
    weights (``weights=None``: never a download)."""
    import torchvision

    name = model
    known = torchvision_names()
    if name not in known:
        from cxrsem.plugins import unknown_name_message

        raise UsageError(unknown_name_message("torchvision model", name, known))
    try:
        built = torchvision.models.get_model(name, weights=None, num_classes=int(num_outputs))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"torchvision model {name!r} cannot be built with {num_outputs} "
                         f"outputs: {exc}") from None
    return set_input_channels(built, int(in_channels))


def import_timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise UsageError("timm models need timm: pip install 'cxrsem[timm]'") from None


def build_timm(*, num_outputs: int, in_channels: int = 3, model: str = "resnet18") -> nn.Module:
    """timm model ``model`` (``pretrained=False``: never a download)."""
    timm = import_timm()
    name = model
    try:
        return timm.create_model(name, pretrained=False, num_classes=int(num_outputs),
                                 in_chans=int(in_channels))
    except RuntimeError as exc:  # timm's "Unknown model (...)"
        raise UsageError(f"timm model {name!r}: {exc}") from None


def _reads_the_class_token(model: nn.Module) -> bool:
    """The head sees only the class token (torchvision ViT; timm with ``global_pool="token"``)."""
    return (isinstance(getattr(model, "class_token", None), torch.Tensor)
            or getattr(model, "global_pool", None) == "token")


def default_layer(model: nn.Module) -> str | None:
    """The layer commands read when none is named: a DenseNet's last dense block, a ResNet's last
    stage, a vision transformer's last encoder block -- or the one before it when the head reads
    only the class token (the last block's patch tokens then never reach the output, so every
    attribution there is zero) --, else the last child of ``features`` (VGG, EfficientNet,
    MobileNet, ConvNeXt)."""
    names = dict(model.named_modules())
    if "features.denseblock4" in names:
        return "features.denseblock4"
    if "layer4" in names:
        return "layer4"
    for blocks in ("encoder.layers", "blocks", "stages"):  # torchvision ViT/Swin, timm
        if blocks in names:
            children = list(names[blocks].named_children())
            if children:
                last = -2 if _reads_the_class_token(model) and len(children) > 1 else -1
                return f"{blocks}.{children[last][0]}"
    if "features" in names:
        children = list(names["features"].named_children())
        if children:
            return f"features.{children[-1][0]}"
    return None


# --- weights from a local file -------------------------------------------------------------------

def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a state dict, or a checkpoint dict holding one (``state_dict``,
    ``model``, a cxrsem checkpoint); DataParallel/DDP's ``module.`` prefix removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--weights {path} not found (looked for {path.resolve()}); "
                              f"weights are read from local files only")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals, truncated files, not a torch file
        raise CheckpointError(f"--weights {path} is not a loadable torch file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise CheckpointError(f"--weights {path} holds no state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def _classifier_size(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> int | None:
    """The number of outputs the weights were trained with: the first dimension of the model's
    last 2-D weight (its classifier) in the weights."""
    last = [k for k, v in model.state_dict().items() if k.endswith("weight") and v.dim() == 2]
    if last and last[-1] in weights and weights[last[-1]].dim() == 2:
        return int(weights[last[-1]].shape[0])
    return None


def _load_strictly(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    from cxrsem.checkpoint import weights_mismatch

    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights do not fit {source}: "
                              f"{weights_mismatch(model, weights, exc)}") from None


# --- the sources ---------------------------------------------------------------------------------

SOURCE_OPTIONS = (
    Option("weights", str, "", "local weights file (state dict or checkpoint dict); empty: random"),
    Option("num_outputs", int, 0, "outputs of the model (0: from --outputs or the weights)"),
    Option("outputs", str, "", "output names, comma-separated (default output0, output1, ...)"),
    Option("task", str, "multilabel", "task kind", choices=_TASKS),
    Option("input_size", int, 224, "input image size, pixels a side"),
    Option("channels", int, 3, "input channels (the grey image is repeated)"),
    Option("normalization", str, "imagenet", "imagenet, xrv, none or MEAN,STD"),
)


def _checkpoint(library: str, build, spec: str, *, weights: str, num_outputs: int, outputs: str,
                task: str, input_size: int, channels: int, normalization: str) -> dict[str, Any]:
    from cxrsem.checkpoint import make_checkpoint
    from cxrsem.modules import parse_normalization
    from cxrsem.tasks import ZONE_CLASSES, head_size

    state = read_weights(weights) if weights else None
    names = [o.strip() for o in outputs.split(",") if o.strip()]
    per_output = ZONE_CLASSES if task == "zones" else 1
    logits = head_size(task, len(names)) if names else num_outputs * per_output
    if state is not None and not logits:
        probe = build(num_outputs=1000, in_channels=channels, model=spec)
        logits = _classifier_size(probe, state) or 0
    if not logits:
        raise UsageError(f"{library}:{spec}: say how many outputs the model has (--num-outputs N "
                         f"or --outputs NAME,...)")
    if names and num_outputs and num_outputs != len(names):
        raise UsageError(f"--num-outputs {num_outputs} but {len(names)} --outputs names")
    if logits % per_output:
        raise UsageError(f"a zones model needs {per_output} logits per zone, not {logits}")
    names = names or [f"output{i}" for i in range(logits // per_output)]
    model = build(num_outputs=logits, in_channels=channels, model=spec)
    if state is not None:
        _load_strictly(model, state, f"{library}:{spec} with {logits} outputs and {channels} "
                                     f"input channel(s) ({weights})")
    checkpoint = make_checkpoint(
        model, arch=library, arch_kwargs={"model": spec}, task_kind=task, outputs=names,
        image_size=input_size, channels=channels,
        normalization=parse_normalization(normalization, channels),
        train={"init": f"weights {weights}" if weights else "random (no weights given)"})
    layer = default_layer(model)
    if layer:
        checkpoint["arch"]["layer"] = layer
    return checkpoint


def torchvision_checkpoint(*, spec: str, **options: Any) -> dict[str, Any]:
    return _checkpoint("torchvision", build_torchvision, spec, **options)


def timm_checkpoint(*, spec: str, **options: Any) -> dict[str, Any]:
    import_timm()
    return _checkpoint("timm", build_timm, spec, **options)


@hookimpl
def register_architectures(register) -> None:
    name = Option("model", str, "resnet18", "the library's model name (e.g. densenet121, vit_b_16)")
    register(ArchitectureInfo(name="torchvision", factory=build_torchvision, options=(name,),
                              description="any torchvision classification model, random init "
                                          "(--model torchvision:NAME --weights FILE)"))
    register(ArchitectureInfo(name="timm", factory=build_timm, options=(name,),
                              description="any timm model when timm is installed, random init "
                                          "(--model timm:NAME --weights FILE)"))


@hookimpl
def register_model_sources(register) -> None:
    register(ModelSourceInfo(name="torchvision", factory=torchvision_checkpoint,
                             options=SOURCE_OPTIONS,
                             description="torchvision classification models with your weights "
                                         "(never downloaded)"))
    register(ModelSourceInfo(name="timm", factory=timm_checkpoint, options=SOURCE_OPTIONS,
                             description="timm models with your weights, when timm is installed "
                                         "(never downloaded)"))
