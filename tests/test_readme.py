"""The README's Python code runs as printed (issue 17: each shortest form is run by a test)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_own_model_example_runs(capsys, monkeypatch, tmp_path):
    (block,) = [b for b in python_blocks() if "torchvision.models.densenet121" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("{") and len(printed) == 3       # the detectors, two images
    assert all(re.fullmatch(r"\d+ \d+\.\d%", line) for line in printed[1:])
    assert list(tmp_path.iterdir()) == []                         # nothing written
