"""CLI behaviour: thin commands, one-line errors, config precedence."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cxrsem
from cxrsem.cli import main
from cxrsem.testing import run_cli


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"cxrsem {cxrsem.__version__}"


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("train", "dissect", "attribute", "report", "plugins", "quickstart"):
        assert command in out


@pytest.mark.parametrize("args, fragment", [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["plugins", "--jsn"], "No such option: --jsn"),
    (["train", "--out", "x", "--epochs", "many"], "Invalid value for '--epochs'"),
])
def test_usage_errors_are_one_line(args, fragment, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("Error: ")
    assert fragment in err


def test_unknown_component_is_one_line_with_suggestion(tmp_path, capsys):
    code, _, err = run_cli(["train", "--dataset", "phantm", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "unknown dataset 'phantm'; did you mean 'phantom'?" in err


def test_output_folder_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("precious")
    code, _, err = run_cli(["quickstart", "--out", str(target)], capsys)
    assert code == 2
    assert "exists and is a file" in err and err.count("\n") == 1
    assert target.read_text() == "precious"


def test_invalid_toml_and_unknown_keys(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    code, _, err = run_cli(["train", "--config", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "invalid TOML" in err and str(bad) in err

    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nepochz = 3\n")
    code, _, err = run_cli(["train", "--config", str(unknown), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "unknown key 'epochz' in [train]" in err and str(unknown) in err

    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[train]\nepochs = \"three\"\n")
    code, _, err = run_cli(["train", "--config", str(wrong), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "bad value for 'epochs'" in err

    missing = tmp_path / "nope.toml"
    code, _, err = run_cli(["train", "--config", str(missing), "--out", "x"], capsys)
    assert code == 2 and "cannot read config" in err


def test_config_gives_defaults_and_cli_wins(tmp_path, capsys, captured_train):
    """The command hands the library the merged values: patch the library call and look."""
    seen = captured_train
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nepochs = 7\nbatch-size = 4\nloss = "mse"\n[dataset]\nn_train = 50\n'
                   '[data_roots]\nnih = "nih-data"\n')
    code, _, err = run_cli(["train", "--config", str(cfg), "--epochs", "2", "--out", str(tmp_path / "r"),
                            "--dataset-opt", "n_val=20"], capsys)
    assert code == 0, err
    config = seen["config"]
    assert config.epochs == 2            # CLI wins
    assert config.batch_size == 4        # from the file
    assert config.loss == "mse"          # from the file
    assert config.lr == 1e-4             # default
    assert config.dataset_options == {"n_train": 50, "n_val": "20"}
    assert config.data_roots == {"nih": str(tmp_path / "nih-data")}  # relative to the config file


def test_unexpected_error_is_one_line_and_debug_shows_traceback(monkeypatch, capsys):
    def explode(**_):
        raise ZeroDivisionError("deep bug")

    monkeypatch.setattr("cxrsem.cli.plugins_cmd.describe_plugins", explode)
    code, _, err = run_cli(["plugins"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError: deep bug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "plugins"])


def test_console_script_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "cxrsem", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("cxrsem ")
