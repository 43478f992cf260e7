"""Contract checks for registered components, for cxrsem's own tests and for plugin authors.

Each ``check_*`` function builds or takes one component and verifies the promises of
:mod:`cxrsem.components` that the rest of cxrsem relies on; a broken promise raises an
:class:`AssertionError` naming the component and what is wrong (not ``assert`` statements, so the
checks also hold under ``python -O``)::

    from cxrsem.testing.contracts import check_architecture, check_attribution_method, check_loss
    check_architecture("resnet50")
    check_loss("focal", "multilabel")
    check_attribution_method("ig", steps=4)

cxrsem's test suite runs them over every registered component, built-in and installed
(``tests/test_contracts.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cxrsem.api import create_architecture, create_attribution_method, create_loss
from cxrsem.engine.layers import feature_map_layers
from cxrsem.plugins import get_dataset
from cxrsem.tasks import ZONE_CLASSES, head_size

__all__ = ["check_training_dataset", "check_concept_set", "check_architecture", "check_loss",
           "check_attribution_method", "example_targets"]


def _expect(condition: Any, component: str, message: str) -> None:
    if not condition:
        raise AssertionError(f"{component}: {message}")


def _check_image(image: Any, size: int, name: str) -> None:
    _expect(isinstance(image, torch.Tensor), name, f"'image' is a {type(image).__name__}, not a tensor")
    _expect(image.dtype == torch.float32, name, f"'image' dtype is {image.dtype}, expected float32")
    _expect(tuple(image.shape) == (1, size, size), name,
            f"'image' has shape {tuple(image.shape)}, expected (1, {size}, {size})")
    _expect(bool(torch.isfinite(image).all()), name, "'image' holds NaN or inf")
    _expect(float(image.min()) >= 0.0 and float(image.max()) <= 1.0, name,
            f"'image' values span [{float(image.min()):.3g}, {float(image.max()):.3g}], not [0, 1]")


def _target_spec(task: str, names: list[str]) -> tuple[tuple[int, ...], torch.dtype]:
    if task == "multilabel":
        return (len(names),), torch.float32
    if task == "zones":
        return (len(names),), torch.int64
    return (1,), torch.float32  # binary, global-score: one value


def check_training_dataset(dataset: Any, dataset_name: str, image_size: int, items: int = 3) -> None:
    """The training-dataset contract: outputs per declared task, items with images of the right
    shape and range, targets (and optional target masks) of each task's shape and dtype."""
    name = f"dataset {dataset_name!r}"
    info = get_dataset(dataset_name)
    outputs = getattr(dataset, "outputs", None)
    _expect(isinstance(outputs, dict) and outputs, name, "has no 'outputs' dict")
    _expect(set(outputs) <= set(info.tasks), name,
            f"outputs tasks {sorted(outputs)} are not all declared in DatasetInfo.tasks {info.tasks}")
    _expect(len(dataset) > 0, name, "yields no samples")
    for index in sorted({0, len(dataset) // 2, len(dataset) - 1})[:items]:
        item = dataset[index]
        _check_image(item.get("image"), image_size, name)
        _expect(isinstance(item.get("id"), str), name, "'id' is not a string")
        for task, names in outputs.items():
            _expect(task in item.get("targets", {}), name, f"item {index} has no target for {task!r}")
            target = item["targets"][task]
            shape, dtype = _target_spec(task, list(names))
            _expect(tuple(target.shape) == shape and target.dtype == dtype, name,
                    f"{task} target is {tuple(target.shape)} {target.dtype}, expected {shape} {dtype}")
            if task == "zones":
                _expect(int(target.min()) >= 0 and int(target.max()) < ZONE_CLASSES, name,
                        f"zone scores outside 0..{ZONE_CLASSES - 1}")
            masks = item.get("target_masks", {}).get(task)
            if masks is not None:
                _expect(masks.dtype == torch.bool and masks.shape == target.shape, name,
                        f"{task} target mask must be bool {tuple(target.shape)}")
    if hasattr(dataset, "targets"):
        for task in outputs:
            every = dataset.targets(task)
            _expect(every.shape[0] == len(dataset), name, f"targets({task!r}) has {every.shape[0]} "
                    f"rows for {len(dataset)} samples")


def check_concept_set(concept_set: Any, set_name: str, image_size: int, mask_size: int,
                      items: int = 3) -> None:
    """The concept-set contract: a concept list, images, and one bool mask channel per concept at
    the requested mask size."""
    name = f"concept set {set_name!r}"
    concepts = getattr(concept_set, "concepts", None)
    _expect(isinstance(concepts, list) and concepts, name, "has no 'concepts' list")
    _expect(len(set(concepts)) == len(concepts), name, "lists a concept twice")
    _expect(len(concept_set) > 0, name, "holds no images")
    for index in sorted({0, len(concept_set) // 2, len(concept_set) - 1})[:items]:
        item = concept_set[index]
        _check_image(item.get("image"), image_size, name)
        masks = item.get("masks")
        expected = (len(concepts), mask_size, mask_size)
        _expect(isinstance(masks, torch.Tensor) and masks.dtype == torch.bool
                and tuple(masks.shape) == expected, name,
                f"'masks' must be a bool tensor {expected}, got "
                f"{getattr(masks, 'dtype', type(masks).__name__)} {tuple(getattr(masks, 'shape', ()))}")
        _expect(isinstance(item.get("id"), str), name, "'id' is not a string")
    method = getattr(concept_set, "groups", None)
    if method is not None:  # optional: the patient of every item
        _expect(callable(method), name, "'groups' is not a method")
        groups = method()
        if groups is not None:
            _expect(isinstance(groups, list) and len(groups) == len(concept_set), name,
                    f"groups() must give a list of one patient id per item ({len(concept_set)}), "
                    f"got {type(groups).__name__} of {len(groups) if hasattr(groups, '__len__') else '?'}")
            _expect(all(isinstance(g, str) and g for g in groups), name,
                    "groups() must give non-empty strings")


def check_architecture(arch_name: str, *, image_size: int = 64, num_outputs: int = 3,
                       in_channels: int = 1, images: torch.Tensor | None = None,
                       **options: Any) -> list[str]:
    """Build the architecture, run a forward pass (on ``images`` when given), and return its 4-D
    layers (at least one is needed for dissection and attribution)."""
    name = f"architecture {arch_name!r}"
    torch.manual_seed(0)
    model = create_architecture(arch_name, num_outputs=num_outputs, in_channels=in_channels,
                                **options).eval()
    if images is None:
        images = torch.rand(2, in_channels, image_size, image_size)
    with torch.no_grad():
        out = model(images)
    _expect(isinstance(out, torch.Tensor), name, f"forward returned {type(out).__name__}, not a tensor")
    _expect(tuple(out.shape) == (images.shape[0], num_outputs), name,
            f"forward gave {tuple(out.shape)}, expected ({images.shape[0]}, {num_outputs})")
    _expect(bool(torch.isfinite(out).all()), name, "forward gave NaN or inf")
    layers = feature_map_layers(model, images.shape[-1], in_channels)
    _expect(layers, name, "exposes no module with a 4-D output to dissect")
    return layers


def example_targets(task: str, batch: int = 4, outputs: int = 3,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(logits, targets)`` of the shapes a loss of ``task`` receives."""
    g = torch.Generator().manual_seed(seed)
    if task == "zones":
        logits = torch.randn(batch, head_size(task, outputs), generator=g)
        return logits, torch.randint(0, ZONE_CLASSES, (batch, outputs), generator=g)
    if task == "global-score":
        return torch.randn(batch, 1, generator=g), torch.randint(0, 19, (batch, 1), generator=g).float()
    width = outputs if task == "multilabel" else 1
    targets = (torch.rand(batch, width, generator=g) < 0.5).float()
    targets[0] = 1.0  # every label positive somewhere, negative somewhere: batch weights are defined
    targets[1] = 0.0
    return torch.randn(batch, width, generator=g), targets


def check_loss(loss_name: str, task: str, **options: Any) -> float:
    """The loss returns a finite scalar with finite gradients for ``task``'s shapes; an all-known
    ``target_mask`` changes nothing; returns the value."""
    name = f"loss {loss_name!r} ({task})"
    logits, targets = example_targets(task)
    loss_fn = create_loss(loss_name, train_targets=targets, **options)
    logits.requires_grad_(True)
    value = loss_fn(logits, targets)
    _expect(isinstance(value, torch.Tensor) and value.dim() == 0, name,
            f"returned {getattr(value, 'shape', type(value).__name__)}, not a scalar tensor")
    _expect(math.isfinite(float(value.detach())), name, f"returned {float(value.detach())}")
    value.backward()
    _expect(logits.grad is not None and bool(torch.isfinite(logits.grad).all())
            and bool(logits.grad.abs().sum() > 0), name, "gives no finite, non-zero gradient")
    with torch.no_grad():
        masked = loss_fn(logits, targets, target_mask=torch.ones_like(targets, dtype=torch.bool))
    _expect(torch.allclose(masked, value.detach(), rtol=1e-5, atol=1e-7), name,
            "an all-known target_mask changes the loss")
    return float(value.detach())


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def check_attribution_method(method_name: str, *, image_size: int = 32, outputs: int = 3,
                             **options: Any) -> Any:
    """The attribution-method contract (:mod:`cxrsem.attribution.methods`) on a seeded
    ``densenet-mini`` in float64 at ``denseblock4``: maps ``s`` of shape ``[N, K, h, w]``, finite;
    optional fields of the documented shapes (``f(A)``/``f(0)`` both or neither); the same
    result with one image per pass as with all at once (rows are independent); tensor columns
    and a function of the logits both accepted; the model left unchanged (weights, eval mode, no
    hooks).  Returns the result for all images."""
    from cxrsem.attribution.methods import LayerAttribution
    from cxrsem.attribution.targets import default_columns, values_function
    from cxrsem.engine.layers import resolve_layers
    from cxrsem.engine.split import split_at

    name = f"attribution method {method_name!r}"
    method = create_attribution_method(method_name, **options)
    _expect(callable(method), name, f"factory returned {type(method).__name__}, not a callable")
    torch.manual_seed(0)
    model = create_architecture("densenet-mini", num_outputs=outputs, in_channels=1).eval()
    layer = resolve_layers(model, ["denseblock4"], image_size, 1)[0]
    model.double()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, image_size, image_size, generator=g, dtype=torch.float64)
    split = split_at(model, layer, images[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    values = values_function("multilabel", outputs)
    n = images.shape[0]
    result = method(split, images, values=values, columns=default_columns("multilabel"),
                    batch_size=n)
    _expect(isinstance(result, LayerAttribution), name,
            f"returned {type(result).__name__}, not a LayerAttribution")
    s = result.attributions
    expected = (n, *split.activation_shape)
    _expect(isinstance(s, torch.Tensor) and tuple(s.shape) == expected, name,
            f"attributions have shape {tuple(getattr(s, 'shape', ()))}, expected {expected}")
    _expect(bool(torch.isfinite(s).all()), name, "attributions hold NaN or inf")
    _expect((result.f_input is None) == (result.f_baseline is None), name,
            "gives one of f_input and f_baseline without the other")
    for field_name, shape in (("f_input", (n,)), ("f_baseline", (n,)), ("columns", (n,)),
                              ("logits", (n, outputs))):
        value = getattr(result, field_name)
        _expect(value is None or (isinstance(value, torch.Tensor) and tuple(value.shape) == shape
                                  and bool(torch.isfinite(value.double()).all())), name,
                f"{field_name} must be None or a finite tensor {shape}")
    if result.columns is not None:
        with torch.no_grad():
            cols = default_columns("multilabel")(model(images))
        _expect(torch.equal(result.columns.long().cpu(), cols.cpu()), name,
                "explains other columns than the function of the logits gave")
    columns = torch.arange(n) % outputs
    fixed = method(split, images, values=values, columns=columns, batch_size=n)
    small = method(split, images, values=values, columns=columns, batch_size=1)
    alone = torch.cat([method(split, images[i:i + 1], values=values, columns=columns[i:i + 1],
                              batch_size=1).attributions for i in range(n)])
    for other in (small.attributions, alone):
        _expect(torch.allclose(other, fixed.attributions, rtol=1e-7, atol=1e-10), name,
                "depends on batch_size or on the other images of the batch (images must be "
                "explained independently)")
    after = model.state_dict()
    _expect(all(torch.equal(before[k], after[k]) for k in before), name, "changed the model's weights")
    _expect(not model.training and _hooks(model) == hooks, name,
            "left the model in training mode or with hooks")
    return result
