"""A fake xrv cache and sample datasets shared by the tests, and a guard that fails any network access.

Every test runs with ``xrv.utils.download`` and socket connections replaced by failures, so a
code path that tried to fetch weights fails loudly instead of hanging.
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cxrsem.checkpoint import load_model

from cxrsem_xrv import CACHE_ENV
from cxrsem_xrv.models import import_xrv
from cxrsem_xrv.sample_data import write_sample_data
from xrv_fakes import random_densenet, save_as_old_torch, weights_path


@pytest.fixture(scope="session")
def xrv():
    return import_xrv()


@pytest.fixture(autouse=True)
def no_network(monkeypatch, xrv):
    def refuse(*args, **kwargs):
        pytest.fail(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(xrv.utils, "download", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def fakes(tmp_path_factory, xrv) -> SimpleNamespace:
    """A cache folder with fake DenseNet weights for two specs, both whole pickled modules in
    torch's legacy format like xrv's files: ``all`` from current torch, ``nih`` as torch < 1.6
    wrote it.  Both hold the same weights, ``state``."""
    folder = tmp_path_factory.mktemp("xrv-cache")
    model = random_densenet(xrv)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    legacy = weights_path(xrv, folder, "densenet121-res224-all")
    torch.save(model, legacy, _use_new_zipfile_serialization=False)
    save_as_old_torch(model, weights_path(xrv, folder, "densenet121-res224-nih"))  # consumes the model
    return SimpleNamespace(folder=folder, state=state)


@pytest.fixture
def cache(monkeypatch, fakes) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(fakes.folder))
    return fakes.folder


@pytest.fixture(scope="session")
def checkpoints(fakes):
    """``load_model`` of each fake spec, loaded once per session (each load builds a DenseNet)."""
    loaded = {}

    def get(spec: str) -> dict:
        if spec not in loaded:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(CACHE_ENV, str(fakes.folder))
                loaded[spec] = load_model(f"xrv:{spec}")
        return loaded[spec]

    return get


@pytest.fixture(scope="session")
def sample_roots(tmp_path_factory) -> dict[str, Path]:
    """The data root of every ``xrv-*`` dataset and concept set: tiny copies of the real layouts
    (:mod:`cxrsem_xrv.sample_data`), written once per session; tests that change files write
    their own."""
    return write_sample_data(tmp_path_factory.mktemp("xrv-data"))
