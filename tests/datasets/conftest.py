"""Fixtures for the dataset-plugin tests (the dataset roots themselves are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """Keep a developer's CXRSEM_DATA_* variables from leaking into the loader tests."""
    import os

    for key in list(os.environ):
        if key.startswith("CXRSEM_DATA_") and key != "CXRSEM_DATA_DIR":
            monkeypatch.delenv(key, raising=False)
