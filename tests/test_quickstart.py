"""The quickstart pipeline end to end, at toy size: every stage runs and hands over its files."""

from __future__ import annotations

import json

import pytest

from cxrsem.cli import main
from cxrsem.errors import UsageError
from cxrsem.quickstart import QuickstartSettings, run_quickstart


@pytest.mark.slow
def test_quickstart_runs_every_stage(tmp_path):
    settings = QuickstartSettings(out=str(tmp_path / "qs"), device="cpu", image_size=48, samples=2,
                                  n_train=64, n_val=32, epochs=1, batch_size=16,
                                  dissect_images=24, attribution_steps=8)
    result = run_quickstart(settings)
    out = tmp_path / "qs"
    assert (out / "samples" / "phantom-test-000000.png").is_file()
    assert result.training.epochs_run == 1
    for stem in ("epoch-000", "epoch-001"):
        record = json.loads((out / "dissect" / stem / "features.denseblock4" / "dissection.json").read_text())
        assert record["model"]["path"].endswith(f"{stem}.pt")
        assert record["bootstrap"]["resamples"] == 1000  # the demo says how sure ...
        assert record["nulls"]["shuffle"]["permutations"] == 1000  # ... and against what chance
    assert len(result.attributions) == 2
    attribution = json.loads(next((out / "attributions").glob("*.json")).read_text())
    assert attribution["layer"] == "features.denseblock4"
    verified = json.loads((out / "verify" / "verify.json").read_text())
    assert verified["images"] == 32 and verified["localisation"]["concept_sets"] == ["phantom"]
    html = (out / "report.html").read_text()
    assert "initial (epoch 0)" in html and "trained (epoch 001)" in html
    assert 'id="faithfulness"' in html and "deletion and insertion curves" in html
    # A rerun replaces the earlier quickstart only when asked to.
    with pytest.raises(UsageError, match="already holds a quickstart; replace it with --overwrite"):
        run_quickstart(settings)
    settings.overwrite = True
    again = run_quickstart(settings)
    assert again.training.epochs_run == 1 and (out / "report.html").is_file()


def test_quickstart_never_writes_into_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as info:
            main(["quickstart", "--out", str(out), *extra])
        assert info.value.code == 2
        assert "holds files that are not a quickstart's (thesis.tex)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_quickstart_refuses_an_output_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(SystemExit) as info:
        main(["quickstart", "--out", str(target)])
    assert info.value.code == 2 and target.read_text() == "keep"
