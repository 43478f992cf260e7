"""``cxrsem plugins new``: write a ready-to-install plugin package for one kind of component.

:func:`new_plugin` writes, for ``new_plugin("cxrsem-shapes", "dataset")``::

    cxrsem-shapes/
      pyproject.toml                 [project.entry-points.cxrsem] shapes = "cxrsem_shapes.plugin"
      README.md                      install, use, what each file is for
      src/cxrsem_shapes/__init__.py
      src/cxrsem_shapes/plugin.py    the hook (``register_datasets``) registering one component
      src/cxrsem_shapes/dataset.py   the component: a working example honouring the kind's contract
      tests/conftest.py              cxrsem's test kit (``cxrsem.testing.pytest_plugin``)
      tests/test_cxrsem_shapes.py    the contract checks of ``cxrsem.testing.contracts`` and more

The distribution is the given NAME, the module its normalised form (``cxrsem_shapes``), and the
component and entry point are named NAME without a leading ``cxrsem-`` (``shapes``).  The tests
pass as generated, before the package is installed (pytest puts ``src`` on the path), and the
package installs with ``pip install -e``.  Nothing is ever overwritten: the folder must be new or
empty, and is written elsewhere first and moved into place whole.

The templates below are the generated files with ``$placeholders`` (:class:`string.Template`);
their names are in :func:`_placeholders`.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from cxrsem.components import KINDS
from cxrsem.errors import UsageError

__all__ = ["PLUGIN_KINDS", "NewPlugin", "PluginNames", "new_plugin", "plugin_names", "render_plugin"]

PLUGIN_KINDS = ("dataset", "concept-set", "loss", "architecture", "model-source")
"""The kinds ``cxrsem plugins new --kind`` writes an example of (keys of :data:`KINDS` with ``-``)."""

# PEP 508 names: ASCII letters and digits, with '-', '_' and '.' inside.
_DISTRIBUTION_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class PluginNames:
    """The names of one generated plugin.

    ``distribution`` is NAME as given (``pyproject.toml``'s ``name``, the default folder);
    ``module`` the import name (PEP 503 normalised, ``_`` for separators); ``component`` what
    users type (``--dataset shapes``) and the entry-point name (``cxrsem plugins``,
    ``CXRSEM_DISABLE_PLUGINS``).
    """

    distribution: str
    module: str
    component: str


@dataclass(frozen=True)
class NewPlugin:
    """What :func:`new_plugin` wrote: the package folder and its files (relative, POSIX)."""

    path: Path
    kind: str
    names: PluginNames
    files: tuple[str, ...]


def _kind(kind: str) -> str:
    from cxrsem.plugins import unknown_name_message

    normalised = kind.strip().lower().replace("_", "-")
    if normalised not in PLUGIN_KINDS:
        raise UsageError(unknown_name_message("plugin kind", kind, PLUGIN_KINDS))
    return normalised


def plugin_names(name: str, kind: str | None = None) -> PluginNames:
    """The names of plugin ``name``, or a :class:`UsageError` saying why ``name`` cannot be one."""
    if not _DISTRIBUTION_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid distribution name: use ASCII letters, digits, '-', '_' and '.', "
            f"starting and ending with a letter or digit (e.g. cxrsem-my-dataset)")
    module = re.sub(r"[-_.]+", "_", name).lower()
    if not module.isidentifier() or keyword.iskeyword(module):
        why = "a Python keyword" if keyword.iskeyword(module) else "not a Python identifier"
        raise UsageError(f"plugin name {name!r} gives the module name {module!r}, which is {why}; "
                         f"start it with a letter, e.g. 'cxrsem-{name}'")
    if module == "cxrsem":
        raise UsageError(f"plugin name {name!r} would shadow cxrsem itself; choose another name, e.g. "
                         f"'cxrsem-my-plugin'")
    if module in sys.stdlib_module_names:
        raise UsageError(f"plugin name {name!r} gives the module name {module!r}, which would shadow "
                         f"a standard-library module; choose another name, e.g. 'cxrsem-{name}'")
    slug = re.sub(r"[-_.]+", "-", name).lower()
    component = slug.removeprefix("cxrsem-") or slug
    if kind is not None and _kind(kind) == "model-source" and len(component) < 2:
        # --model X:SPEC with a one-letter X reads as a Windows drive letter, i.e. a file path
        raise UsageError(f"a model source needs a name of at least 2 characters (--model NAME:SPEC), "
                         f"not {component!r}")
    return PluginNames(distribution=name, module=module, component=component)


def _check_free(names: PluginNames, kind: str) -> None:
    """Refuse names another module, plugin or component already uses (they would clash once the
    new package is installed)."""
    from cxrsem.plugins import get_registry

    found = importlib.util.find_spec(names.module)
    if found is not None:
        where = found.origin or ", ".join(found.submodule_search_locations or []) or "?"
        raise UsageError(f"the module name {names.module!r} is already taken by an installed module "
                         f"({where}); choose another plugin name")
    registry = get_registry()
    key = kind.replace("-", "_")
    owner = registry.owners.get((key, names.component))
    if owner is not None:
        raise UsageError(f"a {KINDS[key].label} named {names.component!r} is already registered by "
                         f"{owner!r}; choose another plugin name")
    if any(record.plugin == names.component for record in registry.plugins):
        raise UsageError(f"a plugin named {names.component!r} is already installed (see cxrsem "
                         f"plugins); choose another plugin name")


def _placeholders(names: PluginNames, kind: str) -> dict[str, str]:
    from cxrsem import __version__

    entry = KINDS[kind.replace("-", "_")]
    template = _TEMPLATES[kind]
    return {
        "dist": names.distribution,
        "module": names.module,
        "name": names.component,  # the component and the entry point
        "kind": kind,  # as given to --kind
        "label": entry.label,
        "plural": entry.plural,
        "info": entry.info_class.__name__,
        "hook": entry.hook,
        "impl": template.impl,
        "summary": template.summary,
        "address": template.address.format(name=names.component),
        "weights_env": f"{names.module.upper()}_WEIGHTS",
        "cxrsem_version": __version__,
    }


def render_plugin(name: str, kind: str) -> dict[str, str]:
    """The files of plugin ``name`` of ``kind`` (relative POSIX path -> text), not written."""
    kind = _kind(kind)
    names = plugin_names(name, kind)
    values = _placeholders(names, kind)
    template = _TEMPLATES[kind]
    module = f"src/{names.module}"
    sources = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README.replace("$usage", template.usage.strip("\n")),
        f"{module}/__init__.py": _INIT,
        f"{module}/plugin.py": template.plugin,
        f"{module}/{template.impl}.py": template.implementation,
        "tests/conftest.py": _CONFTEST,
        f"tests/test_{names.module}.py": template.tests,
    }
    return {path: Template(text.lstrip("\n")).substitute(values) for path, text in sources.items()}


def new_plugin(name: str, kind: str, out: str | Path | None = None) -> NewPlugin:
    """Write plugin package ``name`` with one working example component of ``kind`` into ``out``
    (default: a folder ``name`` in the working directory), which must be new or empty."""
    kind = _kind(kind)
    names = plugin_names(name, kind)
    _check_free(names, kind)
    files = render_plugin(name, kind)
    target = Path(names.distribution if out is None else out)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{str(target)!r} exists and is a file; choose another --out")
    if target.is_dir() and any(target.iterdir()):
        raise UsageError(f"{str(target)!r} exists and is not empty; a new plugin never overwrites "
                         f"anything: choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written next to the target and moved into place whole: an interrupted run leaves no half package.
    staging = target.parent / f".{target.name}.new-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        _move_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return NewPlugin(path=target, kind=kind, names=names, files=tuple(sorted(files)))


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, which may exist only as an empty folder (POSIX renames
    onto an empty folder in one step; elsewhere the empty folder is removed first)."""
    try:
        staging.rename(target)
        return
    except OSError:
        if not target.is_dir() or any(target.iterdir()):
            if target.exists():
                raise UsageError(f"{str(target)!r} was filled while the plugin was written; nothing "
                                 f"was overwritten: choose another --out") from None
            raise
    target.rmdir()
    staging.rename(target)



@dataclass(frozen=True)
class _KindTemplate:
    impl: str  # module of the component, next to plugin.py
    summary: str  # what the example component is, for the README and pyproject
    address: str  # how a user names it on the command line ({name}: the component's name)
    plugin: str
    implementation: str
    tests: str
    usage: str  # the README's "Use" section


# --- files every plugin has --------------------------------------------------------------------------
# Placeholders stand on short lines, so that the generated files stay within 110 columns for any
# reasonable name; the Python files name the component once, in a NAME constant.

_PYPROJECT = r'''
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "cxrsem plugin: the $label $name, $summary"
readme = "README.md"
requires-python = ">=3.11"
# No torch pin of its own: cxrsem pins torch, and the plugin runs with whatever cxrsem brings (a
# different pin here could pull a second multi-GB torch).
dependencies = ["cxrsem>=$cxrsem_version", "torch"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The line that makes this a cxrsem plugin: cxrsem loads every module of the "cxrsem" group.  The
# entry-point name is the plugin's name in `cxrsem plugins` and CXRSEM_DISABLE_PLUGINS.
[project.entry-points.cxrsem]
$name = "$module.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]  # the tests also run from a bare checkout, before `pip install -e .`
addopts = "-ra"
filterwarnings = ["ignore::DeprecationWarning:torch.*"]

[tool.ruff]
line-length = 110
target-version = "py311"
src = ["src"]

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM"]

[tool.ruff.lint.isort]
# To this package cxrsem is a third-party dependency like torch, whatever folder ruff runs from.
known-first-party = ["$module"]
known-third-party = ["cxrsem"]
'''

_INIT = r'''
"""$dist: a cxrsem plugin adding one $label.

``$name`` ($address): $summary.

cxrsem finds the plugin through the ``cxrsem`` entry point in ``pyproject.toml``, which names
:mod:`$module.plugin`; the $label itself is in
:mod:`$module.$impl`.  cxrsem's core never imports either: it asks its
registry for the name.
"""

__version__ = "0.1.0"
'''

_PLUGIN_DOC = r'''
"""The plugin module: the ``cxrsem`` entry point in ``pyproject.toml`` names it.

cxrsem calls each hook once when it builds its registry, passing a ``register`` callback; each
call of ``register`` adds one component under the name users type -- here the $label
``$name`` ($address).
cxrsem imports this module for every command, ``--help`` included: keep it cheap to import, and
raise errors in the factory, not here.
"""
'''

_CONFTEST = r'''
"""Fixtures of this plugin's tests.

``cxrsem.testing.pytest_plugin`` is cxrsem's kit for plugin authors: ``register_plugin`` puts a
plugin into cxrsem's registry for one test (and disables the installed entry point of the same
module meanwhile, so that the code under test is what runs), ``tiny_phantom`` gives a few small
phantom images and ``one_thread`` runs a module on one torch thread.  ``pytest_plugins`` must sit
in the top-level conftest of a test run: run the tests from this package's folder.
"""

from __future__ import annotations

import pytest

import $module.plugin

pytest_plugins = ["cxrsem.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def plugin(register_plugin):
    """This checkout's plugin in cxrsem's registry, registered the way cxrsem registers every plugin
    (under a name of its own: the installed entry point's name is taken by the installed copy)."""
    return register_plugin($module.plugin, "$name-under-test")
'''

_README = r'''
# $dist

A cxrsem plugin that adds the $label `$name`: $summary.

It was written by `cxrsem plugins new $dist --kind $kind` and works as generated: install it,
run its tests, try it on the command line -- then replace the example with your own $label,
keeping the contract its tests check.

## Install and check

```
pip install -e .          # into the environment that has cxrsem
cxrsem plugins            # lists the plugin `$name`, registering "$plural: $name"
python -m pytest          # the contract tests (they also run before installing)
```

## Use

$usage

## What each file is for

| file | what |
|---|---|
| `pyproject.toml` | the entry point `$name = "$module.plugin"` (group `cxrsem`): what makes this a plugin |
| `src/$module/plugin.py` | the hook `$hook`, registering a `$info` (name, factory, options, description) |
| `src/$module/$impl.py` | the $label itself |
| `tests/conftest.py` | cxrsem's test kit: `register_plugin`, `tiny_phantom`, `one_thread` |
| `tests/test_$module.py` | cxrsem's contract checks (`cxrsem.testing.contracts`) and tests of this $label |

Keep `plugin.py` cheap to import -- cxrsem imports every installed plugin for every command,
`--help` included -- and raise errors in the factory, not at import.  Errors a user can act on are
`cxrsem.errors` exceptions (`UsageError` for a bad option, `DataError` for bad files,
`CheckpointError` for weights); cxrsem prints them as one line.  `CXRSEM_DISABLE_PLUGINS=$name`
runs cxrsem without this plugin.  cxrsem's `docs/plugins.md` and the guide in
`plugins/cxrsem-example/README.md` describe every hook and field.
'''


# --- shared by the dataset and the concept set ----------------------------------------------------------

# Both draw the same synthetic images; the concept set also returns the shapes as masks.
_SHAPES = r'''
SHAPES = ["disc", "bar"]


def layout(generator: torch.Generator) -> dict[str, tuple[float, ...] | None]:
    """Which shapes one image holds and where, in coordinates of the unit square: the disc as
    ``(cx, cy, radius)``, the bar as ``(x0, y0, x1, y1)``; None when the image lacks it."""
    u = torch.rand(5, generator=generator).tolist()
    disc = (0.3 + 0.4 * u[1], 0.3 + 0.4 * u[2], 0.15) if u[0] < 0.5 else None
    y = 0.2 + 0.6 * u[4]
    bar = (0.1, y - 0.1, 0.9, y + 0.1) if u[3] < 0.5 else None
    return {"disc": disc, "bar": bar}


def shape_masks(shapes: dict[str, tuple[float, ...] | None], size: int) -> torch.Tensor:
    """Bool ``[len(SHAPES), size, size]``: the pixels whose centres lie inside each shape.

    Every shape is at least 0.2 of the image across, so one that is present covers a pixel at any
    size from 8 x 8 up.
    """
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    masks = torch.zeros(len(SHAPES), size, size, dtype=torch.bool)
    if shapes["disc"] is not None:
        cx, cy, radius = shapes["disc"]
        masks[0] = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    if shapes["bar"] is not None:
        x0, y0, x1, y1 = shapes["bar"]
        masks[1] = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return masks


def draw(shapes: dict[str, tuple[float, ...] | None], size: int,
         generator: torch.Generator) -> torch.Tensor:
    """The image, float32 ``[1, size, size]`` in [0, 1]: a dim noisy background, the disc and the
    bar brighter, brightest where they overlap."""
    regions = shape_masks(shapes, size).float()
    noise = torch.rand(1, size, size, generator=generator)
    return (0.2 + 0.1 * noise + 0.4 * regions[0] + 0.3 * regions[1]).clamp(0.0, 1.0)


def stable_seed(*parts: object) -> int:
    """A seed for one image from its identity (Python's ``hash()`` differs between processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")
'''


# --- dataset --------------------------------------------------------------------------------------------

_DATASET_PLUGIN = _PLUGIN_DOC + r'''
from __future__ import annotations

from cxrsem import DatasetInfo, Option, hookimpl

from $module.dataset import NAME, create_shapes_dataset


@hookimpl
def register_datasets(register) -> None:
    register(DatasetInfo(
        name=NAME,
        factory=create_shapes_dataset,
        # the task kinds the dataset can feed; the training loop picks the first one the loss takes
        tasks=("multilabel", "binary"),
        options=(
            Option("n_images", int, 32, "images in the train split (val and test: a quarter each)"),
        ),
        description="synthetic images with a disc, a bar, both or neither (an example to replace)",
    ))
'''

_DATASET_IMPL = r'''
"""The dataset of this plugin: synthetic grey images holding a disc, a bar, both or neither.

It honours cxrsem's training-dataset contract (:mod:`cxrsem.components`): ``outputs`` names the
model outputs of every task the dataset feeds, item ``i`` is ``{"image": float32 [1, S, S] in
[0, 1], "targets": {task: tensor}, "id": str}``, and ``targets(task)`` gives every target at once
without drawing images.  Each image comes from a generator seeded by (seed, split, index), so the
same arguments always give the same images.  To use your own data, read your files where this
draws shapes (declare ``needs_root=True`` in ``plugin.py`` to receive the folder as ``root``) and
keep the attributes and the item dict as they are.
"""

from __future__ import annotations

import hashlib

import torch
from cxrsem.errors import UsageError

NAME = "$name"  # what users type: --dataset NAME
SPLITS = ("train", "val", "test")
''' + _SHAPES + r'''

class ShapesDataset(torch.utils.data.Dataset):
    """``n_images`` training images (a quarter as many in val and test), labelled by their shapes."""

    def __init__(self, *, split: str, image_size: int, seed: int, n_images: int) -> None:
        self.split, self.image_size, self.seed = split, image_size, seed
        self.length = n_images if split == "train" else max(1, n_images // 4)
        # multilabel: one output per shape; binary: one output, 1 = any shape ("unhealthy")
        self.outputs = {"multilabel": list(SHAPES), "binary": ["abnormal"]}

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(stable_seed(self.seed, self.split, index))

    @staticmethod
    def _targets(shapes: dict[str, tuple[float, ...] | None]) -> dict[str, torch.Tensor]:
        present = torch.tensor([shapes[shape] is not None for shape in SHAPES], dtype=torch.float32)
        return {"multilabel": present, "binary": present.amax().reshape(1)}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        generator = self._generator(index)
        shapes = layout(generator)
        # A dataset with unknown labels adds "target_masks": {task: bool tensor}, False = unknown.
        return {"image": draw(shapes, self.image_size, generator), "targets": self._targets(shapes),
                "id": f"{self.split}-{index:04d}"}

    def targets(self, task: str) -> torch.Tensor:
        """Every sample's target of ``task`` (for losses weighted by the training set), no images drawn."""
        return torch.stack([self._targets(layout(self._generator(i)))[task] for i in range(len(self))])

    def describe(self) -> str:
        counts = self.targets("multilabel").sum(dim=0).int().tolist()
        found = ", ".join(f"{shape} {count}" for shape, count in zip(SHAPES, counts, strict=True))
        return f"{NAME} {self.split}: {len(self)} synthetic images at {self.image_size} px ({found})"


def create_shapes_dataset(*, split: str, image_size: int, root: object, seed: int,
                          n_images: int) -> ShapesDataset:
    """``DatasetInfo.factory``: cxrsem passes ``split``, ``image_size``, ``root`` (None here: the
    dataset declares no ``needs_root``), ``seed`` and each declared option, already typed."""
    if n_images < 1:
        raise UsageError(f"dataset {NAME!r}: option 'n_images' must be at least 1, got {n_images}")
    if split not in SPLITS:
        raise UsageError(f"dataset {NAME!r}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return ShapesDataset(split=split, image_size=image_size, seed=seed, n_images=n_images)
'''

_DATASET_TESTS = r'''
"""The dataset against cxrsem's training-dataset contract, created by name as cxrsem's training
loop creates it."""

from __future__ import annotations

import cxrsem
import pytest
import torch
from cxrsem.errors import UsageError
from cxrsem.testing.contracts import check_training_dataset

from $module.dataset import NAME

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_its_tasks_and_options():
    info = cxrsem.plugins.get_dataset(NAME)
    assert info.tasks == ("multilabel", "binary")
    assert info.defaults() == {"n_images": 32}
    assert info.description


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_contract(split):
    dataset = cxrsem.create_dataset(NAME, split=split, image_size=32, n_images=8)
    check_training_dataset(dataset, NAME, 32)
    assert len(dataset) == (8 if split == "train" else 2)


def test_targets_agree_with_the_items():
    dataset = cxrsem.create_dataset(NAME, split="train", image_size=16, n_images=8)
    for task in dataset.outputs:
        every = dataset.targets(task)
        for i in range(len(dataset)):
            assert torch.equal(every[i], dataset[i]["targets"][task])
    labels = dataset.targets("multilabel")
    assert torch.equal(dataset.targets("binary")[:, 0], labels.amax(dim=1))
    assert 0 < labels.sum() < labels.numel()  # both present and absent shapes


def test_the_same_arguments_give_the_same_images_and_splits_differ():
    def first(split, seed=0):
        return cxrsem.create_dataset(NAME, split=split, image_size=16, seed=seed)[0]["image"]

    assert torch.equal(first("train"), first("train"))
    assert not torch.equal(first("train"), first("val"))
    assert not torch.equal(first("train"), first("train", seed=1))


def test_bad_option_is_a_usage_error():
    with pytest.raises(UsageError, match="'n_images' must be at least 1"):
        cxrsem.create_dataset(NAME, n_images=0)
'''

_DATASET_USAGE = r'''
Train a small model on it, then dissect it against the built-in phantom concepts (both sized
to run on a CPU in about a minute):

```
cxrsem train --dataset $name --dataset-opt n_images=64 --arch densenet-mini \
    --image-size 64 --epochs 2 --batch-size 16 --device cpu --out runs/$name
cxrsem dissect --model runs/$name/best.pt --layer denseblock4 --concepts phantom \
    --concept-opt phantom.n_images=64 --seg-size 16 --device cpu --out runs/$name-dissect
```

From Python: `cxrsem.create_dataset("$name", split="train", image_size=64)`.
'''


# --- concept set ----------------------------------------------------------------------------------------

_CONCEPTS_PLUGIN = _PLUGIN_DOC + r'''
from __future__ import annotations

from cxrsem import ConceptSetInfo, Option, hookimpl

from $module.concepts import NAME, create_shapes_concept_set


@hookimpl
def register_concept_sets(register) -> None:
    register(ConceptSetInfo(
        name=NAME,
        factory=create_shapes_concept_set,
        # "masks": outlines of the concepts themselves; "boxes" for filled bounding boxes
        annotation="masks",
        options=(Option("n_images", int, 16, "images in the set"),),
        description="synthetic images with masks of their disc and bar (an example to replace)",
    ))
'''

_CONCEPTS_IMPL = r'''
"""The concept set of this plugin: synthetic grey images and masks of the shapes they hold.

It honours cxrsem's concept-set contract (:mod:`cxrsem.components`): ``concepts`` lists the
concepts, item ``i`` is ``{"image": float32 [1, S, S] in [0, 1], "masks": bool [C, M, M], "id":
str}`` with one separate mask channel per concept (overlapping annotations count for every concept
they belong to) at the annotation size M that dissection asks for, and ``groups()`` names the
patient of every item, so that dissection's bootstrap resamples patients.  To use your own
annotations, read your images and masks where this draws shapes (declare ``needs_root=True`` in
``plugin.py`` to receive the folder as ``root``) and keep the attributes and the item dict.
"""

from __future__ import annotations

import hashlib

import torch
from cxrsem.errors import UsageError

NAME = "$name"  # what users type: --concepts NAME
''' + _SHAPES + r'''

class ShapesConceptSet(torch.utils.data.Dataset):
    """``n_images`` synthetic images, each with a mask channel per shape (empty where it is absent)."""

    concepts = list(SHAPES)

    def __init__(self, *, image_size: int, mask_size: int, seed: int, n_images: int) -> None:
        self.image_size, self.mask_size, self.seed, self.length = image_size, mask_size, seed, n_images

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        generator = torch.Generator().manual_seed(stable_seed(self.seed, index))
        shapes = layout(generator)
        # The masks are drawn from the same shapes as the image, at the annotation size.
        return {"image": draw(shapes, self.image_size, generator),
                "masks": shape_masks(shapes, self.mask_size), "id": f"shapes-{index:04d}"}

    def groups(self) -> list[str]:
        """The patient of every item: here two consecutive images belong to one synthetic patient."""
        return [f"patient-{index // 2:04d}" for index in range(len(self))]


def create_shapes_concept_set(*, image_size: int, mask_size: int, root: object, seed: int,
                              n_images: int) -> ShapesConceptSet:
    """``ConceptSetInfo.factory``: cxrsem passes ``image_size``, ``mask_size``, ``root`` (None here:
    the set declares no ``needs_root``), ``seed`` and each declared option, already typed."""
    if n_images < 1:
        raise UsageError(f"concept set {NAME!r}: option 'n_images' must be at least 1, got {n_images}")
    return ShapesConceptSet(image_size=image_size, mask_size=mask_size, seed=seed, n_images=n_images)
'''

_CONCEPTS_TESTS = r'''
"""The concept set against cxrsem's concept-set contract, created by name as ``cxrsem dissect``
creates it."""

from __future__ import annotations

import cxrsem
import pytest
import torch
from cxrsem.errors import UsageError
from cxrsem.testing.contracts import check_concept_set

from $module.concepts import NAME

pytestmark = pytest.mark.usefixtures("one_thread")


def create(**options):
    return cxrsem.create_concept_set(NAME, **{"image_size": 32, "mask_size": 8, **options})


def test_registered_as_a_mask_concept_set():
    info = cxrsem.plugins.get_concept_set(NAME)
    assert info.annotation == "masks" and not info.needs_root
    assert info.description


@pytest.mark.parametrize("mask_size", [8, 16])
def test_contract(mask_size):
    check_concept_set(create(mask_size=mask_size), NAME, 32, mask_size)


def test_every_concept_occurs_and_the_masks_lie_on_the_bright_shapes():
    concept_set = create(mask_size=32)  # masks at the image size: pixel for pixel
    seen = dict.fromkeys(concept_set.concepts, 0)
    for i in range(len(concept_set)):
        item = concept_set[i]
        image, masks = item["image"][0], item["masks"]
        for concept, mask in zip(concept_set.concepts, masks, strict=True):
            if mask.any():
                seen[concept] += 1
                assert image[mask].mean() > image[~masks.any(dim=0)].mean() + 0.2
    assert all(seen.values()), seen


def test_groups_name_one_patient_per_pair_of_images():
    groups = create(n_images=5).groups()
    assert groups == ["patient-0000", "patient-0000", "patient-0001", "patient-0001", "patient-0002"]


def test_the_same_seed_gives_the_same_items():
    assert torch.equal(create()[3]["image"], create()[3]["image"])
    assert torch.equal(create()[3]["masks"], create()[3]["masks"])
    assert not torch.equal(create()[3]["image"], create(seed=1)[3]["image"])


def test_bad_option_is_a_usage_error():
    with pytest.raises(UsageError, match="'n_images' must be at least 1"):
        create(n_images=0)
'''

_CONCEPTS_USAGE = r'''
Dissect a model against it -- here a small model trained on the built-in phantom (both sized to
run on a CPU in about a minute):

```
cxrsem train --dataset phantom --dataset-opt n_train=128 --dataset-opt n_val=32 \
    --arch densenet-mini --image-size 64 --epochs 1 --batch-size 16 --device cpu \
    --out runs/phantom-mini
cxrsem dissect --model runs/phantom-mini/best.pt --layer denseblock4 --concepts $name \
    --concept-opt $name.n_images=32 --seg-size 16 --device cpu --out runs/$name-dissect
```

From Python: `cxrsem.create_concept_set("$name", image_size=64, mask_size=16)`.
'''


# --- loss -----------------------------------------------------------------------------------------------

_LOSS_PLUGIN = _PLUGIN_DOC + r'''
from __future__ import annotations

from cxrsem import LossInfo, Option, hookimpl

from $module.loss import NAME, create_smoothed_bce


@hookimpl
def register_losses(register) -> None:
    register(LossInfo(
        name=NAME,
        factory=create_smoothed_bce,
        # the task kinds the loss handles, in order of preference
        tasks=("multilabel", "binary"),
        options=(
            Option("smoothing", float, 0.1, "label smoothing e: a target y counts as y (1 - e) + e / 2"),
        ),
        description="binary cross-entropy with label smoothing, mean over known labels",
    ))
'''

_LOSS_IMPL = r'''
"""The loss of this plugin: binary cross-entropy against label-smoothed targets.

With smoothing ``e`` every target ``y`` becomes ``y (1 - e) + e / 2`` (label smoothing, Szegedy et
al. 2016, applied per label), so that a confidently wrong label costs less.  It honours cxrsem's
loss contract (:class:`cxrsem.components.LossInfo`): called as ``loss(logits, targets,
target_mask=None)`` with logits and targets of one shape (``[B, C]`` multilabel, ``[B, 1]``
binary), it returns a scalar: the mean over the known labels (``target_mask`` True; None = all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from cxrsem.errors import UsageError
from torch import nn

NAME = "$name"  # what users type: --loss NAME


class SmoothedBCELoss(nn.Module):
    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                target_mask: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise UsageError(f"loss {NAME!r}: logits {tuple(logits.shape)} and targets "
                             f"{tuple(targets.shape)} must have one shape")
        known = (torch.ones_like(targets, dtype=torch.bool) if target_mask is None
                 else target_mask.to(device=targets.device, dtype=torch.bool))
        # An unknown target may hold anything, NaN included: replace it before it meets the logits,
        # or its NaN would reach the gradient through the masked-out terms.
        targets = torch.where(known, targets, torch.zeros_like(targets))
        smoothed = targets * (1 - self.smoothing) + self.smoothing / 2
        per_label = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none")
        # A batch with no known label gives 0, still differentiable: training steps over it.
        return (per_label * known).sum() / known.sum().clamp(min=1)


def create_smoothed_bce(*, train_targets: torch.Tensor | None, smoothing: float) -> SmoothedBCELoss:
    """``LossInfo.factory``: cxrsem passes ``train_targets`` (every training target of the task, for
    losses weighted by label frequency; not needed here) and each declared option, already typed."""
    if not 0.0 <= smoothing < 1.0:
        raise UsageError(f"loss {NAME!r}: option 'smoothing' must be in [0, 1), got {smoothing}")
    return SmoothedBCELoss(smoothing)
'''

_LOSS_TESTS = r'''
"""The loss against cxrsem's loss contract and a hand computation, created by name as cxrsem's
training loop creates it."""

from __future__ import annotations

import cxrsem
import pytest
import torch
import torch.nn.functional as F
from cxrsem.errors import UsageError
from cxrsem.testing.contracts import check_loss

from $module.loss import NAME

# A 2x2 batch: (sample, label) -> logit z, target y.
LOGITS = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
# BCE with logits is softplus(z) - y' z; with smoothing 0.2, y' = 0.9 for y = 1 and 0.1 for y = 0:
#   z=2,   y'=0.9: 2.126928 - 1.8  = 0.326928
#   z=-1,  y'=0.1: 0.313262 + 0.1  = 0.413262
#   z=0.5, y'=0.1: 0.974077 - 0.05 = 0.924077
#   z=3,   y'=0.9: 3.048587 - 2.7  = 0.348587
PER_LABEL = torch.tensor([[0.326928, 0.413262], [0.924077, 0.348587]])


def test_registered_for_both_classification_tasks():
    info = cxrsem.plugins.get_loss(NAME)
    assert info.tasks == ("multilabel", "binary")
    assert info.defaults() == {"smoothing": 0.1}


@pytest.mark.parametrize("task", ["multilabel", "binary"])
def test_contract(task):
    check_loss(NAME, task)


def test_matches_the_hand_computed_2x2_example():
    loss = cxrsem.create_loss(NAME, smoothing=0.2)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(PER_LABEL.mean().item(), abs=1e-6)


def test_no_smoothing_is_binary_cross_entropy():
    loss = cxrsem.create_loss(NAME, smoothing=0.0)
    expected = F.binary_cross_entropy_with_logits(LOGITS, TARGETS)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unknown_labels_do_not_count_and_send_no_gradient():
    known = torch.tensor([[True, False], [True, True]])
    targets = TARGETS.clone()
    targets[0, 1] = float("nan")  # an unknown target may hold anything
    logits = LOGITS.clone().requires_grad_(True)
    value = cxrsem.create_loss(NAME, smoothing=0.2)(logits, targets, known)
    assert value.item() == pytest.approx((0.326928 + 0.924077 + 0.348587) / 3, abs=1e-6)
    value.backward()
    assert logits.grad[0, 1] == 0 and torch.all(logits.grad[known] != 0)


def test_a_batch_with_nothing_known_is_zero_and_still_differentiable():
    logits = LOGITS.clone().requires_grad_(True)
    value = cxrsem.create_loss(NAME)(logits, TARGETS, torch.zeros(2, 2, dtype=torch.bool))
    value.backward()
    assert value.item() == 0 and torch.equal(logits.grad, torch.zeros(2, 2))


def test_works_on_phantom_targets(tiny_phantom):
    loss = cxrsem.create_loss(NAME)
    for task in ("multilabel", "binary"):
        targets = tiny_phantom.targets(task)
        assert torch.isfinite(loss(torch.randn(targets.shape), targets))


def test_bad_option_and_mismatched_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="'smoothing' must be in"):
        cxrsem.create_loss(NAME, smoothing=1.0)
    with pytest.raises(UsageError, match="must have one shape"):
        cxrsem.create_loss(NAME)(LOGITS, TARGETS[:, :1])
'''

_LOSS_USAGE = r'''
Train with it on the built-in phantom (sized to run on a CPU in about a minute):

```
cxrsem train --dataset phantom --dataset-opt n_train=128 --dataset-opt n_val=32 \
    --loss $name --loss-opt smoothing=0.05 --arch densenet-mini --image-size 64 \
    --epochs 2 --batch-size 16 --device cpu --out runs/$name
```

From Python: `cxrsem.create_loss("$name", smoothing=0.05)(logits, targets)`.
'''


# --- architecture ---------------------------------------------------------------------------------------

_ARCH_PLUGIN = _PLUGIN_DOC + r'''
from __future__ import annotations

from cxrsem import ArchitectureInfo, Option, hookimpl

from $module.network import NAME, build_small_convnet


@hookimpl
def register_architectures(register) -> None:
    register(ArchitectureInfo(
        name=NAME,
        factory=build_small_convnet,
        options=(
            Option("width", int, 16, "channels of the first block (each further block doubles them)"),
            Option("depth", int, 3, "convolution blocks, each halving the image size"),
        ),
        # the layer dissect and attribute read when given no --layer: the last block's output
        default_layer="features",
        description="a small CNN (conv-BN-ReLU blocks, global average pool, linear head); "
                    "layers features.block1.., features",
    ))
'''

_ARCH_IMPL = r'''
"""The architecture of this plugin: a small convolutional network.

It honours cxrsem's architecture contract (:class:`cxrsem.components.ArchitectureInfo`): it maps
``[B, in_channels, S, S]`` to ``[B, num_outputs]`` logits for any image size S, and exposes 4-D
feature maps (``features.block1``, ..., and ``features``, the last block's output) for Network
Dissection and semantic attribution.  Those cut the model at a layer, so keep the forward pass a
plain chain of modules and avoid in-place operations on a layer's output.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from cxrsem.errors import UsageError
from torch import nn

NAME = "$name"  # what users type: --arch NAME


class SmallConvNet(nn.Module):
    """``features`` (``depth`` blocks of strided conv, batch norm, ReLU) -> average pool -> ``classifier``."""

    def __init__(self, num_outputs: int, in_channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for index in range(depth):
            out = width * 2**index
            blocks[f"block{index + 1}"] = nn.Sequential(
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            )
            channels = out
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_small_convnet(*, num_outputs: int, in_channels: int, width: int, depth: int) -> SmallConvNet:
    """``ArchitectureInfo.factory``: cxrsem passes ``num_outputs`` (the head size of the task),
    ``in_channels`` (1 for grey radiographs) and each declared option, already typed."""
    if width < 1:
        raise UsageError(f"architecture {NAME!r}: option 'width' must be at least 1, got {width}")
    if not 1 <= depth <= 6:
        raise UsageError(f"architecture {NAME!r}: option 'depth' must be from 1 to 6, got {depth}")
    return SmallConvNet(num_outputs, in_channels, width, depth)
'''

_ARCH_TESTS = r'''
"""The architecture against cxrsem's architecture contract, created by name as cxrsem's training
loop creates it."""

from __future__ import annotations

import cxrsem
import pytest
from cxrsem.engine.split import split_at
from cxrsem.errors import UsageError
from cxrsem.testing.contracts import check_architecture

from $module.network import NAME

pytestmark = pytest.mark.usefixtures("one_thread")


def test_contract_on_phantom_images(tiny_phantom):
    layers = check_architecture(NAME, images=tiny_phantom.images)
    assert {"features.block1", "features.block3", "features"} <= set(layers)
    assert cxrsem.plugins.get_architecture(NAME).default_layer in layers


@pytest.mark.parametrize("options", [{"width": 4, "depth": 1}, {"depth": 5}])
def test_contract_with_options(options):
    check_architecture(NAME, image_size=64, **options)


def test_three_input_channels():
    check_architecture(NAME, in_channels=3, num_outputs=5)


def test_attribution_can_cut_it_at_the_default_layer(tiny_phantom):
    model = cxrsem.create_architecture(NAME, num_outputs=3).eval()
    layer = cxrsem.plugins.get_architecture(NAME).default_layer
    split = split_at(model, layer, tiny_phantom.images)  # checks tail(head(x)) == model(x)
    activations, _ = split.head(tiny_phantom.images)
    assert activations.shape == (4, 64, 4, 4)  # 16 * 2**2 channels at 32 / 2**3 px


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="'depth' must be from 1 to 6"):
        cxrsem.create_architecture(NAME, num_outputs=2, depth=0)
    with pytest.raises(UsageError, match="'width' must be at least 1"):
        cxrsem.create_architecture(NAME, num_outputs=2, width=0)
'''

_ARCH_USAGE = r'''
Train it on the built-in phantom and dissect its last block (both sized to run on a CPU in about a
minute):

```
cxrsem train --dataset phantom --dataset-opt n_train=128 --dataset-opt n_val=32 \
    --arch $name --arch-opt width=8 --image-size 64 --epochs 2 --batch-size 16 \
    --device cpu --out runs/$name
cxrsem dissect --model runs/$name/best.pt --layer features --concepts phantom \
    --concept-opt phantom.n_images=64 --seg-size 16 --device cpu --out runs/$name-dissect
```

From Python: `cxrsem.create_architecture("$name", num_outputs=3, width=8)`.
'''


# --- model source ---------------------------------------------------------------------------------------

_SOURCE_PLUGIN = _PLUGIN_DOC + r'''
from __future__ import annotations

from cxrsem import ModelSourceInfo, hookimpl

from $module.source import DEFAULT_WEIGHTS_DIR, NAME, WEIGHTS_ENV, model_checkpoint


@hookimpl
def register_model_sources(register) -> None:
    register(ModelSourceInfo(
        name=NAME,
        factory=model_checkpoint,
        # the SPECs the source knows; empty: any SPEC (here, any weights file in the folder)
        specs=(),
        description=f"SPEC 'random': a seeded untrained model; any other SPEC: the weights file "
                    f"SPEC.pt in the folder {WEIGHTS_ENV} names (default {DEFAULT_WEIGHTS_DIR}); "
                    f"never downloaded",
    ))
'''

_SOURCE_IMPL = r'''
"""The model source of this plugin: ``--model NAME:SPEC`` as a ``cxrsem-checkpoint/1`` dict.

SPEC ``random`` is a freshly built model with seeded weights (the pipeline runs end to end with no
weights at all; also a chance baseline).  Any other SPEC names a file ``SPEC.pt`` holding a
``state_dict`` of that model -- weights trained elsewhere -- in the folder named by the
environment variable ``WEIGHTS_ENV`` (default ``DEFAULT_WEIGHTS_DIR``).  Weights come from that
folder only: a missing file is a CheckpointError naming the path expected, never a download.

The checkpoint says how to rebuild the model (``arch``: a registered architecture and its
options), what it predicts (``task``) and how its input is prepared (``input``); from there
``dissect`` and ``attribute`` treat it exactly like a model cxrsem trained.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cxrsem
import torch
from cxrsem.checkpoint import make_checkpoint
from cxrsem.errors import CheckpointError
from torch import nn

NAME = "$name"  # what users type: --model NAME:SPEC
WEIGHTS_ENV = "$weights_env"
DEFAULT_WEIGHTS_DIR = "~/.cache/$dist"

# The model every SPEC of this source is: a built-in cxrsem architecture (a plugin may register
# its own through register_architectures and name it here).
ARCH = "densenet-mini"
ARCH_KWARGS: dict[str, Any] = {}
TASK = "multilabel"
OUTPUTS = ["Effusion", "Pneumothorax"]
IMAGE_SIZE = 64
# cxrsem feeds images in [0, 1] and the model sees (x - mean) / std: give what it was trained on.
NORMALIZATION = {"mean": [0.449], "std": [0.226]}


def weights_dir() -> Path:
    """Where the weights files are: the folder in ``WEIGHTS_ENV``, else ``DEFAULT_WEIGHTS_DIR``."""
    return Path(os.environ.get(WEIGHTS_ENV, "").strip() or DEFAULT_WEIGHTS_DIR).expanduser()


def untrained_model() -> nn.Module:
    """The model with fresh weights, built by name from cxrsem's registry as cxrsem rebuilds it."""
    return cxrsem.create_architecture(ARCH, num_outputs=len(OUTPUTS), in_channels=1, **ARCH_KWARGS)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``, loaded with ``weights_only=True``: a file cannot run code."""
    if not path.is_file():
        raise CheckpointError(f"model source {NAME!r}: weights file {path} not found; put a state_dict "
                              f"of {ARCH} there or set {WEIGHTS_ENV} to the folder holding it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a file that is not a torch file
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"model source {NAME!r}: cannot read {path}: {first_line[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model source {NAME!r}: {path} does not hold a state_dict of tensors")
    return state


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model``, or one CheckpointError saying which weights do not fit."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape"
        raise CheckpointError(f"model source {NAME!r}: {path} does not fit {ARCH} with {len(OUTPUTS)} "
                              f"outputs: {counts} (e.g. {(missing + unexpected + reshaped)[0]!r})")
    model.load_state_dict(state, strict=True)


def model_checkpoint(*, spec: str) -> dict[str, Any]:
    """``ModelSourceInfo.factory``: the checkpoint dict of model ``spec`` (plus each declared
    option, already typed; this source declares none)."""
    if spec == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random state untouched
            torch.manual_seed(0)
            model = untrained_model()
        init = "random (seed 0)"
    else:
        if Path(spec).name != spec or spec in (".", ".."):
            raise CheckpointError(f"model source {NAME!r}: SPEC {spec!r} must be a file name without "
                                  f"folders (the weights are {weights_dir()}/SPEC.pt)")
        path = weights_dir() / f"{spec}.pt"
        model = untrained_model()
        load_exactly(model, read_weights(path), path)
        init = str(path)
    return make_checkpoint(model, arch=ARCH, arch_kwargs=ARCH_KWARGS, task_kind=TASK, outputs=OUTPUTS,
                           image_size=IMAGE_SIZE, normalization=NORMALIZATION, channels=1,
                           train={"dataset": f"unknown (model source {NAME})", "init": init})
'''

_SOURCE_TESTS = r'''
"""The model source: its checkpoints load through cxrsem's own ``load_model`` (which validates the
``cxrsem-checkpoint/1`` contract) and rebuild into working models."""

from __future__ import annotations

import cxrsem
import pytest
import torch
from cxrsem.checkpoint import build_model, state_dict_sha256
from cxrsem.errors import CheckpointError

from $module.source import NAME, OUTPUTS, WEIGHTS_ENV, untrained_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_a_description():
    info = cxrsem.plugins.get_model_source(NAME)
    assert info.description and info.specs == ()


def test_random_is_a_valid_checkpoint_that_rebuilds(tiny_phantom):
    checkpoint = cxrsem.load_model(f"{NAME}:random")
    assert checkpoint["format"] == "cxrsem-checkpoint/1"
    assert checkpoint["task"] == {"kind": "multilabel", "outputs": OUTPUTS}
    model = build_model(checkpoint, source=f"{NAME}:random")
    with torch.no_grad():
        logits = model(tiny_phantom.images)
    assert logits.shape == (4, len(OUTPUTS)) and torch.isfinite(logits).all()


def test_random_is_seeded_and_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = cxrsem.load_model(f"{NAME}:random")
    assert torch.equal(torch.rand(3), expected)
    second = cxrsem.load_model(f"{NAME}:random")
    assert state_dict_sha256(first["state_dict"]) == state_dict_sha256(second["state_dict"])


def test_weights_from_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    torch.manual_seed(1)
    trained = untrained_model().eval()
    torch.save(trained.state_dict(), tmp_path / "mine.pt")
    model = build_model(cxrsem.load_model(f"{NAME}:mine"), source=f"{NAME}:mine")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))


def test_a_missing_or_foreign_file_is_one_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(CheckpointError, match=r"weights file .*absent\.pt not found"):
        cxrsem.load_model(f"{NAME}:absent")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit densenet-mini"):
        cxrsem.load_model(f"{NAME}:other")
    with pytest.raises(CheckpointError, match="must be a file name without folders"):
        cxrsem.load_model(f"{NAME}:../other")
'''

_SOURCE_USAGE = r'''
Dissect one of its models without training anything (`random` needs no weights file):

```
cxrsem dissect --model $name:random --layer denseblock4 --concepts phantom \
    --concept-opt phantom.n_images=64 --seg-size 16 --device cpu --out runs/$name-dissect
cxrsem plugins --details    # lists the source and what SPEC may be
```

Weights trained elsewhere go in the folder `$weights_env` names (default
`~/.cache/$dist`) as `SPEC.pt`, a `state_dict` of the model described in
`src/$module/source.py`; then use `--model $name:SPEC`.
From Python: `cxrsem.load_model("$name:random")` gives the checkpoint dict.
'''


_TEMPLATES: dict[str, _KindTemplate] = {
    "dataset": _KindTemplate(
        impl="dataset", summary="synthetic images labelled by the shapes they hold",
        address="--dataset {name}",
        plugin=_DATASET_PLUGIN, implementation=_DATASET_IMPL, tests=_DATASET_TESTS, usage=_DATASET_USAGE),
    "concept-set": _KindTemplate(
        impl="concepts", summary="synthetic images with masks of the shapes they hold",
        address="--concepts {name}",
        plugin=_CONCEPTS_PLUGIN, implementation=_CONCEPTS_IMPL, tests=_CONCEPTS_TESTS,
        usage=_CONCEPTS_USAGE),
    "loss": _KindTemplate(
        impl="loss", summary="binary cross-entropy with label smoothing",
        address="--loss {name}",
        plugin=_LOSS_PLUGIN, implementation=_LOSS_IMPL, tests=_LOSS_TESTS, usage=_LOSS_USAGE),
    "architecture": _KindTemplate(
        impl="network", summary="a small convolutional network",
        address="--arch {name}",
        plugin=_ARCH_PLUGIN, implementation=_ARCH_IMPL, tests=_ARCH_TESTS, usage=_ARCH_USAGE),
    "model-source": _KindTemplate(
        impl="source", summary="ready-made models from local weights files",
        address="--model {name}:SPEC",
        plugin=_SOURCE_PLUGIN, implementation=_SOURCE_IMPL, tests=_SOURCE_TESTS, usage=_SOURCE_USAGE),
}
