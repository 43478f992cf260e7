"""Meta-tests: the plugin API and its documentation cannot drift apart.

Every hook of ``cxrsem.hookspecs`` must be explained in the plugin author's guide
(``plugins/cxrsem-example/README.md``) with every field of its registration object, be implemented
by at least one test plugin, and have a contract test over its registered components.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from cxrsem import hookspecs
from cxrsem.components import KINDS

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "plugins" / "cxrsem-example" / "README.md"
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(fn, "cxrsem_spec"))
# Test plugins, and the plugin packages whose own tests exercise what their hooks register.
TEST_FILES = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py"),
              *(p for p in ROOT.glob("plugins/*/src/**/*.py") if any(p.parents[2].glob("tests/test_*.py")))]


def test_the_hooks_are_the_component_kinds():
    assert sorted(kind.hook for kind in KINDS.values()) == HOOKS


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_its_python_api(kind):
    import cxrsem
    from cxrsem import plugins

    entry = KINDS[kind]
    assert getattr(cxrsem, entry.list_name)() == plugins.get_registry().names(kind)
    assert entry.info_class.__name__ in cxrsem.__all__ and entry.list_name in cxrsem.__all__
    for name in plugins.get_registry().names(kind)[:1]:
        assert getattr(plugins, f"get_{kind}")(name).name == name


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_in_the_guide_with_every_field(hook):
    guide = GUIDE.read_text()
    assert f"`{hook}`" in guide or f"def {hook}(" in guide, f"{hook} is not explained in {GUIDE}"
    info = next(k.info_class for k in KINDS.values() if k.hook == hook)
    assert f"`{info.__name__}`" in guide or f"{info.__name__}(" in guide
    for field in dataclasses.fields(info):
        assert re.search(rf"`({info.__name__}\.)?{field.name}`", guide), \
            f"{info.__name__}.{field.name} is not in {GUIDE.name}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test_plugin_implementing_it(hook):
    implementing = [p for p in TEST_FILES if re.search(rf"def {hook}\(", p.read_text())]
    assert implementing, f"no test registers a component through {hook}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_component_kind_has_a_contract_test(kind):
    contracts = (ROOT / "tests" / "test_contracts.py").read_text()
    assert f"def test_{kind}_contract(" in contracts


def test_the_core_never_imports_the_plugin_packages():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "cxrsem").rglob("*.py")
                 if re.search(r"\b(cxrsem_example|cxrsem_xrv|torchxrayvision)\b", p.read_text())]
    assert not offenders


def test_both_plugin_packages_are_installed_and_listed(capsys):
    import json

    from cxrsem.cli import main

    with pytest.raises(SystemExit):
        main(["plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    for entry_point, distribution in (("example", "cxrsem-example"), ("xrv", "cxrsem-xrv")):
        assert entry_point in listed, f"{distribution} is not installed: make test installs plugins/*"
        assert listed[entry_point]["source"] == distribution
        assert listed[entry_point]["version"] == "0.1.0" and listed[entry_point]["error"] is None
    assert listed["example"]["components"] == {
        "architecture": ["resnet50"], "concept_set": ["mask-folder"], "dataset": ["csv-folder"],
        "loss": ["focal"]}
    assert listed["xrv"]["components"] == {
        "architecture": ["xrv-densenet121", "xrv-resnet50"],
        "concept_set": ["xrv-nih-bbox", "xrv-rsna-bbox"],
        "dataset": ["xrv-chexpert", "xrv-nih", "xrv-padchest", "xrv-rsna"], "model_source": ["xrv"]}
