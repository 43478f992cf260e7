"""The report's Faithfulness section: ``cxrsem verify`` results (``verify.json``) shown as curves,
AOPC with paired comparisons, concept ablation and localisation; bad files become warnings."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from cxrsem.attribution.verify import VerifySettings, verify
from cxrsem.reporting import build_report
from cxrsem.testing import mini_densenet, run_cli, tiny_checkpoint
from tests.report_fixtures import dissection_doc, write_dissection


def estimate(value, low=None, high=None):
    return {"value": value, "low": value if low is None else low, "high": value if high is None else high}


def verify_doc(**changes):
    doc = {
        "schema": "cxrsem-verify/1", "model": "/runs/m/epoch-004.pt", "layer": "denseblock4",
        "images": 40, "split": "val", "metric": "mae_mean", "metric_value": 0.25,
        "settings": {"resamples": 1000, "confidence": 0.95},
        "curves": [{"method": "ig", "ks": [1, 5], "aopc": estimate(0.5, 0.4, 0.6),
                    "deletion": [estimate(0.3), estimate(0.7)], "insertion": [estimate(0.1), estimate(0.2)]},
                   {"method": "activation", "ks": [1, 5], "aopc": estimate(0.2, 0.1, 0.3),
                    "deletion": [estimate(0.1), estimate(0.3)], "insertion": [estimate(0.0), estimate(0.1)]}],
        "random": {"method": "random", "ks": [1, 5], "aopc": estimate(0.01),
                   "deletion": [estimate(0.0), estimate(0.02)], "insertion": [estimate(0.0), estimate(0.0)]},
        "aopc_comparisons": [
            {"first": "ig", "second": "activation", "difference": estimate(0.3, 0.2, 0.4), "p_value": 0.0,
             "p_adjusted": 0.0},
            {"first": "ig", "second": "random", "difference": estimate(0.49, 0.39, 0.59), "p_value": 0.0,
             "p_adjusted": 0.0},
            {"first": "activation", "second": "random", "difference": estimate(0.19, -0.01, 0.29),
             "p_value": 0.08, "p_adjusted": 0.08}],
        "concept_ablation": [{"concept": "<b>Consolidation</b>", "units": [3, 7],
                              "change": estimate(0.41, 0.33, 0.5),
                              "random_change": estimate(0.05, 0.01, 0.09),
                              "excess": estimate(0.36, 0.27, 0.46), "excess_p": 0.0}],
        "localisation": {"concept_sets": ["phantom"], "images": 30, "mask_size": 56, "options": {},
                         "methods": [{"method": "ig", "images": 12,
                                      "pointing_game": estimate(0.75, 0.5, 0.92),
                                      "relevance_mass": estimate(0.4, 0.3, 0.5), "concepts": {}},
                                     {"method": "activation", "images": 0, "pointing_game": None,
                                      "relevance_mass": None, "concepts": {}}]},
        "sentences": ["zeroing the 2 <b>Consolidation</b> detector(s) changes mae_mean by 0.41"],
    }
    doc.update(changes)
    return doc


@pytest.fixture
def dissection_dir(tmp_path):
    write_dissection(tmp_path / "dis", "epoch-004", dissection_doc([("Consolidation", 0.1)]))
    return tmp_path / "dis"


def test_the_section_shows_every_part_of_the_record(tmp_path, dissection_dir):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "verify.json").write_text(json.dumps(verify_doc()))
    result = build_report([dissection_dir], verify=[tmp_path / "v"], out=tmp_path / "r.html")
    assert result.verifications == 1 and not result.warnings
    page = result.out.read_text()
    section = page[page.index('id="faithfulness"'):page.index('id="models"')]
    assert "0.5 [0.4, 0.6]" in section                         # ig's AOPC with its interval
    assert "0.49 [0.39, 0.59]" in section and "&lt; 0.001" in section  # ig minus random, p < 1/B
    assert "ig larger" in section and "activation not distinguishable" not in section  # pairs only
    assert "0.41 [0.33, 0.5]" in section and "0.05 [0.01, 0.09]" in section
    assert "0.36 [0.27, 0.46]" in section  # the paired difference detectors - random units
    assert "0.75 [0.5, 0.92]" in section
    assert "<b>Consolidation" not in page and "&lt;b&gt;Consolidation&lt;/b&gt;" in section
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)" alt="deletion and insertion', section)
    assert Image.open(io.BytesIO(base64.b64decode(png))).size[0] > 400
    md = build_report([dissection_dir], verify=[tmp_path / "v"], out=tmp_path / "r.md", fmt="md")
    text = md.out.read_text()
    assert "## 5. Faithfulness" in text
    assert r"| ig | activation | 0.3 \[0.2, 0.4\] | &lt; 0.001 | ig larger |" in text
    assert any(f.name == "00-curves.png" for f in md.files)


@pytest.mark.parametrize("bad, reason", [
    ("{", "not valid JSON"),
    (json.dumps({"schema": "cxrsem-verify/9"}), "schema"),
    (json.dumps(verify_doc(curves=[])), "no curves"),
    (json.dumps(verify_doc(curves=[{"method": "ig", "ks": [1, 2], "aopc": estimate(1.0),
                                    "deletion": [estimate(1.0)], "insertion": []}])), "deletion"),
])
def test_a_bad_record_is_a_warning_and_the_report_is_still_written(tmp_path, dissection_dir, bad, reason):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "verify.json").write_text(bad)
    result = build_report([dissection_dir], verify=[tmp_path / "v", tmp_path / "missing"],
                          out=tmp_path / "r.html")
    assert result.verifications == 0 and result.out.is_file()
    assert any(reason in w for w in result.warnings), result.warnings
    assert any("missing does not exist" in w for w in result.warnings)


def test_a_real_verify_run_goes_into_the_report_through_the_cli(tmp_path, capsys):
    from tests.test_verify import OUTPUTS

    model = tiny_checkpoint(tmp_path / "m.pt", mini_densenet(seed=1, outputs=8), arch="densenet-mini",
                            image_size=48, outputs=OUTPUTS)
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "denseblock4", "--concept-opt",
                            "phantom.n_images=30", "--seg-size", 24, "--quantile", 0.02,
                            "--iou-threshold", 0.02, "--no-figures", "--out", tmp_path / "d", "--quiet"],
                           capsys)
    assert code == 0, err
    result = verify(model, "denseblock4", "phantom", dissection=tmp_path / "d" / "m",
                    dataset_options={"n_val": 8}, device="cpu", out=tmp_path / "v",
                    settings=VerifySettings(methods=("ig", "gradcam"), ks=(1, 3), random_draws=2, steps=4,
                                            limit=8, batch_size=4, resamples=50))
    code, out, err = run_cli(["report", tmp_path / "d", "--verify", tmp_path / "v", "--out",
                              tmp_path / "r.html"], capsys)
    assert code == 0, err
    section = (tmp_path / "r.html").read_text().split('id="faithfulness"')[1]
    ig = next(c for c in result.curves if c.method == "ig")
    assert f"{ig.aopc.value:.3g} [{ig.aopc.low:.3g}, {ig.aopc.high:.3g}]" in section
    for c in result.concepts:
        assert f"{c.change.value:.3g} [" in section
