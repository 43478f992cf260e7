"""Fixtures of the example plugin's tests.

``cxrsem.testing.pytest_plugin`` is cxrsem's kit for plugin authors: ``register_plugin`` puts a
plugin into cxrsem's registry for one test (and disables the installed entry point of the same
module meanwhile, so the code under test is what runs), ``tiny_phantom`` gives a few small
phantom images.  ``pytest_plugins`` must sit in the top-level conftest of a test run: run these
tests as ``pytest plugins/cxrsem-example/tests`` or from this package's folder.  (Test files are
named ``test_example_*`` so that they never collide with cxrsem's own test modules when both run
in one pytest session.)
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cxrsem_example.plugin

pytest_plugins = ["cxrsem.testing.pytest_plugin"]


@pytest.fixture
def example(register_plugin):
    """This checkout's plugin, registered by name the way cxrsem registers every plugin."""
    return register_plugin(cxrsem_example.plugin, "example-under-test")


@pytest.fixture
def write_png():
    """``write_png(path, array)``: a uint8 (or bool: 0/255) array as a PNG, folders created."""

    def write(path, array) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.asarray(array)
        Image.fromarray((array * 255 if array.dtype == bool else array).astype(np.uint8)).save(path)

    return write
