"""Hook specifications: the whole plugin API of cxrsem.

A plugin is a module (or object) with functions named like the hooks below, decorated with
``cxrsem.hookimpl``, and announced through the ``cxrsem`` entry-point group::

    [project.entry-points.cxrsem]
    my_plugin = "my_package.cxrsem_plugin"

Each hook receives a ``register`` callback; call it once per component with a registration object
from :mod:`cxrsem.components`.  The built-in components are registered through these same hooks.
Each hook is one row of :data:`cxrsem.components.KINDS`, which ties it to its registration class.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from cxrsem.components import (
    ArchitectureInfo,
    AttributionMethodInfo,
    ConceptSetInfo,
    DatasetInfo,
    LossInfo,
    ModelSourceInfo,
)

hookspec = pluggy.HookspecMarker("cxrsem")
hookimpl = pluggy.HookimplMarker("cxrsem")


@hookspec
def register_datasets(register: Callable[[DatasetInfo], None]) -> None:
    """Register training datasets: ``register(DatasetInfo(name=..., factory=..., tasks=...))``."""


@hookspec
def register_concept_sets(register: Callable[[ConceptSetInfo], None]) -> None:
    """Register annotation sources for dissection: ``register(ConceptSetInfo(...))``."""


@hookspec
def register_losses(register: Callable[[LossInfo], None]) -> None:
    """Register training losses: ``register(LossInfo(name=..., factory=..., task=...))``."""


@hookspec
def register_architectures(register: Callable[[ArchitectureInfo], None]) -> None:
    """Register model architectures: ``register(ArchitectureInfo(name=..., factory=...))``."""


@hookspec
def register_model_sources(register: Callable[[ModelSourceInfo], None]) -> None:
    """Register sources of ready-made models (``--model NAME:SPEC``): ``register(ModelSourceInfo(...))``."""


@hookspec
def register_attribution_methods(register: Callable[[AttributionMethodInfo], None]) -> None:
    """Register semantic attribution methods (``cxrsem attribute --method NAME``):
    ``register(AttributionMethodInfo(name=..., factory=...))``."""
