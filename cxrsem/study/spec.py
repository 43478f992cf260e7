"""The study file: a TOML list of named training runs and what to do with their checkpoints.

Schema (every key, with its default; ``docs/study.md``)::

    [study]
    name = "paper-fig2"        # default: the file's stem
    seeds = [0, 1, 2]          # every run is trained once per seed
    device = "auto"            # auto | cpu | cuda[:N]
    threads = 0                # torch threads per step (0: cores // --jobs); CPU results are
                               # bit-identical across --jobs only at the same thread count

    [data_roots]               # NAME = PATH (relative paths: relative to the study file)

    [defaults]                 # any run key: what every run gets unless it says otherwise
    arch = "densenet-mini"

    [runs.NAME]                # one training run per seed: keys of `cxrsem train`
    dataset = "phantom"        # dataset, loss, arch, epochs, batch_size, lr, image_size, patience,
    loss = "bce"               # workers, shuffle, image_cache, weights,
    init = "random"            # random | imagenet (with weights = FILE) | OTHER_RUN (that run's
                               # best.pt of the same seed) | a checkpoint path
    dataset_options = {}       # and loss_options, arch_options: the components' options

    [dissect]                  # every kept epoch checkpoint of the runs, one dissect call per run
    [attribute]                # the most severe images (or a list of ids) of chosen runs
    [report]                   # one report over every dissection and attribution

Everything is checked before any step runs (:func:`load_study`): unknown keys (with the closest
match), unknown components and component options (through the plugin manager), unknown or cyclic
``init`` references, missing data roots and ImageNet weights -- each a one-line
:class:`StudyError` naming the file and the table.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrsem.errors import CxrsemError, UsageError
from cxrsem.plugins import unknown_name_message
from cxrsem.study.claims import validate_claims


class StudyError(UsageError):
    """An invalid study file or a study that cannot run as given (one line)."""


# --- the keys of each table, with their defaults ------------------------------------------------------

STUDY_KEYS: dict[str, Any] = {"name": None, "seeds": [0], "device": "auto", "threads": 0}

# Keys of a run (and of [defaults]); defaults as `cxrsem train`'s, except save_every (always 1:
# every epoch is dissected) and the study's own.
RUN_KEYS: dict[str, Any] = {
    "dataset": "phantom", "loss": "bce", "arch": "densenet121", "epochs": 10, "batch_size": 32,
    "lr": 1e-4, "image_size": 224, "patience": 5, "workers": 0, "shuffle": "auto",
    "init": "random", "weights": None, "image_cache": None,
    "dataset_options": {}, "loss_options": {}, "arch_options": {},
}
OPTION_TABLES = ("dataset_options", "loss_options", "arch_options")

DISSECT_KEYS: dict[str, Any] = {
    "enabled": True, "runs": None, "concepts": ["phantom"], "concept_options": {},
    "layer": None, "epochs": "all", "seed": 0, "figures": True, "keep_cache": False,
    "nulls": [], "quantile": None, "iou_threshold": None, "seg_size": 112, "limit": 0,
    "batch_size": 32, "bootstrap": 0, "group_by": "patient", "confidence": None, "fdr": None,
    "sensitivity": False, "precision": None, "cache_dtype": "float32", "image_cache": None,
    # concept-set images the run's dataset also holds: "flag" (dissected, recorded) or "exclude"
    # (left out of the dissection, through the concept set's `exclude` option)
    "shared": "flag",
}
# DissectSettings fields a study may set (None above: the library's default).
SETTINGS_KEYS = ("quantile", "iou_threshold", "seg_size", "limit", "batch_size", "bootstrap",
                 "group_by", "confidence", "fdr", "sensitivity", "precision", "cache_dtype")

ATTRIBUTE_KEYS: dict[str, Any] = {
    "enabled": True, "runs": None, "checkpoint": "best", "images": "most-severe", "count": 8,
    "split": "val", "among": None, "target": None, "method": "ig", "steps": None, "top_k": 3,
    "batch_size": 8, "render": True,
}
SPLITS = ("train", "val", "test", "all")

REPORT_KEYS: dict[str, Any] = {"enabled": True, "format": "html", "iou_threshold": None}

TABLES = ("study", "data_roots", "defaults", "runs", "dissect", "attribute", "report")


@dataclass
class Study:
    """A validated study: names and numbers only (``as_dict`` is what ``OUT/study.toml`` holds)."""

    path: Path
    name: str
    seeds: list[int]
    device: str
    threads: int
    data_roots: dict[str, str]
    runs: dict[str, dict[str, Any]]          # every key of RUN_KEYS, resolved
    dissect: dict[str, Any]
    attribute: dict[str, Any]
    report: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)  # [[claims]]: cxrsem.study.claims

    def as_dict(self) -> dict[str, Any]:
        return {"study": {"name": self.name, "seeds": list(self.seeds), "device": self.device,
                          "threads": self.threads,
                          "file": str(self.path), "overrides": list(self.overrides)},
                "data_roots": dict(self.data_roots),
                "runs": copy.deepcopy(self.runs), "dissect": copy.deepcopy(self.dissect),
                "attribute": copy.deepcopy(self.attribute), "report": copy.deepcopy(self.report),
                "claims": copy.deepcopy(self.claims)}

    def init_run(self, run: str) -> str | None:
        """The run whose best.pt ``run`` starts from, or None."""
        init = self.runs[run]["init"]
        return init if init in self.runs else None

    def dissected_runs(self) -> list[str]:
        if not self.dissect["enabled"]:
            return []
        return list(self.dissect["runs"] or self.runs)

    def attributed_runs(self) -> list[str]:
        if not self.attribute["enabled"]:
            return []
        return list(self.attribute["runs"] or self.runs)


# --- loading ---------------------------------------------------------------------------------------------

def read_study_file(path: str | Path) -> dict[str, Any]:
    from cxrsem.config import read_toml

    return read_toml(Path(path), "study file", StudyError)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"defaults.epochs=1"`` -> ``(["defaults", "epochs"], 1)``; the value is read as a TOML value
    (``[0, 1]``, ``true``, ``"x"``), or else taken as a string."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise StudyError(f"--set expects TABLE.KEY=VALUE (e.g. defaults.epochs=1), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        target = data
        for part in parts[:-1]:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise StudyError(f"--set {item}: {'.'.join(parts[:-1])} is not a table")
            target = nxt
        target[parts[-1]] = value
    return data


def load_study(path: str | Path, overrides: Sequence[str] = (), *,
               check_data: bool = True) -> Study:
    """Read, override (``--set TABLE.KEY=VALUE``) and validate the study file at ``path``.

    ``check_data``: also check that every data root the study needs is given and is a folder.
    """
    path = Path(path)
    data = apply_overrides(read_study_file(path), overrides)
    return validate_study(data, path, overrides=list(overrides), check_data=check_data)


# --- validation -------------------------------------------------------------------------------------------

class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, table: str, message: str) -> StudyError:
        return StudyError(f"{self.path}: [{table}] {message}")

    def keys(self, table: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in given:
            if key not in allowed:
                raise StudyError(f"{self.path}: " + unknown_name_message(
                    f"key in [{table}]:", key, allowed))

    def table(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise StudyError(f"{self.path}: {name!r} must be a table ([{name}])")
        return dict(value)


def _check_type(where: _Where, table: str, key: str, value: Any, default: Any) -> Any:
    """``value`` of the type of ``default`` (ints accepted for floats); None-defaults take any."""
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise where.error(table, f"{key} must be {expected.__name__}, got {value!r}")
    return value


def validate_study(data: dict[str, Any], path: Path, *, overrides: Sequence[str] = (),
                   check_data: bool = True) -> Study:
    where = _Where(path)
    where.keys("top level", data, (*TABLES, "claims"))
    for name in TABLES:
        where.table(data, name)

    study = {**copy.deepcopy(STUDY_KEYS), **where.table(data, "study")}
    where.keys("study", where.table(data, "study"), list(STUDY_KEYS))
    seeds = study["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise where.error("study", f"seeds must be a non-empty list of distinct integers >= 0, "
                                   f"got {study['seeds']!r}")
    name = study["name"] if study["name"] is not None else path.stem
    if not isinstance(name, str) or not name:
        raise where.error("study", "name must be a non-empty string")
    if not isinstance(study["device"], str):
        raise where.error("study", "device must be a string (auto, cpu, cuda[:N])")
    threads = study["threads"]
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise where.error("study", f"threads must be 0 (cores // --jobs) or a number, got {threads!r}")

    data_roots = where.table(data, "data_roots")
    for key, root in data_roots.items():
        if not isinstance(root, str):
            raise where.error("data_roots", f"{key} must be a path string")
        given = Path(root).expanduser()
        data_roots[key] = str(given if given.is_absolute() else path.parent / given)

    defaults = where.table(data, "defaults")
    where.keys("defaults", defaults, list(RUN_KEYS))
    runs_table = where.table(data, "runs")
    if not runs_table:
        raise where.error("runs", "the study names no runs; add a [runs.NAME] table")
    runs = {run: _run(where, run, table, defaults) for run, table in runs_table.items()}
    _check_inits(where, runs, path)

    dissect = _section(where, data, "dissect", DISSECT_KEYS)
    attribute = _section(where, data, "attribute", ATTRIBUTE_KEYS)
    report = _section(where, data, "report", REPORT_KEYS)
    _check_dissect(where, dissect, runs)
    _check_attribute(where, attribute, dissect, runs)
    if report["format"] not in ("html", "md"):
        raise where.error("report", f"format must be html or md, got {report['format']!r}")

    result = Study(path=path, name=name, seeds=list(seeds), device=study["device"], threads=threads,
                   data_roots=data_roots, runs=runs, dissect=dissect, attribute=attribute,
                   report=report, overrides=list(overrides),
                   claims=validate_claims(
                       data.get("claims"), list(runs), where.error,
                       attributed=(attribute["runs"] or list(runs)) if attribute["enabled"] else []))
    _check_components(where, result, check_data)
    return result


def _run(where: _Where, run: str, table: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    from cxrsem.outputs import safe_name

    label = f"runs.{run}"
    if not isinstance(table, dict):
        raise StudyError(f"{where.path}: runs.{run} must be a table ([runs.{run}])")
    if safe_name(run) != run or run.startswith("."):
        raise where.error(label, "a run name must be usable as a folder name (no '/', no leading '.')")
    where.keys(label, table, list(RUN_KEYS))
    resolved: dict[str, Any] = {}
    for key, default in RUN_KEYS.items():
        if key in OPTION_TABLES:
            base, own = defaults.get(key, {}), table.get(key, {})
            for value, source in ((base, "defaults"), (own, label)):
                if not isinstance(value, dict):
                    raise where.error(source, f"{key} must be a table of NAME = VALUE")
            resolved[key] = {**base, **own}
            continue
        value = table.get(key, defaults.get(key, default))
        resolved[key] = _check_type(where, label, key, value, default)
    for key in ("dataset", "loss", "arch", "init"):
        if not isinstance(resolved[key], str) or not resolved[key]:
            raise where.error(label, f"{key} must be a non-empty string")
    return resolved


def _check_inits(where: _Where, runs: dict[str, dict[str, Any]], path: Path) -> None:
    """``init`` of every run: random, imagenet (with weights), another run (no cycle) or a file."""
    for run, config in runs.items():
        init = config["init"]
        label = f"runs.{run}"
        if init == "imagenet":
            if not config["weights"]:
                raise where.error(label, "init = \"imagenet\" needs weights = \"FILE\" (local "
                                         "ImageNet weights; cxrsem never downloads them); without "
                                         "them use init = \"random\" (scratch stands in)")
            given = Path(config["weights"]).expanduser()
            config["weights"] = str(given if given.is_absolute() else path.parent / given)
            if not Path(config["weights"]).is_file():
                raise where.error(label, f"ImageNet weights file not found: {config['weights']}")
        elif config["weights"] is not None:
            raise where.error(label, "weights is only used with init = \"imagenet\"")
        if init in ("random", "imagenet") or init in runs:
            continue
        if init.endswith(".pt") or "/" in init or "\\" in init:
            given = Path(init).expanduser()
            config["init"] = str(given if given.is_absolute() else path.parent / given)
            if not Path(config["init"]).is_file():
                raise where.error(label, f"init checkpoint not found: {config['init']}")
            continue
        raise StudyError(f"{where.path}: [{label}] init: " + unknown_name_message(
            "run", init, list(runs)) + " (or random, imagenet, a checkpoint path)")
    for run in runs:  # follow each chain: a repeated run is a cycle
        chain = [run]
        while runs[chain[-1]]["init"] in runs:
            nxt = runs[chain[-1]]["init"]
            if nxt in chain:
                cycle = chain[chain.index(nxt):] + [nxt]
                raise where.error("runs", f"init references form a cycle: {' -> '.join(cycle)}")
            chain.append(nxt)
    for run, config in runs.items():
        parent = config["init"]
        if parent in runs and runs[parent]["arch"] != config["arch"]:
            raise where.error(f"runs.{run}", f"init = {parent!r} trains arch "
                                             f"{runs[parent]['arch']!r}, this run {config['arch']!r}")


def _section(where: _Where, data: Mapping[str, Any], name: str,
             keys: Mapping[str, Any]) -> dict[str, Any]:
    given = where.table(data, name)
    where.keys(name, given, list(keys))
    # deep copies: the resolved tables are completed in place, the defaults must stay as they are
    return {key: _check_type(where, name, key, copy.deepcopy(given.get(key, default)), default)
            for key, default in keys.items()}


def _run_list(where: _Where, table: str, value: Any, runs: Mapping[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(table, "runs must be a list of run names")
    for run in value:
        if run not in runs:
            raise StudyError(f"{where.path}: [{table}] runs: " + unknown_name_message(
                "run", run, list(runs)))


def _check_dissect(where: _Where, dissect: dict[str, Any], runs: Mapping[str, Any]) -> None:
    _run_list(where, "dissect", dissect["runs"], runs)
    concepts = dissect["concepts"]
    if isinstance(concepts, str):
        dissect["concepts"] = concepts = [concepts]
    if not concepts or not all(isinstance(c, str) and c for c in concepts):
        raise where.error("dissect", "concepts must name at least one concept set")
    for name, options in dissect["concept_options"].items():
        if name not in concepts:
            raise StudyError(f"{where.path}: [dissect] concept_options: " + unknown_name_message(
                "concept set of this dissection", name, concepts))
        if not isinstance(options, dict):
            raise where.error("dissect", f"concept_options.{name} must be a table")
    epochs = dissect["epochs"]
    if epochs != "all" and not (isinstance(epochs, list) and epochs and all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs)):
        raise where.error("dissect", f"epochs must be \"all\" or a list of epoch numbers, "
                                     f"got {epochs!r}")
    nulls = dissect["nulls"]
    if not isinstance(nulls, list) or not all(isinstance(n, str) for n in nulls):
        raise where.error("dissect", "nulls must be a list like [\"shuffle:100\", \"random-init:2\"]")
    if dissect["layer"] is not None and not isinstance(dissect["layer"], str):
        raise where.error("dissect", "layer must be a layer name")
    if dissect["shared"] not in ("flag", "exclude"):
        raise where.error("dissect", f"shared must be flag or exclude, got {dissect['shared']!r}")
    try:
        dissect_settings(dissect).validate()
    except CxrsemError as exc:
        raise where.error("dissect", str(exc)) from None


def dissect_settings(dissect: Mapping[str, Any]):
    """The :class:`~cxrsem.dissection.DissectSettings` of a validated ``[dissect]`` table."""
    from cxrsem.dissection import DissectSettings, null_settings

    fields = {k: dissect[k] for k in SETTINGS_KEYS if dissect[k] is not None}
    return DissectSettings(**fields, **null_settings(dissect["nulls"]))


def _check_attribute(where: _Where, attribute: dict[str, Any], dissect: Mapping[str, Any],
                     runs: Mapping[str, Any]) -> None:
    _run_list(where, "attribute", attribute["runs"], runs)
    checkpoint = attribute["checkpoint"]
    if not (checkpoint in ("best", "last") or (isinstance(checkpoint, int)
                                               and not isinstance(checkpoint, bool) and checkpoint >= 0)):
        raise where.error("attribute", f"checkpoint must be best, last or an epoch number, "
                                       f"got {checkpoint!r}")
    images = attribute["images"]
    if images != "most-severe" and not (isinstance(images, list) and images
                                        and all(isinstance(i, str) for i in images)):
        raise where.error("attribute", f"images must be \"most-severe\" or a list of image ids, "
                                       f"got {images!r}")
    if attribute["count"] < 1:
        raise where.error("attribute", "count must be at least 1")
    if attribute["split"] not in SPLITS:
        raise where.error("attribute", f"split must be one of {', '.join(SPLITS)}, got "
                                       f"{attribute['split']!r}")
    among = attribute["among"]
    if among is not None and not isinstance(among, str):
        raise where.error("attribute", "among must name a concept set")


def _check_components(where: _Where, study: Study, check_data: bool) -> None:
    """Every component and its options through the plugin manager, and every data root."""
    from cxrsem.api import resolve_component, resolve_root

    def checked(table: str, kind: str, name: str, options: Mapping[str, Any]):
        try:
            return resolve_component(kind, name, options)
        except CxrsemError as exc:
            raise where.error(table, str(exc)) from None

    def root(table: str, info: Any) -> None:
        if not check_data:
            return
        try:
            resolve_root(info.name, info.needs_root, study.data_roots)
        except CxrsemError as exc:
            raise where.error(table, f"{exc} (or [data_roots] {info.name} = \"PATH\" in the study)"
                              ) from None

    for run, config in study.runs.items():
        label = f"runs.{run}"
        info, config["dataset_options"] = checked(label, "dataset", config["dataset"],
                                                  config["dataset_options"])
        root(label, info)
        loss, config["loss_options"] = checked(label, "loss", config["loss"], config["loss_options"])
        arch, config["arch_options"] = checked(label, "architecture", config["arch"],
                                               config["arch_options"])
        if loss.tasks and getattr(info, "tasks", ()) and not set(loss.tasks) & set(info.tasks):
            raise where.error(label, f"loss {config['loss']} needs one of {', '.join(loss.tasks)}; "
                                     f"dataset {config['dataset']} provides {', '.join(info.tasks)}")
        if config["init"] == "imagenet" and arch.load_imagenet is None:
            raise where.error(label, f"architecture {config['arch']!r} has no ImageNet weights; "
                                     f"use init = \"random\"")
        try:
            train_config(config, out="study", seed=0, device="cpu").validate()
        except CxrsemError as exc:
            raise where.error(label, str(exc)) from None
    if study.dissected_runs():
        options = study.dissect["concept_options"]
        for name in study.dissect["concepts"]:
            info, options[name] = checked("dissect", "concept_set", name, options.get(name, {}))
            root("dissect", info)
    if study.attributed_runs():
        attribute = study.attribute
        checked("attribute", "attribution_method", attribute["method"],
                {} if attribute["steps"] is None else {"steps": attribute["steps"]})
        if attribute["among"] is not None:
            info, _ = checked("attribute", "concept_set", attribute["among"], {})
            root("attribute", info)


def train_config(run: Mapping[str, Any], *, out: str, seed: int, device: str,
                 init: str | None = None, data_roots: Mapping[str, str] | None = None):
    """The :class:`~cxrsem.training.TrainConfig` of a resolved run (``init``: the checkpoint an
    ``init = OTHER_RUN`` resolves to)."""
    from cxrsem.training import TrainConfig

    return TrainConfig(
        out=out, dataset=run["dataset"], loss=run["loss"], arch=run["arch"], epochs=run["epochs"],
        batch_size=run["batch_size"], lr=run["lr"], image_size=run["image_size"],
        patience=run["patience"], seed=seed, device=device, workers=run["workers"],
        save_every=1, init=init or run["init"], weights=run["weights"],
        dataset_options=dict(run["dataset_options"]), loss_options=dict(run["loss_options"]),
        arch_options=dict(run["arch_options"]), data_roots=dict(data_roots or {}),
        image_cache=run["image_cache"], shuffle=run["shuffle"])
