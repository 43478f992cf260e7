"""Fixtures for the dataset-plugin tests: tiny copies of each dataset's real on-disk layout.

The builders live in ``tests/fixtures/builders.py`` (loaded by path, so this folder needs no package
structure).  Roots are built once per session: the loaders only read them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_BUILDERS_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "builders.py"


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


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """Keep a developer's CXRSEM_DATA_* variables from leaking into the loader tests."""
    import os

    for key in list(os.environ):
        if key.startswith("CXRSEM_DATA_") and key != "CXRSEM_DATA_DIR":
            monkeypatch.delenv(key, raising=False)


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
