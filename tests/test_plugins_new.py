"""``cxrsem plugins new``: for every kind, the generated package is complete, declares an entry point
that registers its component, and passes its own tests as generated (``cxrsem.scaffold``)."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import cxrsem
from cxrsem import plugins
from cxrsem.components import KINDS, LossInfo
from cxrsem.errors import UsageError
from cxrsem.hookspecs import hookimpl
from cxrsem.scaffold import PLUGIN_KINDS, new_plugin, plugin_names, render_plugin
from cxrsem.testing import run_cli
from cxrsem.testing.contracts import (
    check_architecture,
    check_concept_set,
    check_loss,
    check_training_dataset,
)

# One distribution per kind; module names no other test (or installed package) uses.
NAMES = {
    "dataset": "cxrsem-gen-shapes",
    "concept-set": "cxrsem-gen-blobs",
    "loss": "gen_smooth.loss",  # no cxrsem- prefix, and separators that normalise
    "architecture": "cxrsem-gen-net",
    "model-source": "cxrsem-gen-zoo",
}
COMPONENTS = {"dataset": "gen-shapes", "concept-set": "gen-blobs", "loss": "gen-smooth-loss",
              "architecture": "gen-net", "model-source": "gen-zoo"}
IMPLEMENTATION = {"dataset": "dataset", "concept-set": "concepts", "loss": "loss",
                  "architecture": "network", "model-source": "source"}
KIND_KEYS = {kind: kind.replace("-", "_") for kind in PLUGIN_KINDS}
ALL_KINDS = pytest.mark.parametrize("kind", PLUGIN_KINDS)


def module_of(kind: str) -> str:
    return re.sub(r"[-_.]+", "_", NAMES[kind]).lower()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Every kind's package, generated once into a fresh folder: ``{kind: NewPlugin}``."""
    root = tmp_path_factory.mktemp("generated")
    return {kind: new_plugin(name, kind, out=root / name) for kind, name in NAMES.items()}


@pytest.fixture
def importable(monkeypatch):
    """``importable(package_folder)``: its ``src`` on ``sys.path`` for this test; the modules
    imported from it are forgotten afterwards."""
    added: list[str] = []

    def add(package: Path) -> None:
        monkeypatch.syspath_prepend(str(package / "src"))
        added.extend(p.name for p in (package / "src").iterdir() if p.is_dir())

    yield add
    for name in [m for m in sys.modules if m.split(".")[0] in added]:
        del sys.modules[name]


# --- what is written ---------------------------------------------------------------------------------


@ALL_KINDS
def test_the_package_has_every_file(generated, kind):
    created = generated[kind]
    module = module_of(kind)
    assert created.kind == kind and created.path.name == NAMES[kind]
    assert created.names.module == module and created.names.component == COMPONENTS[kind]
    assert set(created.files) == {
        "pyproject.toml", "README.md", f"src/{module}/__init__.py", f"src/{module}/plugin.py",
        f"src/{module}/{IMPLEMENTATION[kind]}.py", "tests/conftest.py", f"tests/test_{module}.py"}
    on_disk = sorted(p.relative_to(created.path).as_posix() for p in created.path.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    assert on_disk == sorted(created.files)
    assert not [p for p in created.path.parent.iterdir() if ".new-" in p.name]  # no staging left


@ALL_KINDS
def test_pyproject_declares_the_entry_point(generated, kind):
    created = generated[kind]
    data = tomllib.loads((created.path / "pyproject.toml").read_text())
    project = data["project"]
    assert project["name"] == NAMES[kind] and project["version"] == "0.1.0"
    assert any(re.fullmatch(r"cxrsem(>=.*)?", dep) for dep in project["dependencies"])
    assert project["entry-points"] == {"cxrsem": {COMPONENTS[kind]: f"{module_of(kind)}.plugin"}}
    assert data["build-system"]["build-backend"] == "setuptools.build_meta"
    assert data["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert data["tool"]["pytest"]["ini_options"]["pythonpath"] == ["src"]


@ALL_KINDS
def test_templates_are_filled_in_and_the_readme_says_how_to_use_it(generated, kind):
    created = generated[kind]
    for relative in created.files:
        text = (created.path / relative).read_text()
        assert not re.search(r"\$\{?[A-Za-z_]", text), f"{relative} keeps a placeholder"
        assert text.endswith("\n") and not re.search(r"[ \t]+$", text, re.MULTILINE), relative
        if relative.endswith(".py"):
            compile(text, relative, "exec")
    readme = (created.path / "README.md").read_text()
    assert f"cxrsem plugins new {NAMES[kind]} --kind {kind}" in readme
    assert "pip install -e ." in readme and f"`{KINDS[KIND_KEYS[kind]].hook}`" in readme


def _ruff() -> str | None:
    beside = Path(sys.executable).with_name("ruff")
    return str(beside) if beside.is_file() else shutil.which("ruff")


def test_generated_code_is_ruff_clean_under_its_own_settings(generated):
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed")
    for created in generated.values():  # each package's own pyproject settings apply
        result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=created.path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# --- it registers its component --------------------------------------------------------------------------


def _use(kind: str, name: str) -> None:
    """The component, created by name and checked against its contract, as the generated tests do."""
    if kind == "dataset":
        check_training_dataset(cxrsem.create_dataset(name, image_size=16, n_images=4), name, 16)
    elif kind == "concept-set":
        check_concept_set(cxrsem.create_concept_set(name, image_size=16, mask_size=8, n_images=4),
                          name, 16, 8)
    elif kind == "loss":
        check_loss(name, "multilabel")
    elif kind == "architecture":
        check_architecture(name, image_size=16, width=2, depth=2)
    else:
        checkpoint = cxrsem.load_model(f"{name}:random")
        assert checkpoint["arch"]["name"] == "densenet-mini"


@ALL_KINDS
def test_the_plugin_module_registers_one_working_component(generated, kind, importable, register_plugin):
    created = generated[kind]
    importable(created.path)
    module = importlib.import_module(f"{module_of(kind)}.plugin")
    record = register_plugin(module, "generated-under-test")
    assert record.components == {KIND_KEYS[kind]: [COMPONENTS[kind]]}
    info = plugins.get(KIND_KEYS[kind], COMPONENTS[kind])
    assert isinstance(info, KINDS[KIND_KEYS[kind]].info_class) and info.description
    _use(kind, COMPONENTS[kind])


@ALL_KINDS
def test_the_declared_entry_point_loads_it_as_an_installed_plugin(generated, kind, importable, tmp_path,
                                                                  monkeypatch):
    """Installed as pip would install it: a ``.dist-info`` whose entry points are the pyproject's."""
    created = generated[kind]
    project = tomllib.loads((created.path / "pyproject.toml").read_text())["project"]
    info = tmp_path / "site" / f"{module_of(kind)}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (info / "entry_points.txt").write_text(
        "[cxrsem]\n" + "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["cxrsem"].items()))
    importable(created.path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugins.reset()
    registry = plugins.get_registry()
    record = next(r for r in registry.plugins if r.plugin == COMPONENTS[kind])
    assert (record.source, record.version, record.error) == (NAMES[kind], "0.1.0", None)
    assert record.components == {KIND_KEYS[kind]: [COMPONENTS[kind]]}
    _use(kind, COMPONENTS[kind])


# --- names and folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "module", "component"), [
    ("cxrsem-lung-shapes", "cxrsem_lung_shapes", "lung-shapes"),
    ("Cxrsem_Lung.Shapes", "cxrsem_lung_shapes", "lung-shapes"),
    ("my-loss", "my_loss", "my-loss"),
    ("cxrsem-x", "cxrsem_x", "x"),
])
def test_names_follow_from_the_distribution_name(name, module, component):
    names = plugin_names(name)
    assert (names.distribution, names.module, names.component) == (name, module, component)


@pytest.mark.parametrize(("name", "kind", "message"), [
    ("", "loss", "is not a valid distribution name"),
    ("my plugin", "loss", "is not a valid distribution name"),
    ("cxrsem-", "loss", "is not a valid distribution name"),
    ("naïve", "loss", "is not a valid distribution name"),
    ("3d-net", "architecture", "gives the module name '3d_net', which is not a Python identifier"),
    ("class", "loss", "gives the module name 'class', which is a Python keyword"),
    ("cxrsem", "loss", "would shadow cxrsem itself"),
    ("json", "loss", "would shadow a standard-library module"),
    ("cxrsem-z", "model-source", "a model source needs a name of at least 2 characters"),
    ("cxrsem-zoo", "modelsource", "unknown plugin kind 'modelsource'; did you mean 'model-source'?"),
])
def test_bad_names_and_kinds_are_one_line_usage_errors(name, kind, message, tmp_path):
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        new_plugin(name, kind, out=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_kinds_may_be_written_with_underscores():
    assert "src/cxrsem_gen_cs/concepts.py" in render_plugin("cxrsem-gen-cs", "concept_set")


def test_names_already_taken_are_refused(tmp_path, register_plugin):
    class Taken:
        @staticmethod
        @hookimpl
        def register_losses(register):
            register(LossInfo(name="gen-taken", factory=lambda **_: None))

    register_plugin(Taken(), "gen-owner")
    with pytest.raises(UsageError, match="a loss named 'gen-taken' is already registered by 'gen-owner'"):
        new_plugin("cxrsem-gen-taken", "loss", out=tmp_path / "a")
    with pytest.raises(UsageError, match="a plugin named 'gen-owner' is already installed"):
        new_plugin("gen-owner", "architecture", out=tmp_path / "b")
    with pytest.raises(UsageError, match="the module name 'pytest' is already taken by an installed module"):
        new_plugin("pytest", "loss", out=tmp_path / "c")
    new_plugin("cxrsem-gen-taken", "architecture", out=tmp_path / "d")  # another kind: free
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_never_writes_into_a_folder_that_holds_anything(tmp_path):
    full = tmp_path / "full"
    (full / "src").mkdir(parents=True)
    (full / "notes.txt").write_text("precious")
    with pytest.raises(UsageError, match="exists and is not empty; a new plugin never overwrites"):
        new_plugin("cxrsem-gen-a", "loss", out=full)
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt", "src"]
    assert (full / "notes.txt").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("precious")
    with pytest.raises(UsageError, match="exists and is a file"):
        new_plugin("cxrsem-gen-a", "loss", out=a_file)
    assert a_file.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]  # no staging left behind


def test_an_empty_folder_or_a_new_nested_one_is_fine(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert (new_plugin("cxrsem-gen-b", "loss", out=tmp_path / "empty").path / "pyproject.toml").is_file()
    assert (new_plugin("cxrsem-gen-b", "loss", out=tmp_path / "a" / "b").path / "README.md").is_file()
    monkeypatch.chdir(tmp_path)
    assert new_plugin("cxrsem-gen-b", "loss").path == Path("cxrsem-gen-b")  # default: ./NAME
    assert (tmp_path / "cxrsem-gen-b" / "src" / "cxrsem_gen_b" / "plugin.py").is_file()


# --- the command ---------------------------------------------------------------------------------------


def test_cli_calls_the_library_with_its_arguments(monkeypatch, capsys, tmp_path):
    seen = {}

    def recording_new_plugin(name, kind, out=None):
        seen.update(name=name, kind=kind, out=out)
        return new_plugin(name, kind, out=out)

    monkeypatch.setattr("cxrsem.cli.plugins_cmd.new_plugin", recording_new_plugin)
    code, out, err = run_cli(["plugins", "new", "cxrsem-gen-cli", "--kind", "architecture",
                              "--out", tmp_path / "pkg"], capsys)
    assert code == 0, err
    assert seen == {"name": "cxrsem-gen-cli", "kind": "architecture", "out": tmp_path / "pkg"}
    assert f"wrote {tmp_path / 'pkg'}: the architecture 'gen-cli'" in out
    assert "src/cxrsem_gen_cli/plugin.py" in out and "pip install -e" in out


def test_cli_errors_are_one_line_and_plugins_alone_still_lists(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    for args in (["plugins", "new", "3d", "--kind", "loss"],
                 ["plugins", "new", "cxrsem-gen-c", "--kind", "losss"],
                 ["plugins", "new", "cxrsem-gen-c", "--kind", "loss", "--out", tmp_path / "taken"],
                 ["plugins", "new", "cxrsem-gen-c"]):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1, (args, err)
    code, out, _ = run_cli(["plugins"], capsys)
    assert code == 0 and "cxrsem plugins" in out and "phantom" in out
    code, out, _ = run_cli(["plugins", "--help"], capsys)
    assert code == 0 and "new" in out and "--details" in out


# --- the generated tests pass as generated ---------------------------------------------------------------


def _subprocess_env(pythonpath: list[Path] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CXRSEM_DISABLE_PLUGINS")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave the generated folders as they were written
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return env


@pytest.fixture(scope="module")
def generated_test_run(generated, tmp_path_factory):
    """Every generated package's own tests, in one pytest process (one torch start-up, not five):
    ``({test module: [(test, outcome)]}, output)``.

    pytest runs with the settings of one generated pyproject (the loss's, ``-c``), whose
    ``pythonpath = ["src"]`` is then the only way its tests can import it -- as when its author runs
    ``python -m pytest`` in its folder before installing; the other packages' ``src`` folders are
    on ``PYTHONPATH``.  The root dir holds all five: fixtures of a conftest outside the root dir
    would apply to every test.
    """
    own = generated["loss"].path
    report = tmp_path_factory.mktemp("junit") / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(own / "pyproject.toml"),
         "--rootdir", str(own.parent), f"--junitxml={report}",
         *(str(c.path / "tests") for c in generated.values())],
        cwd=own, env=_subprocess_env([c.path / "src" for c in generated.values() if c.path != own]),
        capture_output=True, text=True, timeout=300)
    output = result.stdout[-4000:] + result.stderr[-2000:]
    outcomes: dict[str, list[tuple[str, str]]] = {}
    if report.is_file():
        for case in ET.parse(report).iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")),
                           "passed")
            module = case.get("classname", "").rsplit(".", 1)[-1]
            outcomes.setdefault(module, []).append((case.get("name", ""), outcome))
    return outcomes, output


@pytest.mark.slow
@ALL_KINDS
def test_the_generated_tests_pass(generated_test_run, kind):
    outcomes, output = generated_test_run
    cases = outcomes.get(f"test_{module_of(kind)}", [])
    assert len(cases) >= 5, output
    assert all(outcome == "passed" for _, outcome in cases), (cases, output)


@pytest.mark.slow
def test_pip_builds_and_installs_it_offline(tmp_path, monkeypatch):
    created = new_plugin("cxrsem-gen-pip", "model-source", out=tmp_path / "pkg")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(site),
         str(created.path)],
        env=_subprocess_env(None), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (site / "cxrsem_gen_pip" / "plugin.py").is_file()
    entry_points = next(site.glob("cxrsem_gen_pip-0.1.0.dist-info")) / "entry_points.txt"
    assert entry_points.read_text().split() == ["[cxrsem]", "gen-pip", "=", "cxrsem_gen_pip.plugin"]
    monkeypatch.syspath_prepend(str(site))
    try:
        plugins.reset()
        record = next(r for r in plugins.get_registry().plugins if r.plugin == "gen-pip")
        assert (record.source, record.error, record.components) == \
            ("cxrsem-gen-pip", None, {"model_source": ["gen-pip"]})
        assert cxrsem.load_model("gen-pip:random")["task"]["outputs"] == ["Effusion", "Pneumothorax"]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "cxrsem_gen_pip"]:
            del sys.modules[name]
