"""The chance baselines of ``dissect --null`` in the report (Fig. 2, its tables, sentences and
model cards) and in ``cxrsem compare``: every number from the records, only at the threshold
the baselines were computed at, names escaped, and nothing new without them."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from cxrsem.reporting import build_report
from cxrsem.reporting.aggregate import NullCount, model_counts
from cxrsem.reporting.build import assemble
from cxrsem.reporting.collect import collect
from cxrsem.reporting.figures import detectors_figure
from cxrsem.reporting.html import e
from cxrsem.reporting.markdown import md
from cxrsem.testing import run_cli
from tests.report_fixtures import dissection_doc, write_dissection

pytestmark = pytest.mark.usefixtures("one_thread")

XSS = "<script>alert(1)</script>"
# Text only the chance baselines or the paper's definition put into a report.
NULL_WORDS = ("significant", "shuffled", "untrained", "random init", "rotated", "permutation",
              "paper's definition", "Chance baselines", "Benjamini", "FDR", "relabelled",
              "epoch-000.pt has")


@pytest.fixture
def testkit(register_plugin):
    from cxrsem.testing import TestKitPlugin

    register_plugin(TestKitPlugin(), "testkit")


def _dissect(tmp_path, capsys, models, *options):
    out = tmp_path / "d"
    code, _, err = run_cli(["dissect", *sum((["--model", m] for m in models), []), "--layer",
                            "features", "--concepts", "toy-blobs", "--seg-size", 16, "--quantile",
                            0.05, "--no-figures", "--out", out, "--quiet", *options], capsys)
    assert code == 0, err
    return out


def _record(folder: Path) -> dict:
    return json.loads((folder / "features" / "dissection.json").read_text())


def _count(entry: dict) -> str:
    """A null's count as the report writes it (``mean [low, high]``, just the mean when they agree)."""
    if entry["low"] == entry["high"] == entry["mean"]:
        return f"{entry['mean']:.3g}"
    return f"{entry['mean']:.3g} [{entry['low']:.3g}, {entry['high']:.3g}]"


def _text(path: Path) -> str:
    """The report's text without its embedded PNGs (whose base64 may spell anything)."""
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", path.read_text(encoding="utf-8"))


def _without_nulls(models):
    plain = []
    for m in models:
        bare = copy.copy(m)
        for name in ("significant", "fdr", "shuffled", "random_init", "rotation", "initial_checkpoint"):
            setattr(bare, name, None)
        bare.significant_per_concept = {}
        plain.append(bare)
    return plain


def test_the_report_shows_the_records_chance_baselines_at_their_threshold(tmp_path, capsys, testkit):
    from cxrsem.testing import tiny_checkpoint

    run = tmp_path / "run"
    models = [tiny_checkpoint(run / f"epoch-{epoch:03d}.pt", seed=epoch) for epoch in (0, 1)]
    out = _dissect(tmp_path, capsys, models, "--null", "shuffle:20", "--null", "random-init:2",
                   "--null", "rotation:2")
    records = {stem: _record(out / stem) for stem in ("epoch-000", "epoch-001")}
    threshold = records["epoch-001"]["nulls"]["iou_threshold"]
    assert threshold == records["epoch-001"]["settings"]["iou_threshold"]
    assert "initial_checkpoint" in records["epoch-001"]["nulls"]  # the run's epoch-000.pt
    assert "initial_checkpoint" not in records["epoch-000"]["nulls"]  # not of itself

    # ModelCounts carries the records' values.
    data = assemble(collect([out], labels={str(out): XSS}), threshold, version="test")
    by_stem = {m.dissection.model_stem: m for m in data.models}
    for stem, record in records.items():
        m, nulls = by_stem[stem], record["nulls"]
        shuffle, init, rotation = nulls["shuffle"], nulls["random_init"], nulls["rotation"]
        assert m.has_nulls and m.fdr == nulls["fdr"]
        assert m.significant == shuffle["num_significant"]
        assert m.significant_per_concept == shuffle["significant"]
        for count, block in ((m.shuffled, shuffle), (m.random_init, init), (m.rotation, rotation)):
            assert (count.mean, count.low, count.high) == tuple(block["num_detectors"][k]
                                                               for k in ("mean", "low", "high"))
            assert count.draws == block["draws"]
            assert {c: v.mean for c, v in count.per_concept.items()} == {
                c: v["mean"] for c, v in block["detectors"].items()}
        assert m.rotation.per_draw == rotation["num_detectors_per_draw"]
        assert m.definitions.paper_total == record["definitions"]["paper_num_detectors"]
    initial = records["epoch-001"]["nulls"]["initial_checkpoint"]
    assert by_stem["epoch-001"].initial_checkpoint.mean == initial["num_detectors"]
    # Fig. 2 draws them: not the figure of the same counts without baselines.
    plain = _without_nulls(data.models)
    assert (detectors_figure(data.models, data.concepts, data.colors, threshold)
            != detectors_figure(plain, data.concepts, data.colors, threshold))

    page_path, md_path = tmp_path / "r.html", tmp_path / "r.md"
    for path, fmt in ((page_path, "html"), (md_path, "md")):
        build_report([out], labels={str(out): XSS}, out=path, fmt=fmt, iou_threshold=threshold)
    page, text = page_path.read_text(), md_path.read_text()
    for record in records.values():
        nulls = record["nulls"]
        shuffle, init, rotation = nulls["shuffle"], nulls["random_init"], nulls["rotation"]
        sig = ", ".join(f"{c} {n}" for c, n in sorted(shuffle["significant"].items(),
                                                       key=lambda x: (-x[1], x[0])) if n)
        fragments = [
            f"{shuffle['num_significant']} significant against shuffled annotations (FDR "
            f"{nulls['fdr']:g}, {shuffle['permutations']} permutations" + (f"; {sig})" if sig else ")"),
            f"shuffled annotations alone give {_count(shuffle['num_detectors'])}",
            f"untrained networks of this architecture give {_count(init['num_detectors'])} "
            f"({init['models']} networks)",
            f"a rotated basis gives {_count(rotation['num_detectors'])} ({rotation['rotations']} rotations)",
            f"{shuffle['permutations']} permutations, seed {shuffle['seed']}",
            f"{init['models']} networks, seeds {', '.join(map(str, init['seeds']))}",
            f"per rotation {', '.join(map(str, rotation['num_detectors_per_draw']))}",
        ]
        definitions = record["definitions"]
        moved = sum(len(definitions[k]) for k in ("only_this", "only_paper", "relabelled"))
        fragments.append(f"by the paper's definition {definitions['paper_num_detectors']} detector")
        fragments.append(f"; {moved} unit{' moves' if moved == 1 else 's move'} "
                         f"({len(definitions['only_this'])} only here, "
                         f"{len(definitions['only_paper'])} only by the paper's, "
                         f"{len(definitions['relabelled'])} relabelled)")
        for fragment in fragments:
            assert e(fragment) in page, fragment
            assert md(fragment) in text, fragment
        # The Fig. 2 table's columns.
        assert f'data-sort="{shuffle["num_significant"]}"' in page
        mean = float(format(init["num_detectors"]["mean"], ".3g"))
        assert f'data-sort="{mean!r}">{mean:.4g}</td>' in page and f"| {mean:.4g} |" in text
    initial_count = initial["num_detectors"]
    assert e(f"the run's epoch-000.pt has {initial_count} detector") in page
    assert "<th scope=\"col\">significant</th><th scope=\"col\">random init (mean)</th>" in page
    assert "| significant | random init (mean) |" in text
    assert "Chance baselines per concept" in page and "Chance baselines per concept" in text
    # The label is untrusted: escaped everywhere.
    assert page.count("<script") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in text and "&lt;script&gt;" in text

    # At another threshold the baselines (and the paper's counts) belong elsewhere: none shown,
    # and Fig. 2 is the figure of the counts alone.
    other = threshold + 0.01
    elsewhere = assemble(collect([out]), other, version="test")
    assert not any(m.has_nulls or m.definitions for m in elsewhere.models)
    assert (detectors_figure(elsewhere.models, elsewhere.concepts, elsewhere.colors, other)
            == detectors_figure(_without_nulls(elsewhere.models), elsewhere.concepts,
                                elsewhere.colors, other))
    for path, fmt in ((tmp_path / "o.html", "html"), (tmp_path / "o.md", "md")):
        build_report([out], out=path, fmt=fmt, iou_threshold=other)
        shown = _text(path)
        for word in NULL_WORDS:
            assert word not in shown, word
        assert f"computed at IoU &gt; {threshold:g} only" in shown  # the card says where they are

    # compare: each model's significant detectors and baselines, as recorded.
    code, stdout, err = run_cli(["compare", out / "epoch-000", out / "epoch-001", "--bootstrap", 20,
                                 "--out", tmp_path / "c.json"], capsys)
    assert code == 0, err
    flat = " ".join(stdout.split())
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["schema"] == "cxrsem-compare/1"
    rows = {row["model"]: row for row in saved["chance"]}
    assert list(rows) == saved["models"]
    for stem, record in records.items():
        row = rows[f"{stem} @ features"]
        nulls = record["nulls"]
        assert row["detectors"] == record["num_detectors"]
        assert row["significant"] == nulls["shuffle"]["num_significant"]
        assert row["significant_per_concept"] == nulls["shuffle"]["significant"]
        assert row["random_init"] == {**nulls["random_init"]["num_detectors"],
                                      "draws": nulls["random_init"]["models"]}
        assert row["fdr"] == nulls["fdr"] and row["iou_threshold"] == threshold
        assert " ".join(row["sentence"].split()) in flat
        assert (f"{record['num_detectors']} detector" in row["sentence"]
                and f"{nulls['shuffle']['num_significant']} significant" in row["sentence"])
    assert rows["epoch-001 @ features"]["initial_checkpoint"]["num_detectors"] == initial_count
    assert "chance baselines (dissect --null" in flat


def _nulls(concepts, *, iou_threshold=0.04, significant=None):
    significant = significant or {}
    per = {c: {"mean": 0.5, "low": 0.0, "high": 1.0} for c in concepts}
    return {
        "fdr": 0.1, "iou_threshold": iou_threshold,
        "shuffle": {"permutations": 7, "seed": 3, "significant": {c: significant.get(c, 0) for c in concepts},
                    "num_significant": sum(significant.values()), "draws": 7, "detectors": per,
                    "num_detectors": {"mean": 1.25, "low": 0.0, "high": 3.0}},
        "random_init": {"models": 2, "seeds": [100, 101], "draws": 2, "detectors": per,
                        "num_detectors": {"mean": "many", "low": 0, "high": 1}},  # malformed
    }


def test_hand_made_baselines_escape_concept_names_and_skip_malformed_parts(tmp_path):
    doc = dissection_doc([(XSS, 0.3), ("Nodule", 0.1), ("Nodule", 0.01)])
    doc["nulls"] = _nulls(doc["detectors"], significant={XSS: 1})
    write_dissection(tmp_path / "dis", "epoch-004", doc)
    data = assemble(collect([tmp_path / "dis"]), 0.04, version="test")
    (m,) = data.models
    assert m.significant == 1 and m.significant_per_concept[XSS] == 1
    assert m.shuffled == NullCount(1.25, 0.0, 3.0, 7, m.shuffled.per_concept)
    assert m.random_init is None  # its total is not a number: left out, the rest still shown
    page_path = tmp_path / "r.html"
    build_report([tmp_path / "dis"], out=page_path)
    page = page_path.read_text()
    assert page.count("<script") == 1
    assert e(f"1 significant against shuffled annotations (FDR 0.1, 7 permutations; {XSS} 1)") in page
    assert "random init (mean)" not in page and "untrained networks of" not in page
    assert "2 networks, seeds 100, 101" in page  # its settings are still on the card
    text = build_report([tmp_path / "dis"], out=tmp_path / "r.md", fmt="md").out.read_text()
    assert "<script" not in text and md(f"{XSS} 1") in text


def test_a_report_without_baselines_has_none_of_their_text(tmp_path):
    doc = dissection_doc([("Consolidation", 0.3), ("Nodule", 0.1)])
    write_dissection(tmp_path / "dis", "epoch-004", doc)
    for fmt in ("html", "md"):
        shown = _text(build_report([tmp_path / "dis"], out=tmp_path / f"r.{fmt}", fmt=fmt).out)
        for word in NULL_WORDS + ("chance baselines",):
            assert word not in shown, (fmt, word)
    text = (tmp_path / "r.md").read_text()
    assert "| model | layer | epoch | units | detectors | unique concepts | Consolidation | Nodule |" in text
    m = model_counts(collect([tmp_path / "dis"]).dissections[0], 0.04)
    assert not m.has_nulls and m.definitions is None
