"""Registration objects that plugins hand to cxrsem, and the data contracts they promise.

Every dataset, concept set, loss, architecture, model source and attribution method -- built-in or
third-party -- is described by one of the frozen dataclasses below and registered through the hooks
in :mod:`cxrsem.hookspecs`.  The core only ever sees these objects, never a concrete class, so new
components need no core change.  The kinds themselves are declared once, in :data:`KINDS`.

Data contracts
--------------
*Training dataset* (returned by ``DatasetInfo.factory``): a ``torch.utils.data.Dataset`` with

- ``outputs: dict[str, list[str]]`` -- for every task kind it can feed (see :data:`TASK_KINDS`), the
  names of the model outputs (class names, zone names, ...);
- ``__getitem__(i) -> dict`` with ``"image"`` (float32 ``[1, S, S]`` in ``[0, 1]``, S = image_size),
  ``"targets"`` (``{task: tensor}``, shapes in :mod:`cxrsem.tasks`), optional ``"target_masks"``
  (``{task: bool tensor}``, False where a label is unknown and must not enter the loss) and ``"id"``;
- optionally ``targets(task) -> Tensor`` giving every sample's target at once without decoding images
  (used by losses that need training-set statistics, e.g. weighted MSE); and ``describe() -> str``.

*Concept set* (returned by ``ConceptSetInfo.factory``): a ``torch.utils.data.Dataset`` with

- ``concepts: list[str]``;
- ``__getitem__(i) -> dict`` with ``"image"`` (float32 ``[1, S, S]`` in ``[0, 1]``), ``"masks"``
  (bool ``[C, M, M]`` at the annotation resolution M = mask_size, one *separate* channel per concept,
  so overlapping annotations count for every concept they belong to) and ``"id"``.
  A concept is present in an image exactly when its channel has a pixel set.
- optionally ``groups() -> list[str]``: the patient (any resampling unit) of every item, one
  non-empty string per item in item order, without decoding images.  Dissection resamples by these
  groups (``imagestats.npz``'s ``groups``); images of one patient share a string.  Absent (or
  returning ``None``): every image is its own group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TASK_KINDS = ("multilabel", "global-score", "zones", "binary")

OPTION_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class Option:
    """One setting a component accepts, settable from the config or ``--*-opt name=value``."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise TypeError(f"option {self.name!r}: type must be one of int, float, str, bool")


@dataclass(frozen=True)
class _Component:
    name: str
    factory: Callable[..., Any]
    options: tuple[Option, ...] = ()
    description: str = ""

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}


@dataclass(frozen=True)
class DatasetInfo(_Component):
    """A training dataset.

    ``factory(*, split, image_size, root, seed, **options)`` returns a dataset honouring the
    training-dataset contract above; ``split`` is ``"train"``, ``"val"`` or ``"test"``; ``root`` is a
    :class:`pathlib.Path` or None (only datasets with ``needs_root`` get one).
    """

    tasks: tuple[str, ...] = ()
    needs_root: bool = False


ANNOTATIONS = ("masks", "boxes")
"""The kinds of annotation a concept set can declare (:attr:`ConceptSetInfo.annotation`)."""


@dataclass(frozen=True)
class ConceptSetInfo(_Component):
    """An annotation source for Network Dissection (segmentation masks or boxes).

    ``factory(*, image_size, mask_size, root, seed, **options)`` returns a concept set honouring the
    concept-set contract above.

    ``annotation`` says what its masks are (one of :data:`ANNOTATIONS`): ``"masks"`` (the default)
    -- outlines of the concept itself; ``"boxes"`` -- the set's masks are filled bounding boxes, not
    outlines.  A box also covers background, so even a unit that fires exactly on the lesion stays
    below IoU 1 against it; dissection reports how well units fit their boxes
    (:mod:`cxrsem.statistics.boxes`) so box and mask sets can be compared fairly.
    """

    needs_root: bool = False
    annotation: str = "masks"

    def __post_init__(self) -> None:
        if self.annotation not in ANNOTATIONS:
            raise ValueError(f"concept set {self.name!r}: annotation must be one of "
                             f"{', '.join(ANNOTATIONS)}, not {self.annotation!r}")


@dataclass(frozen=True)
class LossInfo(_Component):
    """A training loss for one or more task kinds (``tasks``, in order of preference).

    ``factory(*, train_targets, **options)`` returns an ``nn.Module`` called as
    ``loss(logits, targets, target_mask=None) -> scalar``; ``train_targets`` holds every training
    target of the task (for losses that weight by training-set frequency) and may be ignored.
    """

    tasks: tuple[str, ...] = ("multilabel",)


@dataclass(frozen=True)
class ArchitectureInfo(_Component):
    """A model architecture.

    ``factory(*, num_outputs, in_channels, **options)`` returns an ``nn.Module`` mapping
    ``[B, in_channels, S, S]`` to ``[B, num_outputs]``.  ``load_imagenet(model, path)`` (optional)
    loads ImageNet weights from a local file into such a model; ``imagenet_filename`` names the file
    torchvision would cache, so cxrsem can look for it without touching the network.
    ``default_layer`` (a full module path) is the layer used when a command is given none.
    """

    load_imagenet: Callable[[Any, Any], None] | None = None
    imagenet_filename: str | None = None
    # The layer a dissection or attribution reads when none is named (``--layer`` omitted): the
    # paper's last dense block for DenseNets, the last block for ResNets and ViTs.
    default_layer: str | None = None


@dataclass(frozen=True)
class ModelSourceInfo(_Component):
    """A source of ready-made models, addressed as ``--model NAME:SPEC`` (``xrv:densenet121-res224-all``).

    ``factory(*, spec, **options)`` returns a checkpoint dict in the ``cxrsem-checkpoint/1`` schema
    (see :mod:`cxrsem.checkpoint`): ``arch`` names a registered architecture whose ``factory`` rebuilds
    the model, ``state_dict`` holds its weights, ``task`` its output names and ``input`` its size,
    channels and normalisation.  Everything downstream (dissect, attribute, report) then treats the
    model exactly like one cxrsem trained.  ``specs`` lists the SPEC values the source knows, for
    ``cxrsem plugins`` and error messages.  Weights must come from local files: a missing file is a
    :class:`~cxrsem.errors.CheckpointError` naming the path expected, never a download.
    """

    specs: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttributionMethodInfo(_Component):
    """A semantic attribution method (``cxrsem attribute --method NAME``, paper Sec. 2.3).

    ``factory(**options)`` checks its options and returns the method, a callable
    ``method(split, images, *, values, columns, batch_size, progress=None) -> LayerAttribution``
    (:class:`cxrsem.attribution.methods.LayerAttribution`): ``split`` is the model cut at the
    explained layer (:class:`cxrsem.engine.split.Split`), ``images`` a batch of model-ready inputs,
    the explained scalar of image ``n`` is ``values(logits)[n, columns[n]]`` (``columns`` is a
    tensor or a function of the logits at the layer's activations).  The result holds the per-unit
    maps ``s`` (``[N, K, h, w]``) and, where the method defines them, ``f(A)``, ``f(0)`` (for the
    completeness check), the logits and the columns explained.  Units are scored by ``sum |s|``
    (:func:`cxrsem.attribution.methods.unit_scores`).  ``baseline`` describes what the
    attribution is measured against (``"zero activations"``), or ``None``; it is recorded with
    every result.
    """

    baseline: str | None = None


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component: everything the registry, the Python API and ``cxrsem plugins``
    need to know about it, declared once in :data:`KINDS`.

    ``key`` names the kind in the registry (``registry.get(key, name)``) and the Python API
    (``get_<key>``, ``create_<key>``); ``hook`` is its hook in :mod:`cxrsem.hookspecs`;
    ``label`` and ``plural`` are its words in messages (``plural`` with ``_`` for spaces is also
    the ``list_<plural>`` function).
    """

    key: str
    info_class: type[_Component]
    hook: str
    label: str
    plural: str

    @property
    def list_name(self) -> str:
        return "list_" + self.plural.replace(" ", "_")


KINDS: Mapping[str, ComponentKind] = {kind.key: kind for kind in (
    ComponentKind("dataset", DatasetInfo, "register_datasets", "dataset", "datasets"),
    ComponentKind("concept_set", ConceptSetInfo, "register_concept_sets", "concept set",
                  "concept sets"),
    ComponentKind("loss", LossInfo, "register_losses", "loss", "losses"),
    ComponentKind("architecture", ArchitectureInfo, "register_architectures", "architecture",
                  "architectures"),
    ComponentKind("model_source", ModelSourceInfo, "register_model_sources", "model source",
                  "model sources"),
    ComponentKind("attribution_method", AttributionMethodInfo, "register_attribution_methods",
                  "attribution method", "attribution methods"),
)}

COMPONENT_KINDS: Mapping[str, type[_Component]] = {key: kind.info_class for key, kind in KINDS.items()}


@dataclass
class Registration:
    """What one plugin registered, for ``cxrsem plugins``."""

    plugin: str
    version: str | None
    source: str  # "built-in" or the distribution name
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
