"""The files ``dissect`` and ``attribute`` write are the same, field for field, as before the
formats/engine reshaping (issue 12): ``tests/fixtures/pre_refactor/`` holds that release's outputs
of ``make_fixture.build`` (a seeded densenet-mini on the phantom)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "pre_refactor"
DISSECTION_FILES = ("dissection.json", "units.csv", "detectors.csv")
ATTRIBUTION_FILES = ("image-000.json", "image-001.json", "summary.csv", "concepts.csv")

# Floats may differ in their last bits across machines (BLAS/OpenMP change the summation order of
# convolutions and reductions); anything beyond that is a change of format or method.
REL, ABS = 1e-6, 1e-9
IGNORED = {"stats.timings_s"}  # wall-clock times
IGNORED_KEYS = {"cxrsem_version"}  # anywhere: the release that wrote the file
BY_FILE_NAME = {"model.path", "dissection.path"}  # absolute paths of the machine that wrote it
# Fields added since the fixture was stored, allowed only where they were added: the attribution
# method seam records which method ran and its options, a dissection lists the files of its result
# set (existing fields keep their values), describes its per-image statistics file and records how
# the run was split over processes.
ADDED_KEYS = {"<root>": {"attribution_method", "method_options", "files", "image_stats", "top_labelled"},
              "settings": {"iou_over", "merge_concepts", "precision"}, "stats": {"distributed"}}
# The completeness residue |sum s - (f(A) - f(0))| is float32 rounding noise (~1e-7): a change of
# summation order moves it by its own size, so it is compared absolutely.
RESIDUES = {"completeness.abs_gap": 1e-5, "completeness.rel_gap": 1e-4, "rel_gap": 1e-4}


def _load_make_fixture():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURES / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fixture's outputs made by the current code: ``{file name: path}``; an error of
    ``attribute`` is kept for the attribution tests (the dissection files are written before)."""
    out = tmp_path_factory.mktemp("stability")
    error = None
    try:
        _load_make_fixture().build(out)
    except Exception as exc:  # re-raised by the tests of the failed half
        error = exc
    layer = out / "dissect" / "model" / "features.denseblock4"
    files = {name: layer / name for name in DISSECTION_FILES}
    files.update({name: out / "attribute" / name for name in ATTRIBUTION_FILES})
    return files, error


def _close(a: float, b: float, abs_tol: float = ABS) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=abs_tol)


def compare(old: Any, new: Any, where: str = "") -> list[str]:
    """Differences between two JSON documents, one line each (empty when equal)."""
    if where in IGNORED:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        problems = []
        old_keys = set(old) - IGNORED_KEYS
        new_keys = set(new) - IGNORED_KEYS - ADDED_KEYS.get(where or "<root>", set())
        if old_keys != new_keys:
            problems.append(f"{where or '<root>'}: keys removed {sorted(old_keys - new_keys)}, "
                            f"added {sorted(new_keys - old_keys)}")
        for key in sorted(old_keys & new_keys):
            problems += compare(old[key], new[key], f"{where}.{key}" if where else key)
        return problems
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: length {len(old)} -> {len(new)}"]
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True))
                for p in compare(a, b, f"{where}[{i}]")]
    if where in BY_FILE_NAME and isinstance(old, str) and isinstance(new, str):
        old, new = Path(old).name, Path(new).name
    if isinstance(old, float) or isinstance(new, float):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
        same = numbers and _close(float(old), float(new), RESIDUES.get(where, ABS))
        return [] if same else [f"{where}: {old!r} -> {new!r}"]
    if type(old) is not type(new) or old != new:
        return [f"{where}: {old!r} -> {new!r}"]
    return []


def _cell_equal(old: str, new: str, column: str) -> bool:
    if old == new:
        return True
    try:
        return _close(float(old), float(new), RESIDUES.get(column, ABS))
    except ValueError:
        return False


# Columns a later version appends (at the end only: readers by position keep working).
ADDED_COLUMNS = {"summary.csv": ["top_labelled_unit", "top_labelled_rank", "top_labelled_concept",
                                 "top_labelled_share"]}


def compare_csv(old_path: Path, new_path: Path) -> list[str]:
    old = list(csv.reader(old_path.read_text(encoding="utf-8").splitlines()))
    new = list(csv.reader(new_path.read_text(encoding="utf-8").splitlines()))
    if len(old) != len(new):
        return [f"{len(old)} rows -> {len(new)}"]
    added = ADDED_COLUMNS.get(new_path.name, [])
    if old and new and new[0][len(old[0]):] == added:
        new = [row[:len(old[0])] for row in new]  # the appended columns are new: not compared
    problems = []
    for r, (a, b) in enumerate(zip(old, new, strict=True)):
        if len(a) != len(b):
            problems.append(f"row {r}: {a} -> {b}")
            continue
        problems += [f"row {r} column {a[c] if r == 0 else old[0][c]!r}: {x!r} -> {y!r}"
                     for c, (x, y) in enumerate(zip(a, b, strict=True))
                     if (x != y if r == 0 else not _cell_equal(x, y, old[0][c]))]
    return problems


def _check(name: str, new_path: Path) -> None:
    assert new_path.is_file(), f"{name} was not written"
    if name.endswith(".json"):
        old = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
        problems = compare(old, json.loads(new_path.read_text(encoding="utf-8")))
    else:
        problems = compare_csv(FIXTURES / name, new_path)
    assert not problems, f"{name} differs from the stored pre-refactor output:\n" + "\n".join(problems[:30])


@pytest.mark.parametrize("name", DISSECTION_FILES)
def test_dissection_outputs_are_unchanged(built, name):
    files, _ = built
    _check(name, files[name])


@pytest.mark.parametrize("name", ATTRIBUTION_FILES)
def test_attribution_outputs_are_unchanged(built, name):
    files, error = built
    if error is not None:
        raise error
    _check(name, files[name])


def test_the_comparison_can_fail():
    old = {"a": 1.0, "b": {"c": "x", "cxrsem_version": "0.1"}, "stats": {"timings_s": {"t": 1}}}
    assert compare(old, {"a": 1.0 + 1e-9, "b": {"c": "x"}, "stats": {"timings_s": {}}}) == []
    assert compare(old, {"a": 1.001, "b": {"c": "x"}, "stats": {"timings_s": {}}}) == ["a: 1.0 -> 1.001"]
    assert compare(old, {"a": 1.0, "b": {"c": "x", "d": 0}, "stats": {"timings_s": {}}}) == [
        "b: keys removed [], added ['d']"]
    assert compare({"model": {"path": "/a/m.pt"}}, {"model": {"path": "/b/m.pt"}}) == []
    assert compare({"x": 1}, {"x": True}) == ["x: 1 -> True"]
    assert compare({}, {"attribution_method": "ig"}) == []
    assert compare({"a": {}}, {"a": {"attribution_method": "ig"}}) == [
        "a: keys removed [], added ['attribution_method']"]
    assert compare({"completeness": {"rel_gap": 1e-6}}, {"completeness": {"rel_gap": 5e-6}}) == []
    assert compare({"completeness": {"rel_gap": 1e-6}}, {"completeness": {"rel_gap": 1e-3}}) != []
