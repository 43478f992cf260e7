"""`cxrsem study run`: a tiny study end to end, resume, --jobs 2, and bad study files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrsem.study import load_study, plan
from cxrsem.study.run import MARKER
from cxrsem.testing import run_cli

TINY = Path(__file__).resolve().parents[1] / "studies" / "tiny.toml"


def _main(args: list[str]) -> int:
    from cxrsem.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("main returned without an exit code")


def _steps(out: Path) -> dict[str, dict]:
    return {s["id"]: s for s in json.loads((out / "steps.json").read_text())["steps"]}


def _token(out: Path, step: str) -> str:
    return json.loads((out / step / MARKER).read_text())["token"]


def _sha(path: Path) -> str:
    from cxrsem.checkpoint import load_checkpoint, state_dict_sha256

    return state_dict_sha256(load_checkpoint(path)["state_dict"])


def _detectors(out: Path, step: str) -> dict[str, int]:
    return {k: v["detectors"] for k, v in _steps(out)[step]["outputs"]["models"].items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny study (cls, and sev initialised from cls's best.pt), run once with --jobs 1."""
    out = tmp_path_factory.mktemp("study") / "tiny"
    assert _main(["study", "run", TINY, "--out", out]) == 0
    return out


def test_tiny_study_runs_end_to_end(tiny_run):
    steps = _steps(tiny_run)
    assert list(steps) == ["train/cls/seed-0", "train/sev/seed-0", "dissect/cls/seed-0",
                           "dissect/sev/seed-0", "attribute/sev/seed-0", "claims", "report"]
    assert all(s["status"] == "done" and s["seconds"] > 0 for s in steps.values())
    # the severity run started from the classification run's best checkpoint
    from cxrsem.checkpoint import load_checkpoint

    init = load_checkpoint(tiny_run / "train/sev/seed-0/best.pt")["train"]["init"]
    assert Path(init) == tiny_run / "train/cls/seed-0/best.pt"
    # every epoch checkpoint dissected, each by name in the index
    models = steps["dissect/sev/seed-0"]["outputs"]["models"]
    assert sorted(models) == ["epoch-000", "epoch-001"]
    assert all((tiny_run / m["dissection"]).is_file() for m in models.values())
    # the two most severe validation images, named by the dissection of the same weights
    selection = json.loads((tiny_run / "attribute/sev/seed-0/selection.json").read_text())
    assert [r["name"] for r in selection["images"]] == ["image-000", "image-001"]
    assert selection["images"][0]["severity"] >= selection["images"][1]["severity"]
    record = json.loads((tiny_run / "attribute/sev/seed-0/image-000.json").read_text())
    assert record["dissection"]["path"].startswith(str(tiny_run / "dissect/sev/seed-0"))
    report = (tiny_run / steps["report"]["outputs"]["report"]).read_text()
    # the claims step's table opens the report (its arithmetic: tests/test_claims.py)
    claims = json.loads((tiny_run / steps["claims"]["outputs"]["claims"]).read_text())
    assert [c["spec"]["id"] for c in claims["claims"]] == ["pretraining", "opacity-over-epochs",
                                                          "top-units"]
    assert set(steps["claims"]["outputs"]["verdicts"].values()) <= {"holds", "does not hold",
                                                                    "inconclusive"}
    assert report.index("## The paper's claims, measured") < report.index("## 1. Concept")
    assert (tiny_run / "study.toml").is_file()
    assert not (tiny_run / "dissect/sev/seed-0/.cache").exists()


def test_rerun_skips_every_step(tiny_run, capsys):
    before = {s: _token(tiny_run, s) for s in _steps(tiny_run)}
    mtime = (tiny_run / "train/cls/seed-0/epoch-001.pt").stat().st_mtime_ns
    code, _, err = run_cli(["study", "run", TINY, "--out", tiny_run], capsys)
    assert code == 0
    assert err.count("done already:") == 7 and "start" not in err
    assert "[7/7]" in err
    assert {s: _token(tiny_run, s) for s in _steps(tiny_run)} == before
    assert (tiny_run / "train/cls/seed-0/epoch-001.pt").stat().st_mtime_ns == mtime


def test_killed_steps_are_redone(tiny_run, capsys):
    before = {s: _token(tiny_run, s) for s in _steps(tiny_run)}
    sha = _sha(tiny_run / "train/sev/seed-0/best.pt")
    # A training killed before it finished: no marker, no best.pt; a dissection killed midway:
    # no marker, a stray file.
    sev = tiny_run / "train/sev/seed-0"
    (sev / MARKER).unlink()
    (sev / "best.pt").unlink()
    (tiny_run / "dissect/cls/seed-0" / MARKER).unlink()
    (tiny_run / "dissect/cls/seed-0/partial.tmp").write_text("x")
    code, _, err = run_cli(["study", "run", TINY, "--out", tiny_run], capsys)
    assert code == 0, err
    after = {s: _token(tiny_run, s) for s in _steps(tiny_run)}
    assert after["train/cls/seed-0"] == before["train/cls/seed-0"]   # untouched
    redone = {s for s in before if after[s] != before[s]}
    assert redone == {"train/sev/seed-0", "dissect/cls/seed-0", "dissect/sev/seed-0",
                      "attribute/sev/seed-0", "claims", "report"}
    assert not (tiny_run / "dissect/cls/seed-0/partial.tmp").exists()
    assert _sha(sev / "best.pt") == sha   # redone from the start: the same model
    assert "[7/7]" in err and err.count("done already:") == 1


def test_changed_settings_are_refused_then_redone(tiny_run, capsys):
    args = ["study", "run", TINY, "--out", tiny_run, "--set", "attribute.count=1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "attribute/sev/seed-0" in err and "count: was 2, now 1" in err
    assert "--redo-changed" in err
    code, _, err = run_cli([*args, "--redo-changed"], capsys)
    assert code == 0, err
    selection = json.loads((tiny_run / "attribute/sev/seed-0/selection.json").read_text())
    assert len(selection["images"]) == 1
    assert err.count("done already:") == 4   # trainings and dissections kept


def test_jobs_2_gives_the_results_of_jobs_1(tiny_run, tmp_path, capsys):
    # sev from scratch: two independent trainings, run in two worker processes
    out = tmp_path / "parallel"
    code, _, err = run_cli(["study", "run", TINY, "--out", out, "--jobs", 2,
                            "--set", "runs.sev.init=\"random\"", "--set", "attribute.enabled=false",
                            "--set", "claims=[]", "--set", "report.enabled=false"], capsys)
    assert code == 0, err
    steps = _steps(out)
    assert list(steps) == ["train/cls/seed-0", "train/sev/seed-0", "dissect/cls/seed-0",
                           "dissect/sev/seed-0"]
    assert all(s["status"] == "done" for s in steps.values())
    trainings = [json.loads((out / t / MARKER).read_text()) for t in list(steps)[:2]]
    assert max(m["started_at"] for m in trainings) < min(m["finished_at"] for m in trainings)
    for name in ("epoch-000.pt", "epoch-001.pt", "best.pt"):
        assert _sha(out / "train/cls/seed-0" / name) == _sha(tiny_run / "train/cls/seed-0" / name)
    assert _detectors(out, "dissect/cls/seed-0") == _detectors(tiny_run, "dissect/cls/seed-0")
    a = json.loads((out / "dissect/cls/seed-0/epoch-001/features.denseblock4/dissection.json")
                   .read_text())
    b = json.loads((tiny_run / "dissect/cls/seed-0/epoch-001/features.denseblock4/"
                    "dissection.json").read_text())
    assert [u["iou"] for u in a["units"]] == [u["iou"] for u in b["units"]]


def test_failing_step_names_itself_and_keeps_the_rest(tmp_path, capsys, monkeypatch):
    from cxrsem.errors import DataError
    from cxrsem.study import run as study_run

    def broken(step, folder, out, study):
        raise DataError("the images went away")

    monkeypatch.setitem(study_run.RUNNERS, "dissect", broken)
    out = tmp_path / "broken"
    code, _, err = run_cli(["study", "run", TINY, "--out", out, "--step", "train/cls/*",
                            "--step", "dissect/cls/*"], capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: step dissect/cls/seed-0 failed: the images went away")
    steps = _steps(out)
    assert steps["train/cls/seed-0"]["status"] == "done"
    assert steps["dissect/cls/seed-0"]["status"] == "failed"
    assert steps["dissect/cls/seed-0"]["error"] == "the images went away"


def _bad(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


BASE = """
[study]
seeds = [0]
[defaults]
arch = "densenet-mini"
image_size = 32
"""


@pytest.mark.parametrize("body, fragment", [
    ("[runs.a]\nloss = \"bce\"\nepohcs = 1\n",
     "unknown key in [runs.a]: 'epohcs'; did you mean 'epochs'?"),
    ("[runs.a]\nloss = \"weighted-bse\"\n",
     "[runs.a] unknown loss 'weighted-bse'; did you mean"),
    ("[runs.a]\nloss = \"bce\"\ninit = \"b\"\n[runs.b]\nloss = \"mse\"\ninit = \"a\"\n",
     "init references form a cycle: a -> b -> a"),
    ("[runs.a]\nloss = \"bce\"\ninit = \"c\"\n[runs.b]\nloss = \"mse\"\n",
     "unknown run 'c'"),
    ("[runs.a]\nloss = \"mse\"\ndataset = \"brixia-cohen\"\n",
     "'brixia-cohen' needs its data folder"),
    ("[runs.a]\nloss = \"bce\"\n[dissect]\nconcepts = [\"phantom\", \"covid-sge\"]\n",
     "unknown concept set 'covid-sge'; did you mean 'covid-seg'?"),
    ("[runs.a]\nloss = \"bce\"\ninit = \"imagenet\"\n", "init = \"imagenet\" needs weights"),
    ("[runs.a]\nloss = \"bce\"\n[dissect]\nshared = \"drop\"\n",
     "[dissect] shared must be flag or exclude, got 'drop'"),
    ("[runs.a]\nloss = \"bce\"\n[runs.b]\nloss = \"mse\"\n[[claims]]\nid = \"w\"\nkind = \"mor\"\n"
     "a = \"a\"\nb = \"b\"\n", "[claims w] unknown kind 'mor'; did you mean 'more'?"),
    ("[runs.a]\nloss = \"bce\"\n[atribute]\n", "did you mean 'attribute'?"),
])
def test_bad_study_file_is_one_line(tmp_path, capsys, monkeypatch, body, fragment):
    monkeypatch.delenv("CXRSEM_DATA_BRIXIA_COHEN", raising=False)
    path = _bad(tmp_path, BASE + body)
    code, out, err = run_cli(["study", "run", path, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"Error: {path}: ")
    assert fragment in err
    assert not (tmp_path / "out").exists()   # checked before anything is written


def test_show_lists_steps_and_overrides_apply(tmp_path, capsys):
    code, out, _ = run_cli(["study", "show", TINY, "--out", tmp_path / "none", "--json",
                            "--set", "study.seeds=[0, 1]"], capsys)
    assert code == 0
    steps = json.loads(out)
    assert len(steps) == 12 and all(s["state"] == "missing" for s in steps)
    assert (steps[3]["id"], steps[3]["deps"]) == ("train/sev/seed-1", ["train/cls/seed-1"])


@pytest.mark.parametrize("name", ["paper-fig2.toml", "real-brixia.toml"])
def test_shipped_studies_are_valid(name):
    study = load_study(TINY.parent / name, check_data=False)
    steps = plan(study)
    assert steps[-1].id == "report"
    assert len({s.id for s in steps}) == len(steps)


def test_step_config_hash_ignores_where_data_lives():
    a = load_study(TINY)
    b = load_study(TINY, ["data_roots.covid-seg=\"/elsewhere\"", "study.device=\"cpu\""])
    assert [s.config_hash for s in plan(a)] == [s.config_hash for s in plan(b)]
    c = load_study(TINY, ["runs.cls.lr=0.01"])
    assert plan(a)[0].config_hash != plan(c)[0].config_hash


def test_a_step_needs_its_inputs_done(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["study", "run", TINY, "--out", out, "--step", "dissect/sev/*"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "step dissect/sev/seed-0 needs step train/sev/seed-0, which is not done" in err
    code, _, err = run_cli(["study", "run", TINY, "--out", out, "--step", "trian/*"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown step 'trian/*'" in err
    assert not out.exists()


def test_shared_flag_is_the_default_and_keeps_the_step_hash(tmp_path):
    """``dissect.shared = "flag"`` is what a study without the key did: its dissect steps keep
    their config (and so their done-markers); "exclude" is a different step."""
    from cxrsem.study.plan import plan
    from cxrsem.study.spec import load_study

    def dissect_configs(*overrides):
        steps = plan(load_study(TINY, list(overrides)))
        return [s.config for s in steps if s.kind == "dissect"]

    assert dissect_configs() == dissect_configs('dissect.shared="flag"')
    assert dissect_configs() != dissect_configs('dissect.shared="exclude"')


def test_step_configs_record_only_options_that_differ_from_the_defaults():
    """A plugin that adds an option (with a default) leaves finished steps done: a step's config
    holds the component options the study changed, not the resolved defaults."""
    from cxrsem.study.plan import plan
    from cxrsem.study.spec import load_study

    def configs(*overrides):
        return {s.id: s.config for s in plan(load_study(TINY, list(overrides)))
                if s.kind in ("train", "dissect")}

    plain = configs()
    assert plain == configs('runs.cls.dataset_options.prevalence=""',   # the default, spelled out
                            "dissect.concept_options.phantom.split=\"test\"")
    assert plain["train/cls/seed-0"]["dataset_options"] == {"n_train": 32, "n_val": 16, "n_test": 16}
    assert plain["dissect/cls/seed-0"]["concept_options"] == {"phantom": {"n_images": 16}}
    assert plain != configs("runs.cls.dataset_options.n_val=8")
