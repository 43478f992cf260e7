"""The plugin registry: built-ins, third-party entry points, errors and lookups."""

from __future__ import annotations

import json

import pytest

import cxrsem
from cxrsem import plugins
from cxrsem.cli import main
from cxrsem.errors import PluginError, UnknownComponentError

THIRD_PARTY = '''
import torch
from torch import nn
import cxrsem
from cxrsem import hookimpl, LossInfo, Option


class L1(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, logits, targets, target_mask=None):
        return self.scale * (logits - targets).abs().mean()


@hookimpl
def register_losses(register):
    register(LossInfo(name="l1-demo", factory=lambda train_targets, scale: L1(scale),
                      tasks=("global-score",), options=(Option("scale", float, 1.0, "factor"),)))
'''


def test_builtins_are_registered_like_plugins():
    registry = plugins.get_registry()
    names = [p.plugin for p in registry.plugins]
    for module in plugins.DEFAULT_PLUGINS:
        assert module in names
    assert "phantom" in cxrsem.list_datasets()
    assert {"bce", "weighted-bce", "mse", "weighted-mse", "mae-scce", "weak-bce"} <= set(cxrsem.list_losses())
    assert {"densenet121", "densenet-mini"} <= set(cxrsem.list_architectures())
    assert all(p.error is None for p in registry.plugins), [p.error for p in registry.plugins]


def test_unknown_name_suggests_closest_and_lists_available():
    with pytest.raises(UnknownComponentError) as info:
        plugins.get_loss("weigthed-bce")
    message = str(info.value)
    assert "unknown loss 'weigthed-bce'" in message
    assert "did you mean 'weighted-bce'?" in message
    assert "mae-scce" in message


def test_third_party_entry_point_is_listed_and_usable(install_distribution, capsys):
    install_distribution("cxrsem-l1demo", THIRD_PARTY, version="2.3")
    assert "l1-demo" in cxrsem.list_losses()
    import torch
    loss = cxrsem.create_loss("l1-demo", scale="2")
    assert loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(4.0)

    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "--json"])
    assert exit_info.value.code == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["cxrsem_l1demo"]["source"] == "cxrsem-l1demo"
    assert listed["cxrsem_l1demo"]["version"] == "2.3"
    assert listed["cxrsem_l1demo"]["components"] == {"loss": ["l1-demo"]}


def test_plugin_that_fails_to_import_is_reported_and_the_rest_works(install_distribution, capsys):
    install_distribution("cxrsem-broken", "raise RuntimeError('boom at import')\n")
    registry = plugins.get_registry()
    broken = next(p for p in registry.plugins if p.plugin == "cxrsem_broken")
    assert "boom at import" in broken.error
    assert "phantom" in cxrsem.list_datasets()
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins"])
    assert exit_info.value.code == 0
    assert "cxrsem_broken" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert "boom at import" in listed["cxrsem_broken"]["error"]
    assert listed["cxrsem.default_plugins.phantom"]["error"] is None


def test_duplicate_name_is_an_error_naming_both_plugins(install_distribution):
    install_distribution("cxrsem-dup", '''
from cxrsem import hookimpl, LossInfo
@hookimpl
def register_losses(register):
    register(LossInfo(name="bce", factory=lambda train_targets: None))
''')
    with pytest.raises(PluginError) as info:
        plugins.get_registry()
    assert "cxrsem.default_plugins.losses" in str(info.value)
    assert "cxrsem_dup" in str(info.value)


def test_misspelled_hook_fails_loudly(install_distribution):
    install_distribution("cxrsem-typo", '''
from cxrsem import hookimpl
@hookimpl
def register_lossses(register):
    pass
''')
    with pytest.raises(PluginError) as info:
        plugins.get_registry()
    assert "register_lossses" in str(info.value)


def test_disable_plugins_env_blocks_a_plugin(install_distribution, monkeypatch):
    install_distribution("cxrsem-l1demo", THIRD_PARTY)
    monkeypatch.setenv("CXRSEM_DISABLE_PLUGINS", "cxrsem_l1demo")
    plugins.reset()
    assert "l1-demo" not in cxrsem.list_losses()


def test_runtime_registration_and_option_validation():
    import torch

    class Plugin:
        @staticmethod
        @cxrsem.hookimpl
        def register_losses(register):
            register(cxrsem.LossInfo(
                name="const", factory=lambda train_targets, value: (lambda *a, **k: torch.tensor(value)),
                options=(cxrsem.Option("value", float, 0.5, "the constant"),)))

    plugins.register_plugin(Plugin(), "const-plugin")
    assert cxrsem.create_loss("const")().item() == 0.5
    with pytest.raises(cxrsem.CxrsemError, match="option 'value' of loss 'const' must be float"):
        cxrsem.create_loss("const", value="lots")
    with pytest.raises(cxrsem.CxrsemError,
                       match="unknown option for loss 'const': 'valeu'; did you mean 'value'"):
        cxrsem.create_loss("const", valeu=1)


def test_wrong_registration_type_is_reported():
    class Plugin:
        @staticmethod
        @cxrsem.hookimpl
        def register_losses(register):
            register(cxrsem.DatasetInfo(name="oops", factory=lambda **_: None))

    plugins.register_plugin(Plugin(), "wrong-type")
    with pytest.raises(PluginError, match="registered a DatasetInfo through register_losses"):
        plugins.get_registry()


def test_the_same_plugin_object_registered_twice_names_the_first_registration():
    from cxrsem.testing import TestKitPlugin

    kit = TestKitPlugin()
    plugins.register_plugin(kit, "first")
    plugins.register_plugin(kit, "second")
    records = {r.plugin: r for r in plugins.get_registry().plugins}
    assert records["first"].error is None
    assert records["second"].error == "the same plugin object is already registered as 'first'"
    assert "tiny-conv" in plugins.get_registry().names("architecture")


def test_cli_main_leaves_the_warning_display_as_it_was():
    import warnings

    before = warnings.showwarning
    with pytest.raises(SystemExit):
        main(["plugins", "--json"])
    assert warnings.showwarning is before
