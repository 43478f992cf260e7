"""pytest fixtures for testing cxrsem plugins; enable with, in your top-level ``conftest.py``::

    pytest_plugins = ["cxrsem.testing.pytest_plugin"]

Fixtures:

``register_plugin(plugin, name=None, *, check=True)``
    Register a plugin object or module in cxrsem's registry for the duration of one test, then
    unregister it and forget the registry.  When the same object is also installed through a
    ``cxrsem`` entry point (an editable install of the package under test), that entry point is
    disabled for the test, so the components are registered once -- by the code under test --
    instead of failing as duplicates.  With ``check`` a plugin whose hooks fail makes the test fail
    with the plugin's error; returns the plugin's :class:`~cxrsem.components.Registration`.

``tiny_phantom``
    A :class:`~cxrsem.testing.TinyPhantom`: a few phantom training items and concept-set items at
    32 px (masks 16 px), built once per session.  Treat its tensors as read-only.

``one_thread`` (module scope)
    Run the module's tests with one torch thread: tiny models are faster, and steadier on a shared
    machine, on one thread than on several.  Use ``pytestmark = pytest.mark.usefixtures("one_thread")``.

``cxrsem_fresh_registry`` (not autouse)
    Forget the registry before and after a test, e.g. after changing ``CXRSEM_DISABLE_PLUGINS``.
"""

from __future__ import annotations

import importlib.metadata
import os
import types
from collections.abc import Callable, Iterator

import pytest

from cxrsem import plugins
from cxrsem.components import Registration
from cxrsem.testing import TinyPhantom
from cxrsem.testing import tiny_phantom as _make_tiny_phantom


def _default_name(plugin: object) -> str:
    if isinstance(plugin, types.ModuleType | type):
        return plugin.__name__
    return type(plugin).__name__


def _entry_points_loading(plugin: object) -> list[str]:
    """Names of the ``cxrsem`` entry points that load exactly this object."""
    names = []
    for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP):
        try:
            if ep.load() is plugin:
                names.append(ep.name)
        except Exception:  # a broken third-party plugin is the registry's to report, not ours
            continue
    return names


@pytest.fixture
def register_plugin(monkeypatch) -> Iterator[Callable[..., Registration]]:
    """``register_plugin(plugin, name=None, *, check=True)``: ``plugin`` in cxrsem's registry for
    this test (see the module docstring); returns its :class:`~cxrsem.components.Registration`."""
    registered: list[str] = []

    def register(plugin: object, name: str | None = None, *, check: bool = True) -> Registration:
        name = name or _default_name(plugin)
        installed = _entry_points_loading(plugin)
        if name in installed:
            raise ValueError(
                f"register_plugin: {name!r} is also the name of the entry point that installs this "
                f"plugin, which is disabled for the test; register it under another name")
        if installed:
            current = os.environ.get("CXRSEM_DISABLE_PLUGINS", "")
            monkeypatch.setenv("CXRSEM_DISABLE_PLUGINS", ",".join(filter(None, [current, *installed])))
        plugins.register_plugin(plugin, name)
        registered.append(name)
        record = next((r for r in reversed(plugins.get_registry().plugins) if r.plugin == name), None)
        if record is None:
            pytest.fail(f"plugin {name!r} was not loaded: CXRSEM_DISABLE_PLUGINS names it", pytrace=False)
        if check and record.error:
            pytest.fail(f"plugin {name!r} failed to register: {record.error}", pytrace=False)
        return record

    try:
        yield register
    finally:
        for name in registered:
            plugins.unregister_plugin(name)
        plugins.reset()  # monkeypatch restores the environment next; the registry reloads lazily


@pytest.fixture
def cxrsem_fresh_registry() -> Iterator[None]:
    """Forget cxrsem's registry before and after the test (it reloads on first use)."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(scope="session", name="tiny_phantom")
def tiny_phantom_fixture() -> TinyPhantom:
    """4 phantom training and concept-set samples at 32 px (masks 16 px); read-only, per session."""
    return _make_tiny_phantom()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the module's tests (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
