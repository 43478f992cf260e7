"""The steps of a study, their folders and their order.

One study gives, per run and seed, ``train`` -> ``dissect`` (every kept epoch checkpoint, one
:func:`cxrsem.dissect` call) -> ``attribute``, then (when the study lists ``[[claims]]``) one
``claims`` step and one ``report`` over all of them::

    OUT/train/NAME/seed-S/       the run folder of cxrsem.train (epoch-NNN.pt, best.pt, ...)
    OUT/dissect/NAME/seed-S/     cxrsem.dissect --out (epoch-NNN/<layer>/dissection.json, ...)
    OUT/attribute/NAME/seed-S/   cxrsem.attribute --out (+ selection.json: which images)
    OUT/claims/                  claims.json, claims.md (cxrsem.study.claims)
    OUT/report/                  report.html (or report.md), opening with the claims table

A ``train`` step of a run with ``init = OTHER_RUN`` depends on ``OTHER_RUN``'s ``train`` step of
the same seed (it starts from that step's ``best.pt``).  Each step's ``config`` (names and
numbers: what its result depends on, not where the data lives or which device ran it) is hashed
into its done-marker, so a changed study is noticed step by step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from cxrsem.study.spec import Study

KINDS = ("train", "dissect", "attribute", "claims", "report")


@dataclass
class Step:
    id: str                      # "train/bce/seed-0", "report"
    kind: str
    run: str | None
    seed: int | None
    folder: str                  # relative to OUT, POSIX
    deps: list[str]
    config: dict[str, Any]
    needs: dict[str, str] = field(default_factory=dict)  # role -> step id ("init", "train", ...)

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def step_id(kind: str, run: str | None = None, seed: int | None = None) -> str:
    return kind if run is None else f"{kind}/{run}/seed-{seed}"


def _train_order(study: Study) -> list[str]:
    """Runs so that every run comes after the run it starts from (file order otherwise)."""
    ordered: list[str] = []

    def visit(run: str) -> None:
        if run in ordered:
            return
        parent = study.init_run(run)
        if parent is not None:
            visit(parent)
        ordered.append(run)

    for run in study.runs:
        visit(run)
    return ordered


def _given(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the values equal to the component's defaults: what a step config
    records, so that a plugin adding an option (with a default) leaves finished steps done."""
    from cxrsem.plugins import get

    defaults = get(kind, name).defaults()
    return {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}


def plan(study: Study) -> list[Step]:
    """Every step of ``study`` in an order that respects the dependencies."""
    steps: list[Step] = []
    dissected = set(study.dissected_runs())
    attributed = set(study.attributed_runs())
    ordered = _train_order(study)
    for seed in study.seeds:
        for run in ordered:
            config = {**study.runs[run], "seed": seed}
            config.pop("image_cache")  # where prepared images live, not what is trained
            for key, kind, name in (("dataset_options", "dataset", config["dataset"]),
                                    ("loss_options", "loss", config["loss"]),
                                    ("arch_options", "architecture", config["arch"])):
                config[key] = _given(kind, name, config[key])
            needs = {}
            parent = study.init_run(run)
            if parent is not None:
                needs["init"] = step_id("train", parent, seed)
                config["init"] = f"run:{parent}"
            sid = step_id("train", run, seed)
            steps.append(Step(sid, "train", run, seed, str(PurePosixPath(sid)),
                              list(needs.values()), config, needs))
    dissect_config = {k: v for k, v in study.dissect.items()
                      if k not in ("enabled", "runs", "image_cache", "keep_cache")}
    if dissect_config["shared"] == "flag":  # the default: studies done before it keep their hash
        del dissect_config["shared"]
    dissect_config["concept_options"] = {
        name: _given("concept_set", name, options)
        for name, options in dissect_config["concept_options"].items()}
    for seed in study.seeds:
        for run in study.runs:
            if run not in dissected:
                continue
            sid = step_id("dissect", run, seed)
            needs = {"train": step_id("train", run, seed)}
            # the checkpoint the attribution explains is always dissected: its units are named
            config = {**dissect_config, "run": run, "seed_of_run": seed,
                      "attributed": study.attribute["checkpoint"] if run in attributed else None}
            steps.append(Step(sid, "dissect", run, seed, sid, list(needs.values()), config, needs))
    attribute_config = {k: v for k, v in study.attribute.items() if k not in ("enabled", "runs")}
    for seed in study.seeds:
        for run in study.runs:
            if run not in attributed:
                continue
            sid = step_id("attribute", run, seed)
            needs = {"train": step_id("train", run, seed)}
            if run in dissected:
                needs["dissect"] = step_id("dissect", run, seed)
            config = {**attribute_config, "run": run, "seed_of_run": seed,
                      "layer": study.dissect["layer"], "named_by": "dissect" in needs}
            steps.append(Step(sid, "attribute", run, seed, sid, list(needs.values()), config,
                              needs))
    claims = []
    if study.claims and any(s.kind == "dissect" for s in steps):
        # every training (best epochs), dissection and attribution the claims read
        inputs = [s.id for s in steps if s.kind in ("train", "dissect", "attribute")]
        config = {"claims": study.claims, "resamples": study.dissect["bootstrap"] or 1000,
                  "seed": study.dissect["seed"]}
        steps.append(Step("claims", "claims", None, None, "claims", inputs, config))
        claims = ["claims"]
    if study.report["enabled"] and any(s.kind == "dissect" for s in steps):
        inputs = [s.id for s in steps if s.kind in ("dissect", "attribute")]
        if inputs:
            config = {**{k: v for k, v in study.report.items() if k != "enabled"},
                      "inputs": inputs}
            steps.append(Step("report", "report", None, None, "report", inputs + claims, config))
    return steps


def select(steps: list[Step], patterns: list[str]) -> list[Step]:
    """The steps whose id matches one of ``patterns`` (shell-style: ``train/*``, ``*/bce/*``)."""
    from fnmatch import fnmatchcase

    from cxrsem.plugins import unknown_name_message
    from cxrsem.study.spec import StudyError

    chosen = []
    for pattern in patterns:
        found = [s for s in steps if fnmatchcase(s.id, pattern)]
        if not found:
            message = unknown_name_message("step", pattern, [s.id for s in steps])
            raise StudyError(message.split(" available:")[0].rstrip(";")
                             + " (`cxrsem study show FILE` lists the steps)")
        chosen.extend(s for s in found if s not in chosen)
    return [s for s in steps if s in chosen]
