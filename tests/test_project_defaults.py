"""The design card's commands as typed: default output folders, default layers, the project file
(cxrsem.toml / [tool.cxrsem]), `cxrsem config`, the no-model error and the quickstart's next steps."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cxrsem import plugins
from cxrsem.defaults import (
    default_layer,
    default_out,
    images_run_name,
    model_run_name,
    numbered,
    train_run_name,
)
from cxrsem.errors import UsageError
from cxrsem.testing import TestKitPlugin, attribution_assets, run_cli, tiny_checkpoint


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working directory: defaults and the project file are relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake_dissect(monkeypatch):
    seen: dict = {}

    def fake(models, layers, **kwargs):
        seen.update(models=models, layers=layers, **kwargs)
        return []

    monkeypatch.setattr("cxrsem.cli.dissect.dissect", fake)
    return seen


class _Run(list):
    """What ``cxrsem attribute`` renders: an empty run (no images attributed)."""


@pytest.fixture
def fake_attribute(monkeypatch):
    seen: dict = {}

    def fake(images, model, layer, **kwargs):
        seen.update(images=images, model=model, layer=layer, **kwargs)
        run = _Run()
        run.layer, run.path, run.out, run.summary_csv, run.skipped = layer, "fx", kwargs["out"], None, []
        return run

    monkeypatch.setattr("cxrsem.cli.attribute.run_attribution", fake)
    return seen


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- naming and numbering --------------------------------------------------------------------------

def test_numbered_takes_the_first_free_name(here):
    base = here / "runs" / "dissect" / "best"
    assert numbered(base) == base and not base.exists()  # nothing is created
    base.mkdir(parents=True)
    assert numbered(base) == base  # an empty folder is free
    (base / "x").write_text("earlier result")
    assert numbered(base) == here / "runs" / "dissect" / "best2"
    (here / "runs" / "dissect" / "best2").mkdir()
    assert numbered(base).name == "best2"  # empty: free again
    (here / "runs" / "dissect" / "best2" / ".hidden").write_text("")
    (here / "runs" / "dissect" / "best3").write_text("a file is taken too")
    assert numbered(base).name == "best4"
    digits = here / "epoch-006"
    digits.mkdir()
    (digits / "f").write_text("")
    assert numbered(digits).name == "epoch-006-2"  # never epoch-0062
    assert default_out("dissect", "best") == Path("runs/dissect/best4")
    assert default_out("dissect", "best", number=False) == Path("runs/dissect/best")


def test_names_from_the_dataset_models_and_images(here):
    assert train_run_name("phantom", "mae-scce") == "phantom-mae-scce"
    assert model_run_name("runs/train/x/best.pt") == "best"
    assert model_run_name(["runs/train/x/best.pt"]) == "best"
    assert model_run_name("xrv:densenet121-res224-all") == "xrv-densenet121-res224-all"
    for epoch in (0, 1):
        write(here / "run" / f"epoch-{epoch:03d}.pt", "")
    assert model_run_name(["run/epoch-*.pt"]) == "run"          # a glob of several: its folder
    assert model_run_name(["run/epoch-000.pt", "b.pt"]) == "run"
    assert model_run_name(["a.pt", "b.pt"]) == "models"          # no folder to name them by
    assert model_run_name(["../evil/../.."]) == "__"             # always one safe component
    write(here / "scans" / "p1.png", "")
    assert images_run_name([Path("scans")]) == "scans"
    assert images_run_name([Path("scans/p1.png")]) == "p1"
    assert images_run_name([Path("scans/p1.png"), Path("scans/p2.png")]) == "scans"
    assert images_run_name([Path("a.png"), Path("b.png")]) == "images"
    assert images_run_name([Path(".")]) == here.name


# -- default layer ---------------------------------------------------------------------------------

def test_default_layer_of_a_densenet_mini_checkpoint(tmp_path):
    ckpt = attribution_assets(tmp_path, images=0)["ckpt"]
    assert default_layer(ckpt) == "features.denseblock4"
    import torch
    assert default_layer(torch.load(ckpt, weights_only=True)) == "features.denseblock4"


def test_an_architecture_without_a_default_layer_lists_its_layers(tmp_path):
    plugins.register_plugin(TestKitPlugin(), "testkit")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    with pytest.raises(UsageError) as info:
        default_layer(ckpt)
    message = str(info.value)
    assert "no --layer given and architecture 'tiny-conv'" in message and "\n" not in message
    assert "choose one with --layer: features.0, features.1, features.2, features" in message


# -- the commands: defaults handed to the library ---------------------------------------------------

def test_dissect_without_out_and_layer_gets_the_defaults(here, fake_dissect, capsys):
    ckpt = attribution_assets(here / "m", images=0)["ckpt"]
    code, out, err = run_cli(["dissect", "--model", ckpt, "--quiet"], capsys)
    assert code == 0, err
    assert fake_dissect["layers"] is None  # the library takes each model's default layer
    assert fake_dissect["out"] == Path("runs/dissect/model")
    assert out.strip().splitlines()[-1] == "results in runs/dissect/model"
    write(here / "runs" / "dissect" / "model" / "model" / "x", "earlier")
    code, out, _ = run_cli(["dissect", "--model", ckpt, "--quiet"], capsys)
    assert fake_dissect["out"] == Path("runs/dissect/model2") and "results in runs/dissect/model2" in out


def test_an_explicit_out_is_used_as_it_is(here, fake_dissect, capsys):
    ckpt = attribution_assets(here / "m", images=0)["ckpt"]
    taken = write(here / "mine" / "model" / "old.txt", "earlier").parent.parent
    code, _, err = run_cli(["dissect", "--model", ckpt, "--layer", "denseblock2", "--out", taken,
                            "--quiet"], capsys)
    assert code == 0, err
    assert fake_dissect["out"] == taken and fake_dissect["layers"] == ["denseblock2"]
    config = write(here / "c.toml", f'[dissect]\nout = "{taken.as_posix()}"\n')
    code, _, err = run_cli(["dissect", "--model", ckpt, "--config", config, "--quiet"], capsys)
    assert code == 0, err
    assert fake_dissect["out"] == taken  # an --out from a file counts as given: no numbering
    assert not (here / "runs").exists()


def test_train_without_out(here, capsys, captured_train):
    code, out, err = run_cli(["train", "--dataset", "phantom", "--loss", "mae-scce"], capsys)
    assert code == 0, err
    assert captured_train["config"].out == str(Path("runs/train/phantom-mae-scce"))
    assert out.strip().splitlines()[-1].startswith("results in ")
    write(here / "runs" / "train" / "phantom-mae-scce" / "best.pt", "")
    run_cli(["train", "--dataset", "phantom", "--loss", "mae-scce"], capsys)
    assert captured_train["config"].out == str(Path("runs/train/phantom-mae-scce2"))
    run_cli(["train", "--dataset", "phantom", "--loss", "mae-scce", "--overwrite"], capsys)
    assert captured_train["config"].out == str(Path("runs/train/phantom-mae-scce"))  # replace it
    run_cli(["train", "--dataset", "phantom", "--loss", "mae-scce", "--out", "x"], capsys)
    assert captured_train["config"].out == "x"


def test_verify_writes_to_its_default_folder(here, capsys, monkeypatch):
    seen = {}

    def fake_verify(model, layer, dataset, **kwargs):
        seen.update(model=model, layer=layer, dataset=dataset, **kwargs)
        return SimpleNamespace(out=kwargs["out"])

    monkeypatch.setattr("cxrsem.cli.verify.verify", fake_verify)
    monkeypatch.setattr("cxrsem.cli.verify.print_verification", lambda *a: None)
    ckpt = attribution_assets(here / "m", images=0)["ckpt"]
    code, out, err = run_cli(["verify", "--model", ckpt, "--dataset", "phantom", "--quiet"], capsys)
    assert code == 0, err
    assert seen["layer"] is None and seen["out"] == Path("runs/verify/model")
    assert "results in runs/verify/model" in out


def test_failed_checks_leave_no_folder(here, capsys):
    assets = attribution_assets(here / "m", images=1)
    for args in (["dissect", "--model", assets["ckpt"], "--layer", "nope", "--quiet"],
                 ["dissect", "--model", assets["ckpt"], "--concepts", "nope", "--quiet"],
                 ["attribute", "missing.png", "--model", assets["ckpt"]],
                 ["attribute", assets["images"] / "cxr0.png", "--model", assets["ckpt"],
                  "--target", "nope"]):
        code, _, err = run_cli(args, capsys)
        assert code != 0 and err.strip().splitlines()[-1].startswith("Error: "), (args, err)
        assert err.count("Error") == 1
    assert not (here / "runs").exists()


# -- no model anywhere ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["dissect"], ["attribute", "x.png"],
                                     ["verify", "--dataset", "phantom"]])
def test_no_model_error_names_the_quickstart_model_when_there_is_one(here, capsys, command):
    code, _, err = run_cli(command, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("Error: no model given (--model CKPT") and "cxrsem quickstart" in err
    write(here / "runs" / "quickstart" / "severity" / "best.pt", "")
    code, _, err = run_cli(command, capsys)
    assert code == 2
    assert err == "Error: no model given (--model CKPT); try --model runs/quickstart/severity/best.pt\n"


def test_quickstart_default_model_path_is_what_the_quickstart_trains():
    from cxrsem.defaults import QUICKSTART_MODEL
    from cxrsem.quickstart import QuickstartSettings

    assert QUICKSTART_MODEL.parent.parent == Path(QuickstartSettings.out)
    assert QUICKSTART_MODEL.name == "best.pt"  # what every training run writes


# -- project file: precedence ----------------------------------------------------------------------

def test_project_file_gives_defaults_below_config_and_cli(here, capsys, fake_attribute):
    write(here / "cxrsem.toml", '[attribute]\nmodel = "p.pt"\nlayer = "denseblock3"\ntop-k = 4\n'
                                'steps = 8\nbatch-size = 2\n')
    config = write(here / "c.toml", '[attribute]\nlayer = "denseblock2"\ntop-k = 5\nsteps = 9\n')
    code, out, err = run_cli(["attribute", "img.png", "--config", config, "--steps", "10"], capsys)
    assert code == 0, err
    seen = fake_attribute
    assert seen["model"] == "p.pt"                 # project file
    assert seen["batch_size"] == 2                 # project file
    assert seen["layer"] == "denseblock2"          # --config over the project file
    assert seen["top_k"] == 5                      # --config over the project file
    assert seen["steps"] == 10                     # CLI over both
    assert seen["method"] == "ig"                  # built-in default
    assert seen["out"] == Path("runs/attribute/img")
    assert out.strip().splitlines()[-1] == "results in runs/attribute/img"


def test_pyproject_tool_table_and_cxrsem_toml_wins(here, capsys, fake_attribute):
    write(here / "pyproject.toml", '[project]\nname = "mine"\n[tool.cxrsem.attribute]\n'
                                   'model = "py.pt"\nlayer = "features"\n')
    code, _, err = run_cli(["attribute", "img.png"], capsys)
    assert code == 0, err
    assert fake_attribute["model"] == "py.pt" and fake_attribute["layer"] == "features"
    write(here / "cxrsem.toml", '[attribute]\nmodel = "toml.pt"\nlayer = "features"\n')
    run_cli(["attribute", "img.png"], capsys)
    assert fake_attribute["model"] == "toml.pt"  # cxrsem.toml is used alone


def test_project_file_component_tables_merge_under_config(here, capsys, fake_dissect):
    write(here / "cxrsem.toml", '[dissect]\nmodel = ["a.pt"]\nlayer = ["features"]\n'
                                '[concepts.phantom]\nn_images = 5\norder = "x"\n'
                                '[data_roots]\nnih = "data/nih"\n')
    config = write(here / "conf" / "c.toml", '[concepts.phantom]\nn_images = 7\n')
    code, _, err = run_cli(["dissect", "--config", config, "--quiet"], capsys)
    assert code == 0, err
    assert fake_dissect["models"] == ["a.pt"] and fake_dissect["layers"] == ["features"]
    assert fake_dissect["concept_options"] == {"phantom": {"n_images": 7, "order": "x"}}
    assert fake_dissect["data_roots"] == {"nih": str(Path("data/nih"))}


@pytest.mark.parametrize("name, text, fragment", [
    ("cxrsem.toml", "[dissect]\nlayers = 3\n", "unknown key 'layers' in [dissect] of 'cxrsem.toml'"),
    ("cxrsem.toml", "[disect]\n", "unknown key 'disect' in 'cxrsem.toml'"),
    ("pyproject.toml", "[tool.cxrsem.dissect]\nquantile = \"x\"\n",
     "bad value for 'quantile' in [tool.cxrsem.dissect] of 'pyproject.toml'"),
    ("cxrsem.toml", "[dissect\n", "invalid TOML in 'cxrsem.toml'"),
])
def test_project_file_errors_are_one_line_naming_the_file(here, capsys, name, text, fragment):
    write(here / name, text)
    code, _, err = run_cli(["dissect", "--model", "m.pt", "--layer", "x", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_an_unrelated_pyproject_is_never_read(here, capsys, fake_dissect):
    write(here / "pyproject.toml", "[project\nbroken = ")  # not ours, and not even TOML
    code, _, err = run_cli(["dissect", "--model", "m.pt", "--layer", "x", "--out", "o", "--quiet"],
                           capsys)
    assert code == 0, err


def test_resume_ignores_the_project_file(here, capsys, monkeypatch):
    from cxrsem.training import TrainResult

    seen = {}

    def fake_resume(run_dir, epochs=None, device=None, progress=None):
        seen.update(epochs=epochs, device=device)
        return TrainResult(here, 1, 1, ("auroc_mean", 0.5), [], False, [])

    monkeypatch.setattr("cxrsem.cli.train.resume", fake_resume)
    write(here / "cxrsem.toml", '[train]\nepochs = 3\nlr = 0.5\ndevice = "cpu"\n[dataset]\nn_train = 9\n')
    code, _, err = run_cli(["train", "--resume", here / "run"], capsys)
    assert code == 0, err
    assert seen == {"epochs": None, "device": None}
    config = write(here / "c.toml", "[train]\nlr = 0.5\n")
    code, _, err = run_cli(["train", "--resume", here / "run", "--config", config], capsys)
    assert code == 2 and "--lr cannot change on --resume" in err  # --config still counts


# -- cxrsem config ---------------------------------------------------------------------------------

def _rows(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.splitlines():
        if " = " in line and not line.startswith("# "):
            setting, _, comment = line.partition("  # ")
            key, _, value = setting.partition(" = ")
            rows[key.strip()] = (value.strip(), comment.strip())
    return rows


def test_config_command_shows_values_and_their_sources(here, capsys):
    ckpt = attribution_assets(here / "m", images=0)["ckpt"]
    write(here / "cxrsem.toml", f'[dissect]\nmodel = ["{Path(ckpt).as_posix()}"]\nseg-size = 16\n'
                                f'bootstrap = 5\n[concepts.phantom]\nn_images = 8\n')
    config = write(here / "c.toml", "[dissect]\nbootstrap = 10\nfdr = 0.1\n")
    code, out, err = run_cli(["config", "dissect", "--config", config, "--fdr", "0.2"], capsys)
    assert code == 0, err
    assert out.startswith("# project file: cxrsem.toml; --config: ")
    rows = _rows(out)
    assert rows["seg-size"] == ("16", "cxrsem.toml")
    assert rows["bootstrap"] == ("10", f"--config {config}")
    assert rows["fdr"] == ("0.2", "cli")
    assert rows["quantile"] == ("0.005", "default")
    assert rows["layer"][0] == '["features.denseblock4"]' and rows["layer"][1].startswith("default")
    assert rows["out"][0] == '"runs/dissect/model"'
    assert rows["n_images"] == ("8", "cxrsem.toml")
    assert "[concepts.phantom]" in out

    code, out, err = run_cli(["config", "dissect", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    settings = {row["key"]: row for row in data["settings"]}
    assert data["files"] == {"project": "cxrsem.toml", "config": None}
    assert settings["bootstrap"]["value"] == 5 and settings["bootstrap"]["source"] == "cxrsem.toml"
    assert data["tables"]["concepts.phantom"][0]["value"] == 8


def test_config_command_overview_and_pyproject(here, capsys):
    code, out, _ = run_cli(["config"], capsys)
    assert code == 0 and "no settings from files" in out and "project file: none" in out
    write(here / "pyproject.toml", '[tool.cxrsem.attribute]\nmodel = "m.pt"\n[tool.cxrsem.train]\n'
                                   'epochs = 2\n')
    code, out, _ = run_cli(["config"], capsys)
    assert code == 0, out
    assert "# project file: pyproject.toml" in out
    assert "[attribute]" in out and "[train]" in out and "[dissect]" not in out
    assert _rows(out)["epochs"] == ("2", "pyproject.toml")
    code, out, _ = run_cli(["config", "attribute"], capsys)
    rows = _rows(out)
    assert rows["model"] == ('"m.pt"', "pyproject.toml") and rows["method"] == ('"ig"', "default")
    code, _, err = run_cli(["config", "plugins"], capsys)
    assert code == 2 and "takes no settings from files" in err
    code, _, err = run_cli(["config", "dissekt"], capsys)
    assert code == 2 and "unknown command 'dissekt'" in err and "dissect" in err


def test_config_command_without_a_model(here, capsys):
    code, out, err = run_cli(["config", "attribute", "img.png"], capsys)
    assert code == 0, err
    rows = _rows(out.replace("# model = (unset)", "model = (unset)"))
    assert "no model given" in rows["model"][1]
    assert _rows(out)["out"][0] == '"runs/attribute/img"'


# -- end to end on a tiny model --------------------------------------------------------------------

def test_the_library_resolves_the_default_layer_from_the_checkpoint_it_loads(here):
    """``layers=None`` / ``layer=None``: the layer the checkpoint records, else its architecture's
    default -- read from the checkpoint the call loads anyway (the CLI no longer loads it first)."""
    import cxrsem
    from cxrsem.attribution.api import _load_model

    ckpt = attribution_assets(here / "m", images=0)["ckpt"]
    result = cxrsem.dissect(ckpt, concepts="phantom", concept_options={"phantom": {"n_images": 4}},
                            settings=cxrsem.DissectSettings(seg_size=8, batch_size=4),
                            device="cpu")
    assert [layer.layer for layer in result.layers] == ["features.denseblock4"]
    model, _ = _load_model(ckpt, None, None, "cpu", "float32", "auto")
    assert model.layer == "features.denseblock4"
    recorded = torch.load(ckpt, weights_only=True)
    recorded["arch"]["layer"] = "features.denseblock2"  # a checkpoint's own record wins
    assert _load_model(recorded, None, None, "cpu", "float32", "auto")[0].layer == \
        "features.denseblock2"


def test_dissect_then_attribute_as_typed_with_a_project_file(here, capsys):
    assets = attribution_assets(here / "m", images=1)
    ckpt = Path(assets["ckpt"]).relative_to(here).as_posix()
    code, out, err = run_cli(["dissect", "--model", ckpt, "--concept-opt", "phantom.n_images=6",
                              "--seg-size", "16", "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((here / "runs/dissect/model/model/features.denseblock4/dissection.json")
                        .read_text())
    assert record["layer"] == "features.denseblock4"
    assert out.strip().splitlines()[-1] == "results in runs/dissect/model"

    write(here / "cxrsem.toml", f'[attribute]\nmodel = "{ckpt}"\ndissection = "runs/dissect/model"\n'
                                f'steps = 4\n')
    image = Path(assets["images"] / "cxr0.png").relative_to(here)
    code, out, err = run_cli(["attribute", image], capsys)
    assert code == 0, err
    result = json.loads((here / "runs/attribute/cxr0/cxr0.json").read_text())
    assert result["layer"] == "features.denseblock4" and result["dissection"] is not None
    assert out.strip().splitlines()[-1] == "results in runs/attribute/cxr0"
    first = (here / "runs/attribute/cxr0/cxr0.json").read_bytes()
    code, out, err = run_cli(["attribute", image], capsys)  # again: a new folder, the first kept
    assert code == 0, err
    assert (here / "runs/attribute/cxr0-2/cxr0.json").is_file()
    assert (here / "runs/attribute/cxr0/cxr0.json").read_bytes() == first


def test_quickstart_next_commands_run_as_printed(here, capsys):
    """The three commands the quickstart prints, on a stand-in of its folder."""
    from cxrsem.cli.quickstart import IMAGE_PLACEHOLDER, next_commands
    from cxrsem.dissection import DissectSettings, dissect

    qs = Path("runs/quickstart")
    assets = attribution_assets(here / "assets", images=1)
    final = qs / "severity" / "epoch-002.pt"
    final.parent.mkdir(parents=True)
    final.write_bytes(Path(assets["ckpt"]).read_bytes())
    dissections = dissect([final], ["denseblock4"], out=qs / "dissect", concepts=["phantom"],
                          concept_options={"phantom": {"n_images": 6}},
                          settings=DissectSettings(seg_size=16), figures=False)
    result = SimpleNamespace(out=qs, dissections=dissections,
                             training=SimpleNamespace(run_dir=qs / "severity"))
    commands = next_commands(result)
    assert commands == [
        f"cxrsem attribute {IMAGE_PLACEHOLDER} --model runs/quickstart/severity/epoch-002.pt "
        f"--dissection runs/quickstart/dissect",
        "cxrsem dissect --model runs/quickstart/severity/epoch-002.pt",
        f"cxrsem report runs/quickstart/dissect --attributions runs/attribute/{Path(IMAGE_PLACEHOLDER).stem}",
    ]
    Path(IMAGE_PLACEHOLDER).write_bytes((assets["images"] / "cxr0.png").read_bytes())
    attribute_args = shlex.split(commands[0])[1:] + ["--steps", "4"]
    code, _, err = run_cli(attribute_args, capsys)
    assert code == 0, err
    code, _, err = run_cli(shlex.split(commands[2])[1:] + ["--out", "r.html"], capsys)
    assert code == 0, err
    assert Path("r.html").is_file()
