"""Studies: a TOML file of named training runs whose checkpoints are dissected, attributed and
reported, run step by step into one folder, resumable and in parallel (``cxrsem study run``;
``docs/study.md``)."""

from cxrsem.study.plan import Step, plan
from cxrsem.study.run import StudyFailed, StudyResult, read_marker, run_study, statuses
from cxrsem.study.spec import Study, StudyError, load_study

__all__ = ["Step", "Study", "StudyError", "StudyFailed", "StudyResult", "load_study", "plan",
           "read_marker", "run_study", "statuses"]
