"""The hostile-input corpus (``tests/hostile/corpus.py``): every crafted file or name meets the CLI's
error policy.

For each case: a non-zero exit with exactly one ``Error: ...`` line, the last on stderr, naming
the problem (or, for the cases cxrsem recovers from, exit 0 and one ``Warning: ...`` line saying
what it did instead); never a traceback or an "unexpected X"; and no file written or changed
outside ``--out`` (the whole temporary folder, the working directory included, is compared before
and after).  Other stderr lines are the commands' ordinary progress notes (``train`` describes its
dataset, ``dissect`` names the model it reads), printed before the error.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest

from cxrsem import plugins
from cxrsem.testing import TestKitPlugin, run_cli

# loaded by path, like tests/fixtures/builders.py: the test folders are no package
_spec = importlib.util.spec_from_file_location("hostile_corpus",
                                               Path(__file__).parent / "hostile" / "corpus.py")
corpus = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = corpus
_spec.loader.exec_module(corpus)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def testkit():
    plugins.register_plugin(TestKitPlugin(), "testkit")


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but not under ``skip``: (size, mtime_ns)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            dirs[:] = []
            continue
        for name in files:
            st = os.stat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return found


def test_the_corpus_covers_every_kind_of_case():
    ids = [case.id for case in corpus.CASES]
    assert len(ids) == len(set(ids))
    for entry in ("dissect", "attribute", "train"):
        assert sum(i.startswith("checkpoint-") and i.endswith(entry) for i in ids) == len(corpus.CHECKPOINTS)
    assert len(ids) >= 40


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda case: case.id)
def test_hostile_input(case, tmp_path, capsys, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    run = case.build(tmp_path)
    for name, value in run.env.items():
        monkeypatch.setenv(name, value)
    plugins.reset()
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        code, _, err = run_cli(run.args, capsys)

    lines = err.rstrip("\n").splitlines() if err.strip() else []
    assert "Traceback" not in err and "unexpected" not in err, err
    errors = [line for line in lines if line.startswith("Error:")]
    if run.code == 0:
        assert code == 0, err
        assert not errors, err
        if run.fragment is not None:
            warned = [line for line in lines if line.startswith("Warning:") and run.fragment in line]
            assert len(warned) == 1, err
    else:
        assert code not in (0, None), err
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert run.fragment in errors[0], err
    assert snapshot(tmp_path, out) == before, "a file was written or changed outside --out"
