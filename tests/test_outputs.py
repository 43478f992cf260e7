"""Atomic writes: a failure leaves the previous good file intact."""

from __future__ import annotations

import pytest

from cxrsem.errors import UsageError
from cxrsem.outputs import atomic_write, ensure_output_dir, write_config, write_json


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"good": 1})

    def half_then_crash(handle):
        handle.write(b'{"trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text().strip().startswith('{\n  "good": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"v": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_config_drops_none_and_round_trips(tmp_path):
    import tomllib

    path = write_config(tmp_path, {"train": {"epochs": 3, "weights": None, "out": tmp_path}})
    assert tomllib.loads(path.read_text()) == {"train": {"epochs": 3, "out": str(tmp_path)}}


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="exists and is a file"):
        ensure_output_dir(tmp_path / "f")


def test_outputs_are_not_private(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    path = write_json(tmp_path / "r.json", {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
