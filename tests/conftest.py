"""Shared fixtures: a fresh plugin registry per test, temporary installed distributions, and tiny
copies of each real dataset's on-disk layout.

The dataset builders live in ``tests/fixtures/builders.py`` (loaded by path, so the test folders
need no package structure).  Dataset roots are built once per session: the loaders only read them.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from cxrsem import plugins

# cxrsem's own test kit (register_plugin, tiny_phantom, one_thread), as plugin authors use it.
pytest_plugins = ["cxrsem.testing.pytest_plugin"]


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


@pytest.fixture
def captured_train(monkeypatch, tmp_path):
    """Patch the library call behind ``cxrsem train``: the ``TrainConfig`` the command hands it
    lands in ``captured_train["config"]`` (fastapi-cli's style of CLI test)."""
    from cxrsem.training import TrainResult

    seen: dict = {}

    def fake_train(config, progress=None):
        seen["config"] = config
        return TrainResult(tmp_path, 1, 1, ("auroc_mean", 0.5), [], False, [])

    monkeypatch.setattr("cxrsem.cli.train.train", fake_train)
    return seen


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


_BUILDERS_PATH = Path(__file__).resolve().parent / "fixtures" / "builders.py"


def _load_builders():
    name = "cxrsem_test_fixture_builders"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _BUILDERS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


builders = _load_builders()


@pytest.fixture(scope="session")
def fx():
    """The fixture builders module."""
    return builders


@pytest.fixture(scope="session")
def nih_root(tmp_path_factory):
    return builders.build_nih(tmp_path_factory.mktemp("nih-flat") / "ChestX-ray14")


@pytest.fixture(scope="session")
def nih_nested_root(tmp_path_factory):
    return builders.build_nih(tmp_path_factory.mktemp("nih-nested") / "ChestX-ray14",
                              layout="nested")


@pytest.fixture(scope="session")
def chexpert_root(tmp_path_factory):
    return builders.build_chexpert(tmp_path_factory.mktemp("chexpert") / "CheXpert-v1.0-small")


@pytest.fixture(scope="session")
def brixia_root(tmp_path_factory):
    return builders.build_brixia(tmp_path_factory.mktemp("brixia") / "BrixIA")


@pytest.fixture(scope="session")
def cohen_root(tmp_path_factory):
    return builders.build_brixia_cohen(tmp_path_factory.mktemp("cohen") / "Brixia-score-COVID-19",
                                       missing=("lancet-case2b.jpg", "covid-19-pneumonia-20.jpg"))


@pytest.fixture(scope="session")
def covid_root(tmp_path_factory):
    return builders.build_covid_seg(tmp_path_factory.mktemp("covid") / "covid-seg")
