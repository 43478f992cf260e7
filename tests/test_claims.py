"""A study's claims (cxrsem.study.claims) against a naive oracle: Eq. 5 summed by hand over every
image (bootstrap_fixtures.naive_iou), detectors counted by hand, the same image draws applied."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrsem.errors import UsageError
from cxrsem.statistics.bootstrap import interval, p_value, resample_weights
from cxrsem.study.claims import ClaimSpec, StudyResults, _verdict, evaluate_claims, validate_claims
from tests.bootstrap_fixtures import masks, naive_iou, stats_of

THRESHOLD = 0.2
CONCEPTS = ["c0", "c1", "c2"]
RESAMPLES = 40


def _units(run: str, seed: int, epoch: int, labels: np.ndarray) -> np.ndarray:
    """Unit masks of one dissected checkpoint; run "a" at epoch 1 copies part of the concept masks
    into its units (more detectors), so the claims have something to find."""
    rng = np.random.default_rng(100 * seed + 10 * epoch + (run == "a"))
    n, _, size, _ = labels.shape
    units = rng.random((n, 6, size, size)) < 0.15
    if run == "a" and epoch == 1:
        for u in range(3):
            units[:, u] |= labels[:, u % 3] & (rng.random(labels[:, 0].shape) < 0.7)
    return units


def _naive_counts(units: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    iou = naive_iou(units, labels, weights)
    counts = np.zeros(len(CONCEPTS), dtype=int)
    for u in range(iou.shape[0]):
        if iou[u].max() > THRESHOLD:
            counts[iou[u].argmax()] += 1
    return counts


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished study's files, written by hand: runs a and b, seeds 0 and 1, epochs 0 and 1,
    every checkpoint dissected on the same 30 images; best epoch 1; a attributed at its best."""
    out = tmp_path_factory.mktemp("claims")
    _, labels = masks(3, n=30, k=6, c=3)
    rows, units_of = [], {}
    for seed in (0, 1):
        for run in ("a", "b"):
            rows.append({"kind": "train", "run": run, "seed": seed, "status": "done",
                         "outputs": {"best_epoch": 1}})
            models = {}
            for epoch in (0, 1):
                units = _units(run, seed, epoch, labels)
                units_of[(run, seed, epoch)] = units
                folder = out / "dissect" / run / f"seed-{seed}" / f"epoch-{epoch:03d}" / "layer"
                folder.mkdir(parents=True)
                stats_of(units, labels).save(folder / "imagestats.npz")
                counts = _naive_counts(units, labels, np.ones(30))
                iou = naive_iou(units, labels, np.ones(30))
                record = {"settings": {"iou_threshold": THRESHOLD}, "units": [
                    {"unit": u, "concept": CONCEPTS[int(iou[u].argmax())],
                     "detector": bool(iou[u].max() > THRESHOLD),
                     "significant": u % 2 == 0} for u in range(6)],
                    "num_detectors": int(counts.sum())}
                (folder / "dissection.json").write_text(json.dumps(record))
                models[f"epoch-{epoch:03d}"] = {"epoch": epoch, "dissection": str(
                    (folder / "dissection.json").relative_to(out))}
            rows.append({"kind": "dissect", "run": run, "seed": seed, "status": "done",
                         "outputs": {"models": models}})
        images = {}
        for i, concept in enumerate(["c0", "c2", "unlabelled"]):
            path = out / "attribute" / "a" / f"seed-{seed}" / f"image-{i}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"dissection": {"path": "x"},
                                        "top_labelled": {"concept": concept}}))
            images[f"image-{i}"] = {"json": str(path.relative_to(out))}
        rows.append({"kind": "attribute", "run": "a", "seed": seed, "status": "done",
                     "outputs": {"images": images}})
    return StudyResults(out, rows), labels, units_of


def test_a_more_claim_equals_the_hand_count_and_its_draws(study):
    results, labels, units_of = study
    (claim,) = evaluate_claims(results, [ClaimSpec(id="x", kind="more", a="a", b="b")],
                               resamples=RESAMPLES, seed=7)
    ones = np.ones(30)
    per_seed = {s: int(_naive_counts(units_of[("a", s, 1)], labels, ones).sum()
                       - _naive_counts(units_of[("b", s, 1)], labels, ones).sum()) for s in (0, 1)}
    assert claim.per_seed == per_seed
    assert claim.value == pytest.approx(np.mean(list(per_seed.values())))
    assert claim.value > 0  # the fixture gave run a's trained units the concepts' shapes
    # The same draws of the 30 images (every image its own group), counted by hand.
    weights = resample_weights(np.arange(30), RESAMPLES, 7)
    draws = np.array([np.mean([_naive_counts(units_of[("a", s, 1)], labels, w).sum()
                               - _naive_counts(units_of[("b", s, 1)], labels, w).sum()
                               for s in (0, 1)]) for w in weights])
    low, high = interval(draws, 0.95)
    assert (claim.low, claim.high) == (low, high)
    assert claim.p_value == p_value(draws)


def test_over_epochs_and_concept_subsets_follow_the_hand_counts(study):
    results, labels, units_of = study
    spec = ClaimSpec(id="rise", kind="over-epochs", runs=["a", "b"], concepts=["c0", "c1"],
                     direction="fall")
    (claim,) = evaluate_claims(results, [spec], resamples=RESAMPLES)
    ones = np.ones(30)

    def count(run, s, e):
        return _naive_counts(units_of[(run, s, e)], labels, ones)[:2].sum()

    expected = np.mean([np.mean([count(r, s, 1) - count(r, s, 0) for r in ("a", "b")])
                        for s in (0, 1)])
    assert claim.value == pytest.approx(expected)
    assert claim.value > 0 and claim.verdict != "holds"  # a rise, claimed as a fall


def test_share_and_unique_quantities(study):
    results, labels, units_of = study
    ones = np.ones(30)
    share, unique = evaluate_claims(results, [
        ClaimSpec(id="s", kind="more", a="a", b="b", quantity="share", concepts=["c2"]),
        ClaimSpec(id="u", kind="more", a="a", b="b", quantity="unique")], resamples=RESAMPLES)
    for s in (0, 1):
        ca = _naive_counts(units_of[("a", s, 1)], labels, ones)
        cb = _naive_counts(units_of[("b", s, 1)], labels, ones)
        frac = [c[2] / c.sum() if c.sum() else 0.0 for c in (ca, cb)]
        assert share.per_seed[s] == pytest.approx(frac[0] - frac[1])
        assert unique.per_seed[s] == (ca > 0).sum() - (cb > 0).sum()


def test_top_units_against_a_random_detector(study):
    results, _, _ = study
    (claim,) = evaluate_claims(results, [ClaimSpec(id="t", kind="top-units", runs=["a"],
                                                   concepts=["c0", "c2"])], resamples=RESAMPLES)
    hits = 2 / 3  # image-0 (c0) and image-1 (c2) of each seed; image-2's top unit is unlabelled
    chance = []
    for s in (0, 1):
        record = json.loads((results.out / results.layer("a", s, 1).folder / "dissection.json")
                            .read_text())
        detectors = [u["concept"] for u in record["units"] if u["detector"]]
        chance.append(sum(c in ("c0", "c2") for c in detectors) / len(detectors))
    assert claim.value == pytest.approx(hits - np.mean(chance))
    assert claim.per_seed == pytest.approx({s: hits - c for s, c in zip((0, 1), chance, strict=True)})


def test_verdicts():
    spec = ClaimSpec(id="v", kind="more", a="a", b="b")
    rng = np.random.default_rng(0)
    clear = np.concatenate([[2.0], rng.normal(2.0, 0.3, 200)])
    assert _verdict(spec, clear, {0: 1.5, 1: 2.5}, "", "", 0.95).verdict == "holds"
    assert _verdict(spec, clear, {0: -0.5, 1: 4.5}, "", "", 0.95).verdict == "inconclusive"
    assert _verdict(spec, -clear, {0: -1.5, 1: -2.5}, "", "", 0.95).verdict == "does not hold"
    fuzzy = np.concatenate([[0.1], rng.normal(0.1, 1.0, 200)])
    result = _verdict(spec, fuzzy, {0: 0.1, 1: 0.1}, "", "", 0.95)
    assert result.verdict == "inconclusive" and "no clear difference" in result.why
    fall = ClaimSpec(id="f", kind="over-epochs", runs=["a"], direction="fall")
    assert _verdict(fall, -clear, {0: -2.0, 1: -1.0}, "", "", 0.95).verdict == "holds"


@pytest.mark.parametrize(("entry", "message"), [
    ({"id": "x", "kind": "mor", "a": "a", "b": "b"}, "kind 'mor'.*did you mean 'more'"),
    ({"id": "x", "kind": "more", "a": "a", "b": "bb"}, "run 'bb'"),
    ({"id": "x", "kind": "more", "a": "a"}, "needs b"),
    ({"id": "x", "kind": "top-units", "runs": ["a"]}, "needs concepts"),
    ({"id": "x", "kind": "more", "a": "a", "b": "b", "colour": 1}, "key 'colour'"),
    ({"id": "x", "kind": "over-epochs", "runs": ["a"], "direction": "up"}, "rise or fall"),
])
def test_bad_claims_are_one_line(entry, message):
    def error(table, text):
        return UsageError(f"study.toml: [{table}] {text}")

    with pytest.raises(UsageError, match=message) as caught:
        validate_claims([entry], ["a", "b"], error)
    assert "\n" not in str(caught.value)


def test_the_claims_table_of_a_study_folder_is_read_from_steps_json(study, tmp_path):
    results, _, _ = study
    (results.out / "steps.json").write_text(json.dumps({"steps": [
        {"kind": "train", "run": "a", "seed": 0, "status": "done", "outputs": {"best_epoch": 1}},
        {"kind": "train", "run": "b", "seed": 0, "status": "done", "outputs": {"best_epoch": 1}},
        *[{**row, "status": "done"} for row in _dissect_rows(results, seed=0)]]}))
    again = StudyResults.from_index(results.out)
    assert again.seeds == [0] and again.epochs("a", 0) == [0, 1]
    assert Path(again.layer("b", 0, "best").folder) == results.layer("b", 0, 1).folder


def _dissect_rows(results: StudyResults, seed: int):
    for run in ("a", "b"):
        models = {f"epoch-{e:03d}": {"epoch": e, "dissection": str(
            (results.layer(run, seed, e).folder / "dissection.json").relative_to(results.out))}
            for e in (0, 1)}
        yield {"kind": "dissect", "run": run, "seed": seed, "outputs": {"models": models}}


def test_a_bare_concept_name_matches_it_in_every_concept_set():
    from cxrsem.study.claims import _named

    assert _named("phantom-bbox/Mass", ["Mass"]) and _named("Mass", ["Mass"])
    assert not _named("Massive", ["Mass"]) and not _named(None, ["Mass"])
    assert not _named("phantom/Mass", ["phantom-bbox/Mass"])


def test_significant_counts_only_the_units_that_beat_the_null(study):
    results, labels, units_of = study
    (claim,) = evaluate_claims(results, [ClaimSpec(id="g", kind="more", a="a", b="b",
                                                   quantity="significant")], resamples=RESAMPLES)
    ones = np.ones(30)

    def even_detectors(run, s):
        iou = naive_iou(units_of[(run, s, 1)], labels, ones)
        return sum(1 for u in range(0, 6, 2) if iou[u].max() > THRESHOLD)

    assert claim.per_seed == {s: even_detectors("a", s) - even_detectors("b", s) for s in (0, 1)}


def test_a_p_value_of_zero_is_shown_as_a_bound():
    from cxrsem.study.claims import _p_text

    assert _p_text(0.0, 200) == "p < 0.01" and _p_text(0.03, 200) == "p = 0.03"
