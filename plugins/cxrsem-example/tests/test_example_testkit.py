"""cxrsem's test kit as this plugin uses it: ``register_plugin`` and ``tiny_phantom``."""

from __future__ import annotations

import importlib.metadata

import cxrsem
import pytest
import torch
from cxrsem import LossInfo, hookimpl
from cxrsem.plugins import get_registry

import cxrsem_example.plugin


def _installed() -> bool:
    try:
        importlib.metadata.distribution("cxrsem-example")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_the_checkout_is_registered_once_in_place_of_the_installed_entry_point(example):
    assert example.plugin == "example-under-test" and example.error is None
    assert example.components["loss"] == ["focal"]
    names = [p.plugin for p in get_registry().plugins]
    assert "example-under-test" in names
    assert "example" not in names  # the entry point of the same module is off for this test
    assert cxrsem.plugins.get_registry().owners[("loss", "focal")] == "example-under-test"


@pytest.mark.skipif(not _installed(), reason="needs the installed entry point")
def test_registering_under_the_entry_point_name_is_refused(register_plugin):
    with pytest.raises(ValueError, match="also the name of the entry point"):
        register_plugin(cxrsem_example.plugin, "example")


class Broken:
    @staticmethod
    @hookimpl
    def register_losses(register):
        register(LossInfo(name="focal-broken", factory=lambda **kw: None))
        raise RuntimeError("boom in the hook")


def test_a_failing_hook_fails_the_test_with_its_error(register_plugin):
    with pytest.raises(pytest.fail.Exception, match="'Broken' failed to register: register_losses raised "
                                                    "RuntimeError: boom in the hook"):
        register_plugin(Broken())


def test_check_false_returns_the_record_instead(register_plugin):
    record = register_plugin(Broken(), "broken", check=False)
    assert "boom in the hook" in record.error


def test_tiny_phantom_is_small_and_complete(tiny_phantom):
    assert tiny_phantom.images.shape == (4, 1, 32, 32) and tiny_phantom.images.dtype == torch.float32
    assert tiny_phantom.masks.shape == (4, len(tiny_phantom.concepts.concepts), 16, 16)
    assert tiny_phantom.masks.dtype == torch.bool
    assert set(tiny_phantom.dataset.outputs) == {"multilabel", "binary", "global-score", "zones"}
    assert tiny_phantom.targets("zones").shape == (4, 6)


def test_a_plugin_name_the_user_disabled_fails_clearly(register_plugin, monkeypatch):
    monkeypatch.setenv("CXRSEM_DISABLE_PLUGINS", "blocked")
    with pytest.raises(pytest.fail.Exception, match="'blocked' was not loaded: CXRSEM_DISABLE_PLUGINS"):
        register_plugin(Broken(), "blocked")
