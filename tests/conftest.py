"""Shared fixtures: a fresh plugin registry per test, and temporary installed distributions."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from cxrsem import plugins


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Each test sees a registry built from the current environment, and leaves none behind."""
    monkeypatch.delenv("CXRSEM_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("CXRSEM_DEBUG", raising=False)
    # A developer's own prepared images (~/.cache/cxrsem) must never feed a test: image-cache
    # tests name their cache folder explicitly.
    monkeypatch.setenv("CXRSEM_CACHE_DIR", "off")
    plugins.reset()
    yield
    plugins._extra.clear()
    plugins.reset()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster, and steadier on a shared machine, on one thread than on two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def install_distribution(tmp_path, monkeypatch):
    """Install a throwaway distribution with a ``cxrsem`` entry point, visible to importlib.metadata.

    ``install_distribution(name, module_source, entry_point_name=None, version="1.0")`` writes the
    module and a ``.dist-info`` folder into a directory put on ``sys.path``.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def install(name: str, module_source: str, entry_point_name: str | None = None,
                version: str = "1.0") -> Path:
        module = name.replace("-", "_")
        (site / f"{module}.py").write_text(textwrap.dedent(module_source))
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            f"[cxrsem]\n{entry_point_name or module} = {module}\n")
        created.append(module)
        plugins.reset()
        return site

    yield install
    for module in created:
        sys.modules.pop(module, None)
