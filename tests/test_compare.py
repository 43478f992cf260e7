"""``cxrsem compare``: paired and unpaired bootstrap comparisons of detector counts, from the
dissection folders' ``dissection.json`` and ``imagestats.npz``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrsem.statistics.compare import TOTAL, compare
from cxrsem.testing import run_cli
from tests.bootstrap_fixtures import masks, naive_iou, stats_of


def write_result(folder, units, labels, *, threshold=0.05, concept_sets=("toy",), limit=0):
    """A minimal dissection result folder: dissection.json (point estimates from the naive
    oracle) and imagestats.npz."""
    folder.mkdir(parents=True)
    stats = stats_of(units, labels)
    iou = naive_iou(units, labels, np.ones(len(units)))
    best = iou.argmax(axis=1)
    record = {
        "schema": "cxrsem-dissection/1", "layer": folder.name, "num_units": units.shape[1],
        "model": {"path": f"{folder.parent.name}.pt", "sha256": folder.parent.name},
        "settings": {"iou_threshold": threshold, "limit": limit, "seg_size": units.shape[-1]},
        "concept_sets": [{"name": n, "concepts": stats.concepts} for n in concept_sets],
        "num_images": len(units),
        "concepts": [{"name": c, "images": int((stats.label_area[:, j] > 0).sum())}
                     for j, c in enumerate(stats.concepts)],
        "units": [{"unit": k, "concept": stats.concepts[best[k]], "iou": float(iou[k, best[k]]),
                   "detector": bool(iou[k, best[k]] > threshold)} for k in range(units.shape[1])],
    }
    (folder / "dissection.json").write_text(json.dumps(record))
    stats.save(folder / "imagestats.npz")
    return folder


def test_a_model_compared_with_itself_is_indistinguishable(tmp_path):
    units, labels = masks(0, n=40, k=8)
    a = write_result(tmp_path / "a" / "m" / "features", units, labels)
    b = write_result(tmp_path / "b" / "m" / "features", units, labels)
    result = compare([a, b], resamples=200, seed=1)
    (comparison,) = result.comparisons
    assert comparison.paired and comparison.why_unpaired is None
    for row in comparison.rows:
        assert row.difference.value == row.difference.low == row.difference.high == 0
        assert row.p == row.p_adjusted == 1.0 and row.a.value == row.b.value
    assert all("not distinguishable" in s for s in result.sentences())


def test_more_detectors_is_found_and_said(tmp_path):
    units, labels = masks(1, n=60, k=12, c=2)
    strong = units.copy()
    strong[:, :6] = labels[:, [0]] | (np.random.default_rng(2).random(labels[:, [0]].shape) < 0.02)
    a = write_result(tmp_path / "weak" / "m" / "f", units, labels)
    b = write_result(tmp_path / "strong" / "m" / "f", strong, labels)
    result = compare([a, b], resamples=300, seed=0)
    rows = {row.quantity: row for row in result.comparisons[0].rows}
    c0 = rows["c0"]
    assert c0.b.value >= c0.a.value + 5 and c0.difference.low > 0 and c0.p_adjusted < 0.05
    text = c0.sentence(result.comparisons[0].a, result.comparisons[0].b, result.alpha)
    assert text.startswith("strong/m @ f has more c0 detectors than weak/m @ f: ") and "p = " in text
    assert TOTAL in rows


def test_other_images_are_compared_unpaired_and_refused_when_pairing_is_forced(tmp_path, capsys):
    units, labels = masks(3, n=30)
    other_units, other_labels = masks(4, n=30)
    a = write_result(tmp_path / "a" / "m" / "f", units, labels)
    b = write_result(tmp_path / "b" / "m" / "f", other_units, other_labels)
    result = compare([a, b], resamples=50)
    assert not result.comparisons[0].paired
    assert "annotations" in result.comparisons[0].why_unpaired
    code, _, err = run_cli(["compare", a, b, "--bootstrap", 50, "--paired"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--paired" in err and "same images" in err
    code, out, err = run_cli(["compare", a, b, "--bootstrap", 50, "--out", tmp_path / "c.json"],
                             capsys)
    assert code == 0, err
    assert "unpaired (other annotations" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["schema"] == "cxrsem-compare/1" and saved["comparisons"][0]["paired"] is False


def test_several_models_are_compared_with_the_first_and_holm_corrected(tmp_path):
    units, labels = masks(5, n=40, k=8)
    dirs = [write_result(tmp_path / name / "m" / "f", units if name != "c" else units[:, ::-1],
                         labels) for name in ("a", "b", "c")]
    result = compare(dirs, resamples=100)
    assert [(c.a, c.b) for c in result.comparisons] == [("a/m @ f", "b/m @ f"), ("a/m @ f", "c/m @ f")]
    for rows in zip(*(c.rows for c in result.comparisons), strict=False):
        ps = sorted(r.p for r in rows)
        adjusted = sorted(r.p_adjusted for r in rows)
        assert all(adj >= p for p, adj in zip(ps, adjusted, strict=True))


def test_compare_needs_the_image_statistics(tmp_path, capsys):
    units, labels = masks(6)
    a = write_result(tmp_path / "a" / "m" / "f", units, labels)
    b = write_result(tmp_path / "b" / "m" / "f", units, labels)
    (b / "imagestats.npz").unlink()
    code, _, err = run_cli(["compare", a, b], capsys)
    assert code != 0 and err.count("\n") == 1 and "imagestats.npz" in err
    code, _, err = run_cli(["compare", a], capsys)
    assert code == 2 and "at least two" in err


@pytest.mark.parametrize("option", [["--confidence", "1.5"], ["--group-by", "ward"]])
def test_bad_settings_are_one_line(tmp_path, capsys, option):
    units, labels = masks(7)
    a = write_result(tmp_path / "a" / "m" / "f", units, labels)
    code, _, err = run_cli(["compare", a, a, "--bootstrap", 10, *option], capsys)
    assert code == 2 and err.count("\n") == 1


@pytest.fixture
def testkit():
    from cxrsem import plugins
    from cxrsem.testing import TestKitPlugin

    plugins.register_plugin(TestKitPlugin(), "testkit")


def test_dissect_bootstrap_and_compare_end_to_end(tmp_path, capsys, testkit):
    from cxrsem.testing import tiny_checkpoint

    models = [tiny_checkpoint(tmp_path / f"{name}.pt", seed=seed) for name, seed in (("a", 0), ("b", 1))]
    out = tmp_path / "d"
    code, stdout, err = run_cli(["dissect", *sum((["--model", m] for m in models), []),
                                 "--layer", "features", "--concepts", "toy-blobs", "--seg-size", 16,
                                 "--quantile", 0.05, "--bootstrap", 100, "--no-figures",
                                 "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert "intervals from 100 resamples" in " ".join(stdout.split())  # the table title, wrapped
    record = json.loads((out / "a" / "features" / "dissection.json").read_text())
    boot = record["bootstrap"]
    assert boot["resamples"] == 100 and boot["group_by"] == "patient"
    assert boot["num_detectors"]["count"] == record["num_detectors"]  # the estimate is the file's
    assert boot["num_detectors"]["low"] <= boot["num_detectors"]["high"]
    assert all(0 <= u["p_detector"] <= 1 and len(u["iou_interval"]) == 2 for u in record["units"])
    assert "imagestats.npz" in record["files"]
    # The same images for both models: a paired comparison; a model with itself: p = 1.
    result = compare([out / "a", out / "b"], resamples=100)
    assert result.comparisons[0].paired
    itself = compare([out / "a", out / "a"], resamples=100)
    assert all(r.p == 1.0 and r.difference.low == r.difference.high == 0
               for r in itself.comparisons[0].rows)
    # The report writes compare's sentence for the totals under Fig. 2.
    from cxrsem.reporting import build_report

    build_report([out], out=tmp_path / "r.md", fmt="md")
    page = (tmp_path / "r.md").read_text()
    report_rows = compare([out / "a", out / "b"]).comparisons[0].rows  # the report's resamples
    total = next(r for r in report_rows if r.quantity == "all concepts (total detectors)")
    (line,) = [row for row in page.splitlines() if "(paired bootstrap, 1000 resamples)" in row]
    for estimate in (total.a, total.b):  # the sentence quotes both counts with their intervals
        assert str(estimate).replace("[", "\\[").replace("]", "\\]") in line, line
    assert "(paired bootstrap, 1000 resamples)" in page


def test_the_report_draws_bootstrap_intervals_at_their_own_threshold(tmp_path, capsys, testkit):
    from cxrsem.reporting import build_report
    from cxrsem.reporting.aggregate import model_counts
    from cxrsem.reporting.collect import collect
    from cxrsem.testing import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "a.pt")
    out = tmp_path / "d"
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "features", "--concepts",
                            "toy-blobs", "--seg-size", 16, "--quantile", 0.05, "--bootstrap", 50,
                            "--no-figures", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "a" / "features" / "dissection.json").read_text())
    (dissection,) = collect([out]).dissections
    counts = model_counts(dissection, record["settings"]["iou_threshold"])
    total = record["bootstrap"]["num_detectors"]
    assert counts.interval == (total["low"], total["high"])
    per_concept = record["bootstrap"]["detectors"]
    assert counts.concept_intervals == {c: (v["low"], v["high"]) for c, v in per_concept.items()}
    elsewhere = model_counts(dissection, 0.5)  # intervals belong to their threshold
    assert elsewhere.interval is None and elsewhere.concept_intervals == {}
    report = build_report([out], out=tmp_path / "r.html")
    assert (tmp_path / "r.html").is_file() and not report.warnings
    page = (tmp_path / "r.html").read_text()
    assert 'alt="Detectors per concept with bootstrap intervals"' in page
    build_report([out], out=tmp_path / "plain.html", iou_threshold=0.5)  # no intervals there: no figure
    assert "with bootstrap intervals" not in (tmp_path / "plain.html").read_text()


def test_evolution_bands_per_concept_come_from_each_epoch(tmp_path, capsys, testkit):
    """Fig. 4 draws each concept's curve with the band of its bootstrap intervals, epoch by epoch."""
    from cxrsem.reporting.aggregate import evolution_series
    from cxrsem.reporting.collect import collect
    from cxrsem.reporting.figures import evolution_figure
    from cxrsem.testing import tiny_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    for epoch in (0, 1):
        tiny_checkpoint(run / f"epoch-{epoch:03d}.pt", seed=epoch)
    out = tmp_path / "d"
    code, _, err = run_cli(["dissect", "--model", f"{run}/epoch-*.pt", "--layer", "features",
                            "--concepts", "toy-blobs", "--seg-size", 16, "--quantile", 0.05,
                            "--bootstrap", 30, "--no-figures", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    dissections = collect([out]).dissections
    threshold = dissections[0].settings["iou_threshold"]
    (series,) = evolution_series(dissections, threshold)
    records = [json.loads((out / f"epoch-{e:03d}" / "features" / "dissection.json").read_text())
               for e in series.epochs]
    for concept, bands in series.concept_bands.items():
        expected = [(r["bootstrap"]["detectors"][concept]["low"],
                     r["bootstrap"]["detectors"][concept]["high"]) for r in records]
        assert bands == expected, concept
    assert series.concept_bands and evolution_figure([series], {}, threshold)[:4] == b"\x89PNG"


def test_sensitivity_grid_equals_separate_dissections(tmp_path, capsys, testkit):
    """One read of the cache for the whole grid gives exactly what a dissection at each quantile
    and IoU threshold gives on its own."""
    from cxrsem.dissection import sensitivity
    from cxrsem.testing import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "m.pt", seed=3)
    base = ["dissect", "--model", model, "--layer", "features", "--concepts", "toy-blobs",
            "--seg-size", 16, "--no-figures", "--quiet"]
    code, _, err = run_cli([*base, "--sensitivity", "--out", tmp_path / "grid"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "grid" / "m" / "features" / "dissection.json").read_text())
    grid = record["sensitivity"]
    assert grid["quantiles"] == list(sensitivity.QUANTILES)
    row = grid["quantiles"].index(record["settings"]["quantile"])
    col = grid["iou_thresholds"].index(record["settings"]["iou_threshold"])
    assert grid["detectors"][row][col] == record["num_detectors"]
    for i, q in enumerate(grid["quantiles"]):
        out = tmp_path / f"q{i}"
        code, _, err = run_cli([*base, "--quantile", q, "--out", out], capsys)
        assert code == 0, err
        alone = json.loads((out / "m" / "features" / "dissection.json").read_text())
        best = [u["iou"] for u in alone["units"]]
        for j, t in enumerate(grid["iou_thresholds"]):
            assert grid["detectors"][i][j] == sum(v > t for v in best), (q, t)


def test_report_cards_show_patients_intervals_and_the_sensitivity_grid(tmp_path, capsys, testkit):
    from cxrsem.reporting import build_report
    from cxrsem.testing import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "d"
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "features", "--concepts",
                            "toy-blobs", "--seg-size", 16, "--bootstrap", 20, "--sensitivity",
                            "--no-figures", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "m" / "features" / "dissection.json").read_text())
    build_report([out], out=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    images = record["image_stats"]["num_images"]
    assert f"{images} / {record['image_stats']['num_groups']}" in page
    assert f"toy-blobs: images / patients</th><td>{images} / {images}" in page  # one per image
    assert "resamples of patients" in page and "q = 0.0025" in page
    first = record["sensitivity"]["detectors"][0]
    assert f"0.02: {first[0]}, 0.03: {first[1]}" in page


def _with_nulls(folder, *, iou_threshold=0.05, significant=2):
    """``folder``'s dissection.json with a hand-made ``nulls`` block (its untrained networks'
    total malformed)."""
    path = folder / "dissection.json"
    record = json.loads(path.read_text())
    concepts = [c["name"] for c in record["concepts"]]
    per = {c: {"mean": 0.5, "low": 0.0, "high": 1.0} for c in concepts}
    record["nulls"] = {
        "fdr": 0.1, "iou_threshold": iou_threshold,
        "shuffle": {"permutations": 7, "seed": 3, "draws": 7, "detectors": per,
                    "significant": {c: significant if c == concepts[0] else 0 for c in concepts},
                    "num_significant": significant,
                    "num_detectors": {"mean": 1.25, "low": 0.0, "high": 3.0}},
        "random_init": {"models": 2, "seeds": [100, 101], "draws": 2, "detectors": per,
                        "num_detectors": {"mean": "many", "low": 0, "high": 1}}}
    path.write_text(json.dumps(record))


def test_compare_adds_chance_baselines_only_when_every_model_has_them(tmp_path, capsys):
    units, labels = masks(0, n=30, k=6)
    a = write_result(tmp_path / "a" / "m" / "f", units, labels)
    b = write_result(tmp_path / "b" / "m" / "f", units, labels)
    _, plain, _ = run_cli(["compare", a, b, "--bootstrap", 20], capsys)
    _with_nulls(a)
    # One model without baselines: output and JSON as before.
    before = compare([a, b], resamples=20)
    assert before.chance == [] and "chance" not in before.to_json()
    code, stdout, _ = run_cli(["compare", a, b, "--bootstrap", 20], capsys)
    assert code == 0 and stdout == plain
    # Both: a row per model, point values from the records; malformed parts left out.
    _with_nulls(b, significant=1)
    result = compare([a, b], resamples=20)
    rows = result.to_json()["chance"]
    assert [r["model"] for r in rows] == result.models
    assert [r["significant"] for r in rows] == [2, 1]
    assert rows[0]["shuffled"] == {"mean": 1.25, "low": 0.0, "high": 3.0, "draws": 7}
    assert "random_init" not in rows[0] and rows[0]["fdr"] == 0.1
    units_a = json.loads((a / "dissection.json").read_text())["units"]
    assert rows[0]["detectors"] == sum(u["detector"] for u in units_a)
    code, stdout, _ = run_cli(["compare", a, b, "--bootstrap", 20], capsys)
    flat = " ".join(stdout.split())
    assert code == 0 and flat.startswith(" ".join(plain.split())[:200])
    assert "chance baselines (dissect --null, FDR 0.1)" in flat
    assert "2 significant against shuffled annotations (FDR 0.1, 7 permutations; c0 2)" in flat
    # Baselines computed at another threshold than the model's own are not its baselines.
    _with_nulls(a, iou_threshold=0.06)
    assert compare([a, b], resamples=20).chance == []
