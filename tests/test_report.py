"""``cxrsem report``: aggregation on hand-made results, bad input, escaping, formats and the CLI."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsem.errors import DataError, UsageError
from cxrsem.reporting import ReportResult, SummaryRow, build_report, parse_labels
from cxrsem.reporting.aggregate import (
    attribution_top_labelled,
    count_at,
    detector_counts,
    evolution_series,
    gallery_units,
    model_counts,
    series_changes,
    threshold_curve,
    top_contributor_table,
    total_detectors,
    unique_concepts,
)
from cxrsem.reporting.build import assemble
from cxrsem.reporting.collect import Unit, collect
from cxrsem.reporting.markdown import md
from cxrsem.testing import run_cli
from tests.report_fixtures import attribution_doc, dissection_doc, write_attribution, write_dissection

XSS = "<script>alert(1)</script>"

UNITS = [("Consolidation", 0.12), ("Consolidation", 0.05), ("Nodule", 0.04), ("Nodule", 0.041),
         ("Left Lung", 0.03), (None, 0.9), ("Consolidation", 0.021)]


def _units(rows):
    return [Unit(k, c, iou) for k, (c, iou) in enumerate(rows)]


# -- aggregation ------------------------------------------------------------------------------------

def test_detector_counts_use_strict_threshold_on_the_best_iou():
    units = _units(UNITS)
    counts = detector_counts(units, 0.04, ["Left Lung", "Consolidation", "Nodule", "Mass"])
    # IoU 0.04 is not > 0.04; a unit without a concept never counts; listed concepts stay at 0.
    assert counts == {"Left Lung": 0, "Consolidation": 2, "Nodule": 1, "Mass": 0}
    assert total_detectors(units, 0.04) == 3
    assert unique_concepts(counts) == 2
    assert detector_counts(units, 0.02) == {"Consolidation": 3, "Nodule": 2, "Left Lung": 1}
    assert detector_counts(units, 0.2) == {}


def test_threshold_curve_is_monotone_and_matches_counts():
    units = _units(UNITS)
    curve = threshold_curve(units, (0.02, 0.04, 0.06, 0.1))
    assert curve == [(0.02, 6, 3), (0.04, 3, 2), (0.06, 1, 1), (0.1, 1, 1)]
    totals = [n for _, n, _ in threshold_curve(units)]
    assert totals == sorted(totals, reverse=True)
    assert threshold_curve(units)[0][0] == 0.02 and threshold_curve(units)[-1][0] == 0.1


def test_gallery_takes_best_units_per_concept():
    chosen = gallery_units(_units(UNITS), 0.02, per_concept=2)
    assert list(chosen) == ["Consolidation", "Nodule", "Left Lung"]
    assert [u.unit for u in chosen["Consolidation"]] == [0, 1]
    assert [u.unit for u in chosen["Nodule"]] == [3, 2]


@pytest.fixture
def run_tree(tmp_path):
    """Dissections of epochs 0-2 of run A (and best.pt = epoch 2), one of run B, as `dissect` writes."""
    dis = tmp_path / "dis"
    per_epoch = {
        0: [("Left Lung", 0.05), ("Consolidation", 0.01), ("Nodule", 0.01)],
        1: [("Left Lung", 0.05), ("Consolidation", 0.06), ("Nodule", 0.01)],
        2: [("Left Lung", 0.01), ("Consolidation", 0.06), ("Consolidation", 0.07)],
    }
    for epoch, units in per_epoch.items():
        write_dissection(dis, f"epoch-{epoch:03d}",
                         dissection_doc(units, model_path=f"/runs/a/epoch-{epoch:03d}.pt", epoch=epoch))
    write_dissection(dis, "best", dissection_doc(per_epoch[2], model_path="/runs/a/best.pt", epoch=2))
    write_dissection(tmp_path / "other", "epoch-003",
                     dissection_doc([("Nodule", 0.2)] * 3, model_path="/runs/b/epoch-003.pt", epoch=3,
                                    loss="weighted-mse", init="/runs/a/epoch-002.pt"))
    return tmp_path


def test_evolution_series_per_run_sorted_by_epoch(run_tree):
    # Given in an unusual order, and a best.pt that repeats epoch 2: one series, epochs 0, 1, 2.
    collected = collect([run_tree / "dis" / "epoch-002", run_tree / "dis", run_tree / "other"])
    assert not collected.warnings
    assert len(collected.dissections) == 5
    series = evolution_series(collected.dissections, 0.04)
    assert len(series) == 1  # run b has one epoch
    run = series[0]
    assert run.run_dir == "/runs/a" and run.epochs == [0, 1, 2]
    assert run.totals == [1, 2, 2]
    assert run.counts["Left Lung"] == [1, 1, 0]
    assert run.counts["Consolidation"] == [0, 1, 2]
    assert run.counts["Nodule"] == [0, 0, 0]
    assert "phantom/mae-scce/random · epoch-002" in run.models  # not best.pt
    assert series_changes(run) == [("Consolidation", 0, 2), ("Left Lung", 1, 0)]


def test_checkpoint_labels_do_not_name_the_run(run_tree):
    dis = run_tree / "dis"
    labels = {str(dis / "epoch-000"): "initial", str(dis / "epoch-002"): "trained"}
    collected = collect([dis], labels=labels)
    assert [d.name for d in collected.dissections] == [
        "initial", "phantom/mae-scce/random · epoch-001", "phantom/mae-scce/random · best", "trained"]
    (run,) = evolution_series(collected.dissections, 0.04)
    assert run.name == "phantom/mae-scce/random" and run.models[-1] == "trained"
    (run,) = evolution_series(collect([dis], labels={str(dis): "Run A"}).dissections, 0.04)
    assert run.name == "Run A"


def test_every_layout_is_found_once_and_the_cache_is_skipped(run_tree):
    dis = run_tree / "dis"
    cache = dis / ".cache" / "x"
    cache.mkdir(parents=True)
    (cache / "dissection.json").write_text("not json")
    layer = dis / "epoch-000" / "features.denseblock4"
    collected = collect([dis, dis / "epoch-001", layer, layer / "dissection.json"])
    assert not collected.warnings
    assert sorted(d.model_stem for d in collected.dissections) == ["best", "epoch-000", "epoch-001",
                                                                   "epoch-002"]


def test_names_labels_and_layers(run_tree):
    labels = parse_labels([f"{run_tree / 'dis'}=Run A", f"{run_tree / 'other'}=Weighted (CheXpert)",
                           "/nowhere=unused"])
    collected = collect([run_tree / "dis", run_tree / "other"], labels=labels)
    names = [d.name for d in collected.dissections]
    # A label covering several checkpoints keeps their stems; one covering one model is the name.
    assert names == ["Run A · epoch-000", "Run A · epoch-001", "Run A · best", "Run A · epoch-002",
                     "Weighted (CheXpert)"]
    assert any("--label /nowhere=unused" in w for w in collected.warnings)
    plain = collect([run_tree / "other"])
    assert plain.dissections[0].name == "phantom/weighted-mse/from a/epoch-002 · epoch-003"
    # Two layers: every name says which.
    write_dissection(run_tree / "other", "epoch-003",
                     dissection_doc([("Nodule", 0.2)], layer="features.denseblock3",
                                    model_path="/runs/b/epoch-003.pt", epoch=3))
    names = sorted(d.name for d in collect([run_tree / "other"]).dissections)
    assert names == ["phantom/mae-scce/random · epoch-003 @ denseblock3",
                     "phantom/weighted-mse/from a/epoch-002 · epoch-003 @ denseblock4"]


def test_parse_labels_splits_at_an_existing_path(tmp_path):
    folder = tmp_path / "lr=0.1"
    folder.mkdir()
    assert parse_labels([f"{folder}=BCE = plain"]) == {str(folder): "BCE = plain"}
    assert parse_labels(["runs/x=Name"]) == {"runs/x": "Name"}
    with pytest.raises(UsageError, match="DIR=NAME"):
        parse_labels(["no-equals"])


def test_top_contributor_table_relabels_at_the_report_threshold(tmp_path):
    doc = dissection_doc([("Consolidation", 0.10), ("Nodule", 0.05), ("Left Lung", 0.01), ("Mass", 0.0)])
    write_dissection(tmp_path / "dis", "epoch-004", doc)
    attr = tmp_path / "attr"
    write_attribution(attr, attribution_doc(doc, "/x/a.png", [0, 1], contributions=[0, 0, 0.1, 0.1]))
    write_attribution(attr, attribution_doc(doc, "/x/b.png", [1, 0], contributions=[0, 0, 0.1, 0.1]))
    write_attribution(attr, attribution_doc(doc, "/x/c.png", [2, 0], contributions=[0, 0, 0.0, 0.0]))
    (attr / "summary.csv").write_text("image\n")
    (attr / "manifest.json").write_text("{}")
    collected = collect([tmp_path / "dis"], [attr])
    assert not collected.warnings
    (group,) = collected.attributions
    assert group.dissection is collected.dissections[0]
    rows = {r.concept: r for r in top_contributor_table(group, 0.04)}
    assert rows["Consolidation"].top_unit_images == 1 and rows["Nodule"].top_unit_images == 1
    assert rows["unlabelled"].top_unit_images == 1  # unit 2 is no detector
    # Summed per concept: Consolidation leads in a and c (c's top unit is unlabelled), Nodule in b.
    assert rows["Consolidation"].top_concept_images == 2 and rows["Nodule"].top_concept_images == 1
    assert rows["Consolidation"].mean_share == pytest.approx(np.mean([1 / 2.1, 0.9 / 2.1, 0.9 / 1.9]))
    # At 0.06 Nodule is unlabelled: its image's top unit no longer names a concept.
    rows = {r.concept: r for r in top_contributor_table(group, 0.06)}
    assert "Nodule" not in rows and rows["unlabelled"].top_unit_images == 2
    # The highest-ranked labelled unit: a -> unit 0, b -> unit 1 (Nodule), c -> unit 0 at rank 2
    # (its top unit 2 is no detector).  At 0.06, b's Nodule unit is unlabelled: unit 0, rank 2.
    assert [(u.unit, u.rank, u.concept) for u in attribution_top_labelled(group, 0.04)] == [
        (0, 1, "Consolidation"), (1, 1, "Nodule"), (0, 2, "Consolidation")]
    assert rows["Consolidation"].top_labelled_images == 3 and rows["Consolidation"].top_unit_images == 1
    c = attribution_top_labelled(group, 0.04)[2]
    assert c.share == pytest.approx(0.9 / 1.9) and c.contribution == pytest.approx(0.9)


def test_the_top_labelled_unit_is_shown_below_the_top_units(tmp_path):
    doc = dissection_doc([("Consolidation", 0.10), ("Nodule", 0.05), ("Left Lung", 0.01), ("Mass", 0.0)])
    write_dissection(tmp_path / "dis", "epoch-004", doc)
    attr = tmp_path / "attr"
    # One top unit shown (unit 2, unlabelled); the labelled unit 0 ranks 3rd after unit 3.
    write_attribution(attr, attribution_doc(doc, "/x/a.png", [2], contributions=[0.05, 0, 0, 0.2]))
    result = build_report([tmp_path / "dis"], attributions=[attr], out=tmp_path / "r.html")
    page = result.out.read_text()
    assert "3 (top labelled)" in page and "top labelled unit in images" in page
    md = build_report([tmp_path / "dis"], attributions=[attr], out=tmp_path / "r.md", fmt="md")
    assert "| 3 (top labelled) | 0 |" in md.out.read_text()


# -- bad input: warnings, and the report is still written ---------------------------------------------

def test_bad_inputs_warn_and_the_rest_is_reported(tmp_path):
    good = dissection_doc([("Consolidation", 0.1)], model_path="/runs/a/epoch-001.pt", epoch=1)
    write_dissection(tmp_path / "dis", "epoch-001", good)
    write_dissection(tmp_path / "dis", "epoch-002",
                     dissection_doc([("Nodule", 0.1)], model_path="/runs/a/epoch-002.pt", epoch=2,
                                    seg_size=112, iou_threshold=0.05))
    broken = tmp_path / "dis" / "broken" / "features.denseblock4"
    broken.mkdir(parents=True)
    (broken / "dissection.json").write_text("{ not json")
    alien = tmp_path / "dis" / "alien" / "l"
    alien.mkdir(parents=True)
    (alien / "dissection.json").write_text(json.dumps({"schema": "something-else/1"}))
    (tmp_path / "empty").mkdir()
    orphan = dissection_doc([("Mass", 0.2)], sha256="not-dissected")
    write_attribution(tmp_path / "attr", attribution_doc(orphan, "/x/p.png", [0]))
    unnamed = attribution_doc(orphan, "/x/q.png", [0])
    unnamed["model"]["sha256"] = "no-dissection-at-all"
    for row in unnamed["top_k"]:
        row.update(concept=None, dissected=False, labelled=False, best_concept=None, iou=None)
    write_attribution(tmp_path / "attr2", unnamed)

    result = build_report([tmp_path / "dis", tmp_path / "empty", tmp_path / "missing"],
                          attributions=[tmp_path / "attr", tmp_path / "attr2", tmp_path / "empty"],
                          out=tmp_path / "report.html")
    text = "\n".join(result.warnings)
    assert "broken" in text and "not valid JSON" in text
    assert "alien" in text and "not a cxrsem dissection result" in text
    assert f"{tmp_path / 'empty'} holds no dissection.json" in text
    assert f"{tmp_path / 'missing'} does not exist" in text
    assert "different seg sizes" in text and "different IoU thresholds" in text
    assert "none of the given dissections is of this model" in text
    assert "computed without a dissection" in text and "shown unnamed" in text
    assert f"{tmp_path / 'empty'} holds no attribution results" in text
    assert [row.model for row in result.summary] == ["phantom/mae-scce/random · epoch-001",
                                                     "phantom/mae-scce/random · epoch-002"]
    page = result.out.read_text()
    assert "Warnings" in page and "different seg sizes" in page
    assert "<th scope=\"col\">seg size</th>" in page  # settings shown per model when mixed
    assert "p.png" in page and "q.png" in page  # attributions shown even without their dissection


def test_nothing_valid_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no valid dissection results.*holds no dissection.json"):
        build_report([tmp_path / "empty"], out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(UsageError, match="html or md"):
        build_report([tmp_path], out=tmp_path / "r.html", fmt="pdf")
    with pytest.raises(UsageError, match="iou-threshold"):
        build_report([tmp_path], out=tmp_path / "r.html", iou_threshold=1.5)


# -- the HTML report ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report over a run of three epochs, an XSS concept name, and attributions."""
    root = tmp_path_factory.mktemp("report")
    dis = root / "dis"
    docs = {}
    for epoch, units in enumerate([[("Left Lung", 0.05), (XSS, 0.01)],
                                   [("Left Lung", 0.05), (XSS, 0.08)],
                                   [("Consolidation", 0.09), (XSS, 0.08), ("Nodule", 0.06)]]):
        docs[epoch] = dissection_doc(units, model_path=f"/runs/a&b/epoch-{epoch:03d}.pt", epoch=epoch)
        write_dissection(dis, f"epoch-{epoch:03d}", docs[epoch])
    attr = root / "attr"
    for i, top in enumerate([[1, 0], [0, 2], [1, 2]]):
        write_attribution(attr, attribution_doc(docs[2], f"/data/img-{i}<x>.png", top))
    out = root / "report.html"
    result = build_report([dis], attributions=[attr], labels={str(dis): 'Run "A" <b>'}, out=out)
    return result, out.read_text(encoding="utf-8")


def test_report_contains_every_section_and_the_numbers(report):
    result, page = report
    assert isinstance(result, ReportResult) and result.warnings == []
    assert result.runs == 1 and result.attributions == 3
    assert result.summary[2] == SummaryRow(
        model='Run "A" <b> · epoch-002', layer="features.denseblock4", epoch=2, units=3, detectors=3,
        unique_concepts=3, top_concepts=[(XSS, 1), ("Consolidation", 1), ("Nodule", 1)],
        path=result.summary[2].path)
    for anchor in ("detectors", "evolution", "units", "attributions", "models", "thresholds"):
        assert f'<section id="{anchor}">' in page
    assert "Run &quot;A&quot; &lt;b&gt; · epoch-002" in page
    assert "1 detector at epoch 0 → 3 at epoch 2" in page
    assert "Validation metrics" in page and "seg size" in page and "mae_mean" in page
    assert 'data-sort="3"' in page  # sortable numbers


def test_untrusted_names_are_escaped(report):
    _, page = report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert page.count("<script") == 1  # only the table sorter
    assert '"A" <b>' not in page and "<x>" not in page
    assert "/runs/a&amp;b/epoch-002.pt" in page and "img-0&lt;x&gt;.png" in page
    # Markdown: raw HTML would pass through a Markdown renderer.
    assert md(XSS) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert md("[x](javascript:1)") == "\\[x\\](javascript:1)"
    assert md("a|b_c") == "a\\|b\\_c"


def test_embedded_images_are_nonblank_pngs(report):
    _, page = report
    sources = re.findall(r'<img[^>]* src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # Fig. 2, Fig. 4, the threshold curves, 6 unit figures, 3 attribution figures.
    assert len(sources) == 3 + 6 + 3 == page.count("<img")
    for data in sources:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 1.0


def test_markdown_writes_pngs_next_to_it(tmp_path, report):
    doc = dissection_doc([(XSS, 0.3), ("Nodule", 0.1)])
    write_dissection(tmp_path / "dis", "epoch-004", doc)
    result = build_report([tmp_path / "dis"], out=tmp_path / "paper" / "report.md", fmt="md")
    text = result.out.read_text()
    assert result.files[0] == result.out and len(result.files) == 5  # 2 figures + 2 unit figures
    for line in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (result.out.parent / line).read_bytes().startswith(b"\x89PNG")
    assert "&lt;script&gt;" in text and "<script" not in text
    assert "| model | layer | epoch | units | detectors | unique concepts |" in text


# -- CLI ------------------------------------------------------------------------------------------------


def test_cli_passes_options_to_build_report(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(dissect_dirs, **kwargs):
        calls.append((dissect_dirs, kwargs))
        return ReportResult(out=Path(kwargs["out"]), format=kwargs["fmt"],
                            iou_threshold=kwargs["iou_threshold"],
                            summary=[SummaryRow("m [red]x[/red]", "features.denseblock4", 1, 10, 2, 1,
                                                [("Nodule", 2)], "p")],
                            warnings=["odd [bold]thing[/bold]"], files=[Path(kwargs["out"])])

    monkeypatch.setattr("cxrsem.cli.report.build_report", fake)
    config = tmp_path / "c.toml"
    config.write_text('[report]\niou-threshold = 0.05\nformat = "md"\n')
    code, out, err = run_cli(["report", "d1", "d2", "--attributions", "a1", "--label", "d1=First",
                              "--out", tmp_path / "r.md", "--config", config], capsys)
    assert code == 0, err
    (dirs, kwargs), = calls
    assert [str(d) for d in dirs] == ["d1", "d2"]
    assert [str(a) for a in kwargs["attributions"]] == ["a1"]
    assert kwargs["labels"] == {"d1": "First"}
    assert kwargs["iou_threshold"] == 0.05 and kwargs["fmt"] == "md"
    assert "Warning: odd [bold]thing[/bold]" in err  # names from files are not rich markup
    assert "m [red]x[/red]" in out and "Nodule (2)" in out and "denseblock4" in out


def test_cli_end_to_end_and_error(tmp_path, capsys):
    write_dissection(tmp_path / "dis", "epoch-004", dissection_doc([("Nodule", 0.3)]), figures=False)
    code, out, err = run_cli(["report", tmp_path / "dis", "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert "Nodule (1)" in out and "r.html" in out
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["report", tmp_path / "empty", "--out", tmp_path / "x.html"], capsys)
    assert code != 0
    assert err.startswith("Error: no valid dissection results") and err.count("\n") == 1


def test_assemble_without_figures_counts_like_the_models(run_tree):
    data = assemble(collect([run_tree / "dis"]), 0.04, version="test", with_figures=False)
    assert data.fig_detectors is None
    m = data.models[0]
    assert m == model_counts(m.dissection, 0.04)
    assert count_at(m, 0.04) == m.total and count_at(m, 0.0123) == total_detectors(m.dissection.units, 0.0123)
