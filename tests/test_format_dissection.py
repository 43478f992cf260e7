"""The dissection file contract (:mod:`cxrsem.formats.dissection`): the detector rule and the one
reader shared by ``attribute`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrsem.errors import UsageError
from cxrsem.formats.dissection import (
    DEFAULT_IOU_THRESHOLD,
    SCHEMA,
    SCHEMAS_READ,
    UNLABELLED,
    SchemaError,
    UnitLabel,
    is_detector,
    load_dissection,
    parse_dissection,
)
from cxrsem.reporting.collect import collect

STORED = Path(__file__).parent / "fixtures" / "pre_refactor" / "dissection.json"


def test_detector_rule_is_strictly_above_the_threshold():
    assert DEFAULT_IOU_THRESHOLD == 0.04
    assert not is_detector(0.04)
    assert is_detector(0.0400001)
    assert not is_detector(0.04, 0.04) and is_detector(0.0400001, 0.04)
    assert is_detector(0.05, 0.04) and not is_detector(0.05, 0.06)
    assert not is_detector(None)
    assert is_detector(np.array([0.04, 0.0400001, 0.0])).tolist() == [False, True, False]


def test_stored_file_is_read():
    data = json.loads(STORED.read_text())
    result = parse_dissection(data, STORED)
    assert result.schema == SCHEMA and SCHEMA in SCHEMAS_READ
    assert (result.layer, result.num_units, result.iou_threshold) == ("features.denseblock4", 69, 0.04)
    assert len(result.units) == 69 and result.sha256 == data["model"]["sha256"]
    row = next(r for r in data["units"] if r["detector"])
    assert result.label(row["unit"]) == UnitLabel(row["unit"], row["concept"], row["iou"], True)
    assert sum(u.labelled for u in result.units) == data["num_detectors"]
    assert result.concept_images == {c["name"]: c["images"] for c in data["concepts"]}
    loaded = load_dissection(STORED, layer="features.denseblock4", sha256=data["model"]["sha256"],
                             num_units=69)
    assert loaded.units == result.units


def test_labels_without_detector_flag_follow_the_rule():
    data = {"schema": SCHEMA, "settings": {"iou_threshold": 0.05},
            "units": [{"unit": 0, "concept": "lung", "iou": 0.05},
                      {"unit": 1, "concept": "lung", "iou": 0.0500001},
                      {"unit": 2, "concept": "lung", "iou": 0.01, "detector": True},
                      {"unit": 3, "concept": None, "iou": 0.9}]}
    result = parse_dissection(data, "d.json")
    assert [u.labelled for u in result.units] == [False, True, True, False]
    assert result.label(7) == UnitLabel(7, None, None, False) and result.layer is None
    assert UNLABELLED == "unlabelled"


@pytest.mark.parametrize("schema, message", [
    ("something-else/1", "not a cxrsem dissection result (schema 'something-else/1', expected "
                         "cxrsem-dissection/1)"),
    ("cxrsem-dissection/2", "schema 'cxrsem-dissection/2' is not supported by this cxrsem"),
    (None, "not a cxrsem dissection result (schema None"),
])
def test_other_schemas_are_rejected_clearly(tmp_path, schema, message):
    data = dict(json.loads(STORED.read_text()), schema=schema)
    with pytest.raises(SchemaError) as info:
        parse_dissection(data, STORED)
    assert message in str(info.value)
    path = tmp_path / "model" / "features.denseblock4" / "dissection.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as info:
        load_dissection(path, layer="features.denseblock4", sha256=data["model"]["sha256"], num_units=69)
    assert str(path) in str(info.value) and message in str(info.value)
    collected = collect([tmp_path])
    assert collected.dissections == [] and any(message in w for w in collected.warnings)


def test_required_fields_for_naming_units(tmp_path):
    data = json.loads(STORED.read_text())
    del data["model"]["sha256"]
    path = tmp_path / "dissection.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=r"malformed dissection result .*missing or invalid 'model.sha256'"):
        load_dissection(path, layer="features.denseblock4", sha256="0" * 64, num_units=69)
    (report,) = collect([path]).dissections  # the report does without it
    assert report.sha256 is None and report.num_units == 69 and report.units[0].unit == 0
