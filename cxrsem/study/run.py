"""Running a study: its steps in order, resumable, optionally in parallel worker processes.

A step is one library call (:func:`cxrsem.train`, :func:`cxrsem.dissect`,
:func:`cxrsem.attribute`, :func:`cxrsem.build_report`) writing into its own folder under ``OUT``
(:mod:`cxrsem.study.plan`).  Its **done-marker** ``FOLDER/study-step.json`` is written last and
holds the step's config, its hash, the tokens of the steps it read (``inputs``), a token of its
own, its wall time and its outputs by name.  So, on a rerun of the same command:

- a step whose marker matches (same config hash, same input tokens) is skipped;
- a step folder without a marker was killed (or failed): it is removed and the step redone from
  the start;
- a step whose inputs were redone since (their tokens differ) is redone;
- a step done with a different config is **refused** (one line naming the step and the first
  setting that differs) unless ``redo_changed``: a study never mixes results of two settings.

With ``jobs > 1`` the steps whose dependencies are done run in a pool of ``spawn``ed worker
processes, each with ``max(1, cores // jobs)`` torch threads.  A failing step does not stop the
others; the steps after it are not run; the study then raises :class:`StudyFailed` naming it.
``OUT/study.toml`` records the resolved study, ``OUT/steps.json`` every step's folder, status,
wall time and outputs (rebuilt from the markers, so it is right whoever wrote them last).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cxrsem.errors import CxrsemError
from cxrsem.study.plan import Step, plan, select
from cxrsem.study.spec import Study, StudyError, dissect_settings, train_config

MARKER = "study-step.json"
MARKER_SCHEMA = "cxrsem-study-step/1"
INDEX = "steps.json"
INDEX_SCHEMA = "cxrsem-study-steps/1"
RECORD = "study.toml"

Progress = Callable[..., None]


class StudyFailed(CxrsemError):
    """One or more steps failed; the finished ones stay done."""


@dataclass
class StepStatus:
    step: Step
    state: str                  # done | missing | partial | changed | stale
    marker: dict[str, Any] | None = None
    why: str = ""


@dataclass
class StudyResult:
    out: Path
    steps: list[Step]
    states: dict[str, str]               # before running: done, missing, partial, changed, stale
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --- markers and status ---------------------------------------------------------------------------------

def read_marker(out: Path, step_folder: str) -> dict[str, Any] | None:
    path = Path(out) / step_folder / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("schema") == MARKER_SCHEMA else None


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: was {old!r}, now {new!r}"


def step_status(out: Path, step: Step, tokens: Mapping[str, str | None]) -> StepStatus:
    folder = Path(out) / step.folder
    if not folder.exists():
        return StepStatus(step, "missing")
    marker = read_marker(out, step.folder)
    if marker is None or marker.get("step") != step.id:
        return StepStatus(step, "partial", why="its folder has no done-marker (killed or failed)")
    if marker.get("config_hash") != step.config_hash:
        # JSON round trip: the marker holds what json made of the config
        now = json.loads(json.dumps(step.config, default=str))
        return StepStatus(step, "changed", marker,
                          _first_difference(marker.get("config", {}), now))
    expected = {dep: tokens.get(dep) for dep in step.deps}
    if marker.get("inputs") != expected:
        return StepStatus(step, "stale", marker, "a step it reads was redone since")
    return StepStatus(step, "done", marker)


def statuses(out: Path, steps: list[Step]) -> dict[str, StepStatus]:
    """Every step's state, in plan order; a step after one that must run must run too."""
    found: dict[str, StepStatus] = {}
    tokens: dict[str, str | None] = {}
    for step in steps:
        status = step_status(out, step, tokens)
        if status.state == "done" and any(found[d].state != "done" for d in step.deps):
            status = StepStatus(step, "stale", status.marker, "a step it reads must be redone")
        found[step.id] = status
        tokens[step.id] = status.marker.get("token") if status.marker else None
    return found


# --- executing one step (in this process or a worker) ---------------------------------------------------

def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if os.environ.get("CXRSEM_DEBUG", "") in ("", "0"):
        # as the CLI shows them: one plain line per warning (skipped files, resized masks)
        warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"Warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def execute(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Run one step (``payload``: the step, ``out``, the resolved study, ``main``): remove what a
    killed attempt left, call the library, write the done-marker last.  Returns ``{"id", "ok",
    "seconds", "error"}``; never raises for a step's own failure."""
    step = Step(**payload["step"])
    out = Path(payload["out"])
    study = payload["study"]
    main = payload.get("main", True)
    folder = out / step.folder
    started = time.perf_counter()
    started_at = time.time()
    try:
        from cxrsem.outputs import FolderLock, write_json

        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(folder, what=f"study step {step.id} ({folder})")
        with lock if main else _nothing():
            inputs = {}
            for dep in step.deps:
                marker = read_marker(out, dep)
                if marker is None:
                    raise StudyError(f"step {step.id} needs step {dep}, which is not done")
                inputs[dep] = marker["token"]
            if main and (folder.exists() or folder.is_symlink()):
                if folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
                else:
                    folder.unlink()
            outputs = RUNNERS[step.kind](step, folder, out, study)
            seconds = time.perf_counter() - started
            if main:
                write_json(folder / MARKER, {
                    "schema": MARKER_SCHEMA, "step": step.id, "kind": step.kind, "run": step.run,
                    "seed": step.seed, "config": step.config, "config_hash": step.config_hash,
                    "inputs": inputs, "token": uuid.uuid4().hex, "seconds": round(seconds, 3),
                    "started_at": started_at, "finished_at": time.time(),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "outputs": outputs})
        return {"id": step.id, "ok": True, "seconds": seconds, "error": None}
    except KeyboardInterrupt:
        raise
    except CxrsemError as exc:
        message = " ".join(str(exc).split())
    except OSError as exc:
        from cxrsem.errors import os_error_message

        message = os_error_message(exc)
    except Exception as exc:  # a bug in a step: its traceback under CXRSEM_DEBUG
        message = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
        if os.environ.get("CXRSEM_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
    return {"id": step.id, "ok": False, "seconds": time.perf_counter() - started, "error": message}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _train_step(step: Step, folder: Path, out: Path, study: Mapping[str, Any]) -> dict[str, Any]:
    from cxrsem.training import train

    run = study["runs"][step.run]
    init = str(out / step.needs["init"] / "best.pt") if "init" in step.needs else None
    config = train_config(run, out=str(folder), seed=step.seed, device=study["study"]["device"],
                          init=init, data_roots=study["data_roots"])
    result = train(config)
    return {"run_dir": _rel(folder, out), "best": _rel(folder / "best.pt", out),
            "last": _rel(folder / "last.pt", out), "metrics": _rel(folder / "metrics.jsonl", out),
            "epochs": sorted(_rel(p, out) for p in folder.glob("epoch-*.pt")),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "best_metric": [result.best_metric[0], result.best_metric[1]],
            "stopped_early": result.stopped_early}


def _epoch_of(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _layer(checkpoint: Path, layer: str | None) -> str:
    from cxrsem.defaults import default_layer

    return layer or default_layer(checkpoint)


def _dissect_step(step: Step, folder: Path, out: Path, study: Mapping[str, Any]) -> dict[str, Any]:
    from cxrsem.checkpoint import load_checkpoint
    from cxrsem.dissection import dissect

    config = study["dissect"]
    run_dir = out / step.needs["train"]
    found = {_epoch_of(p): p for p in run_dir.glob("epoch-*.pt")}
    wanted = sorted(found) if config["epochs"] == "all" else sorted(
        e for e in set(config["epochs"]) if e in found)
    attributed = step.config.get("attributed")
    if attributed is not None and found:
        # the attribution's units are named by the dissection of the same weights
        if attributed in ("best", "last"):
            path = run_dir / f"{attributed}.pt"
            epoch = int(load_checkpoint(path)["train"]["epoch"]) if path.is_file() else None
        else:
            epoch = int(attributed)
        if epoch in found and epoch not in wanted:
            wanted = sorted({*wanted, epoch})
    if not wanted:
        raise StudyError(f"step {step.id}: none of the epochs {config['epochs']} was written by "
                         f"{run_dir} (it has {', '.join(map(str, sorted(found))) or 'none'})")
    models = [found[e] for e in wanted]
    layer = _layer(models[0], config["layer"])
    shared = shared_images(study["runs"][step.run], step.seed, config, study["data_roots"])
    concept_options = {k: dict(v) for k, v in config["concept_options"].items()}
    if config["shared"] == "exclude":
        for name, entry in shared.items():
            options = concept_options.setdefault(name, {})
            given = [i for i in str(options.get("exclude", "")).split(",") if i.strip()]
            options["exclude"] = ",".join(
                sorted({*given, *(i for ids in entry["ids"].values() for i in ids)}))
    results = dissect(
        [str(m) for m in models], [layer], list(config["concepts"]), out=folder,
        concept_options=concept_options,
        data_roots=study["data_roots"], settings=dissect_settings(config),
        device=study["study"]["device"], seed=config["seed"], figures=config["figures"],
        image_cache=config["image_cache"])
    if not config["keep_cache"]:
        shutil.rmtree(folder / ".cache", ignore_errors=True)
    threshold = dissect_settings(config).iou_threshold
    models_out: dict[str, Any] = {}
    for model, result in zip(models, results, strict=True):
        record = next(iter(sorted((folder / model.stem).rglob("dissection.json"))), None)
        layer_result = result.layers[0]
        models_out[model.stem] = {
            "checkpoint": _rel(model, out), "epoch": _epoch_of(model),
            "dissection": _rel(record, out) if record is not None else None,
            "detectors": sum(len(u) for u in layer_result.detectors(threshold).values())}
    if shared:
        from cxrsem.outputs import write_json

        write_json(folder / SHARED_FILE, shared)
    return {"layer": results[0].layers[0].layer, "models": models_out,
            "shared_images": {name: {k: v for k, v in entry.items() if k != "ids"}
                              for name, entry in shared.items()}}


SHARED_FILE = "shared-images.json"


def shared_images(run: Mapping[str, Any], seed: int, dissect: Mapping[str, Any],
                  data_roots: Mapping[str, str]) -> dict[str, Any]:
    """Concept-set images that the run's dataset also holds, per split, and what the study did
    with them (``dissect.shared``): **flagged** (dissected; recorded here) or **excluded** (left
    out through the concept set's ``exclude`` option).  Only where both expose their ids without
    decoding an image; ``{}`` when nothing is shared."""
    from cxrsem.api import build_dataset, create_concept_set, resolve_component
    from cxrsem.plugins import get

    policy = dissect.get("shared", "flag")

    info, options = resolve_component("dataset", run["dataset"], run["dataset_options"])
    by_split = {}
    for split in ("train", "val", "test"):
        dataset = build_dataset(info, options, split=split, image_size=run["image_size"],
                                seed=seed, data_roots=data_roots, cache_dir=run["image_cache"])
        ids = _listed_ids(dataset)
        if ids is None:
            return {}
        by_split[split] = set(ids)
    found: dict[str, Any] = {}
    for name in dissect["concepts"]:
        concept_set = create_concept_set(name, image_size=run["image_size"],
                                         mask_size=dissect["seg_size"], seed=dissect["seed"],
                                         data_roots=data_roots,
                                         **dissect["concept_options"].get(name, {}))
        ids = _listed_ids(concept_set)
        if ids is None:
            continue
        counts = {split: sorted(set(ids) & held) for split, held in by_split.items()}
        total = sum(len(v) for v in counts.values())
        if total and policy == "exclude" and "exclude" not in {
                o.name for o in get("concept_set", name).options}:
            raise StudyError(f"dissect.shared = \"exclude\": concept set {name} has no exclude "
                             f"option; use shared = \"flag\"")
        if total:
            found[name] = {"policy": "flagged, not excluded" if policy == "flag" else "excluded",
                           "concept_images": len(ids),
                           "shared": total, **{split: len(v) for split, v in counts.items()},
                           "ids": counts}
    return found


def _listed_ids(dataset: Any) -> list[str] | None:
    ids = getattr(dataset, "ids", None)
    if callable(ids):
        return [str(i) for i in ids(list(range(len(dataset))))]
    if isinstance(ids, list | tuple):
        return [str(i) for i in ids]
    return None


def _checkpoint_of(run_dir: Path, which: Any) -> Path:
    path = run_dir / (f"{which}.pt" if which in ("best", "last") else f"epoch-{int(which):03d}.pt")
    if not path.is_file():
        raise StudyError(f"attribute checkpoint {which!r}: {path} does not exist")
    return path


def select_images(run: Mapping[str, Any], seed: int, task: str, attribute: Mapping[str, Any],
                  data_roots: Mapping[str, str]):
    """``(images [N, 1, S, S], selection rows)``: the ``count`` most severe images of the run's
    ``split`` (severity: the sum of the image's targets for the model's task -- the global score,
    the zone scores' sum, the number of positive labels), ties in dataset order; or the images
    whose id is listed in ``images``.  ``among``: only images whose id is also in that concept
    set (e.g. the brixia-cohen images that covid-seg annotates)."""
    import torch

    from cxrsem.api import build_dataset, create_concept_set, resolve_component

    info, options = resolve_component("dataset", run["dataset"], run["dataset_options"])
    splits = ("train", "val", "test") if attribute["split"] == "all" else (attribute["split"],)
    allowed = None
    if attribute["among"] is not None:
        concept_set = create_concept_set(attribute["among"], image_size=run["image_size"],
                                         mask_size=16, data_roots=data_roots)
        allowed = set(_ids(concept_set))
    rows: list[tuple[float, int, str, Any, int]] = []  # (-severity, order, id, dataset, index)
    order = 0
    for split in splits:
        dataset = build_dataset(info, options, split=split, image_size=run["image_size"],
                                seed=seed, data_roots=data_roots, cache_dir=run["image_cache"])
        ids = _ids(dataset)
        targets = (dataset.targets(task) if hasattr(dataset, "targets")
                   else torch.stack([dataset[i]["targets"][task] for i in range(len(dataset))]))
        severity = torch.nan_to_num(targets.float().reshape(len(ids), -1)).sum(1).tolist()
        for index, (image_id, value) in enumerate(zip(ids, severity, strict=True)):
            if allowed is None or image_id in allowed:
                rows.append((-float(value), order, image_id, (split, dataset), index))
                order += 1
    if not rows:
        among = f" that {attribute['among']} also holds" if allowed is not None else ""
        raise StudyError(f"no {attribute['split']} images of {run['dataset']}{among} to attribute")
    if attribute["images"] == "most-severe":
        chosen = sorted(rows)[:attribute["count"]]
    else:
        by_id = {r[2]: r for r in rows}
        from cxrsem.plugins import closest_name

        chosen = []
        for image_id in attribute["images"]:
            if image_id not in by_id:
                hint = closest_name(image_id, list(by_id))
                raise StudyError(f"[attribute] images: no image {image_id!r} in the "
                                 f"{attribute['split']} split of {run['dataset']}"
                                 + (f"; did you mean {hint!r}?" if hint else ""))
            chosen.append(by_id[image_id])
    images = torch.stack([r[3][1][r[4]]["image"] for r in chosen])
    selection = [{"name": f"image-{n:03d}", "id": r[2], "split": r[3][0], "index": r[4],
                  "severity": -r[0]} for n, r in enumerate(chosen)]
    return images, selection


def _ids(dataset: Any) -> list[str]:
    ids = _listed_ids(dataset)
    return ids if ids is not None else [str(dataset[i]["id"]) for i in range(len(dataset))]


def _attribute_step(step: Step, folder: Path, out: Path, study: Mapping[str, Any]) -> dict[str, Any]:
    from cxrsem.attribution import attribute
    from cxrsem.checkpoint import load_checkpoint
    from cxrsem.outputs import write_json

    config = study["attribute"]
    run = study["runs"][step.run]
    checkpoint = _checkpoint_of(out / step.needs["train"], config["checkpoint"])
    task = load_checkpoint(checkpoint)["task"]["kind"]
    layer = _layer(checkpoint, study["dissect"]["layer"])
    images, selection = select_images(run, step.seed, task, config, study["data_roots"])
    dissection = out / step.needs["dissect"] if "dissect" in step.needs else None
    attribute(images, str(checkpoint), layer, dissection=dissection, target=config["target"],
              top_k=config["top_k"], method=config["method"], steps=config["steps"],
              batch_size=config["batch_size"], device=study["study"]["device"], out=folder,
              render=config["render"])
    write_json(folder / "selection.json", {"checkpoint": _rel(checkpoint, out), "task": task,
                                           "images": selection})
    return {"checkpoint": _rel(checkpoint, out), "selection": _rel(folder / "selection.json", out),
            "summary": _rel(folder / "summary.csv", out),
            "images": {row["name"]: {"id": row["id"], "json": _rel(folder / f"{row['name']}.json", out)}
                       for row in selection}}


def _claims_step(step: Step, folder: Path, out: Path, study: Mapping[str, Any]) -> dict[str, Any]:
    from cxrsem.study.claims import StudyResults, evaluate_claims, write_claims

    rows = []
    for dep in step.deps:  # train/NAME/seed-S, dissect/..., attribute/...
        kind, run, seed = dep.split("/")
        marker = read_marker(out, dep) or {}
        rows.append({"kind": kind, "run": run, "seed": int(seed.removeprefix("seed-")),
                     "status": "done", "outputs": marker.get("outputs") or {}})
    results = evaluate_claims(StudyResults(out, rows), step.config["claims"],
                              resamples=step.config["resamples"], seed=step.config["seed"])
    json_path, md_path = write_claims(folder, results, resamples=step.config["resamples"])
    return {"claims": _rel(json_path, out), "table": _rel(md_path, out),
            "verdicts": {r.spec.id: r.verdict for r in results}}


def _report_step(step: Step, folder: Path, out: Path, study: Mapping[str, Any]) -> dict[str, Any]:
    from cxrsem.reporting import build_report

    config = study["report"]
    dissections = [out / d for d in step.deps if d.startswith("dissect/")]
    attributions = [out / d for d in step.deps if d.startswith("attribute/")]
    labels = {str(out / d): d.split("/", 1)[1].replace("/seed-", " seed ") for d in step.deps
              if d.startswith("dissect/")}
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"report.{config['format']}"
    kwargs = {} if config["iou_threshold"] is None else {"iou_threshold": config["iou_threshold"]}
    if "claims" in step.deps:  # the report opens with the claims table
        kwargs["claims"] = out / "claims" / "claims.json"
    result = build_report(dissections, attributions=attributions, labels=labels, out=target,
                          fmt=config["format"], **kwargs)
    return {"report": _rel(target, out), "warnings": list(result.warnings)}


RUNNERS: dict[str, Callable[[Step, Path, Path, Mapping[str, Any]], dict[str, Any]]] = {
    "train": _train_step, "dissect": _dissect_step, "attribute": _attribute_step,
    "claims": _claims_step, "report": _report_step,
}


# --- the study ----------------------------------------------------------------------------------------------

def write_index(out: Path, study: Study, steps: list[Step], result: StudyResult | None = None) -> Path:
    """``OUT/steps.json``: every step's folder, status, wall time and outputs, from the markers."""
    from cxrsem.outputs import write_json

    rows = []
    tokens: dict[str, str | None] = {}
    for step in steps:
        status = step_status(out, step, tokens)
        tokens[step.id] = status.marker.get("token") if status.marker else None
        state = "done" if status.state == "done" else "pending"
        error = None
        if result is not None and step.id in result.failed:
            state, error = "failed", result.failed[step.id]
        elif result is not None and step.id in result.blocked:
            state = "blocked"
        marker = status.marker if status.state == "done" else None
        rows.append({"id": step.id, "kind": step.kind, "run": step.run, "seed": step.seed,
                     "folder": step.folder, "deps": list(step.deps), "status": state,
                     "error": error, "seconds": marker.get("seconds") if marker else None,
                     "finished": marker.get("finished") if marker else None,
                     "outputs": marker.get("outputs") if marker else None})
    return write_json(Path(out) / INDEX, {"schema": INDEX_SCHEMA, "study": study.name,
                                          "file": str(study.path), "steps": rows})


def run_study(study: Study, out: str | Path, *, jobs: int = 1, only: list[str] | None = None,
              redo_changed: bool = False, dry_run: bool = False,
              progress: Progress | None = None) -> StudyResult:
    """Run the steps of ``study`` into ``out`` (see the module docstring); ``only``: step-id
    patterns (``train/*``); ``dry_run``: only say what would run."""
    from cxrsem.engine import distributed
    from cxrsem.outputs import write_config

    emit = progress or (lambda event, **info: None)
    if jobs < 1:
        raise StudyError(f"--jobs must be at least 1, got {jobs}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file")
    steps = plan(study)
    chosen = select(steps, only) if only else steps
    found = statuses(out, steps)
    result = StudyResult(out, steps, {s.id: found[s.id].state for s in steps})
    todo = [s for s in chosen if found[s.id].state != "done"]
    for step in todo:
        status = found[step.id]
        if status.state == "changed" and not redo_changed:
            raise StudyError(f"step {step.id} in {out} was done with other settings ({status.why}); "
                             f"rerun with --redo-changed to redo it and the steps after it, or use "
                             f"another --out")
        for dep in step.deps:
            if found[dep].state != "done" and dep not in {s.id for s in todo}:
                raise StudyError(f"step {step.id} needs step {dep}, which is not done; run it too "
                                 f"(--step {dep}) or run the whole study")
    torchrun = distributed.requested()
    if torchrun and (jobs != 1 or len(todo) > 1):
        raise StudyError("under torchrun a study runs one step per command: give --step ID (see "
                         "`cxrsem study show`) and --jobs 1")
    if torchrun and todo and found[todo[0].id].state == "partial":
        raise StudyError(f"step {todo[0].id} was killed; remove {out / todo[0].folder} before "
                         f"rerunning it under torchrun (or rerun it without torchrun)")
    if dry_run:
        return result
    main = distributed.launched_rank() == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, study.as_dict(), name=RECORD)
    total = len(chosen)
    count = 0
    for step in chosen:
        if found[step.id].state == "done":
            count += 1
            result.skipped.append(step.id)
            emit("skip", step=step.id, index=count, total=total)

    def payload(step: Step) -> dict[str, Any]:
        return {"step": asdict(step), "out": str(out), "study": study.as_dict(), "main": main}

    def finished(step: Step, answer: Mapping[str, Any]) -> None:
        nonlocal count
        count += 1
        result.seconds[step.id] = answer["seconds"]
        if answer["ok"]:
            result.ran.append(step.id)
            emit("finish", step=step.id, index=count, total=total, seconds=answer["seconds"])
        else:
            result.failed[step.id] = answer["error"]
            emit("fail", step=step.id, index=count, total=total, seconds=answer["seconds"],
                 error=answer["error"])

    def blocked(step: Step) -> bool:
        bad = [d for d in step.deps if d in result.failed or d in result.blocked]
        if not bad:
            return False
        nonlocal count
        count += 1
        result.blocked.append(step.id)
        emit("blocked", step=step.id, index=count, total=total, by=bad[0])
        return True

    try:
        if jobs == 1:
            for step in todo:
                if blocked(step):
                    continue
                emit("start", step=step.id, index=count, total=total)
                with _threads(study.threads):
                    answer = execute(payload(step))
                finished(step, answer)
        else:
            threads = study.threads or max(1, (os.cpu_count() or 1) // jobs)
            _run_pool(todo, jobs, threads, payload, finished, blocked, emit, lambda: count, total)
    finally:
        if main:
            write_index(out, study, steps, result)
    if result.failed:
        first, message = next(iter(result.failed.items()))
        more = (f" (and {len(result.failed) - 1} more step(s) failed)" if len(result.failed) > 1
                else "")
        after = f"; {len(result.blocked)} step(s) after it not run" if result.blocked else ""
        raise StudyFailed(f"step {first} failed: {message}{more}{after}; the finished steps are "
                          f"kept: rerun the same command to retry ({out / INDEX})")
    return result


@contextmanager
def _threads(threads: int) -> Iterator[None]:
    """``threads`` torch threads inside the block (0: leave them), restored after it."""
    import torch

    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_pool(todo: list[Step], jobs: int, threads: int, payload, finished, blocked, emit, count,
              total) -> None:
    pending = list(todo)
    done_ids: set[str] = set()
    waiting_on = {s.id for s in todo}
    running: dict[Any, Step] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        try:
            while pending or running:
                for step in list(pending):
                    if blocked(step):
                        pending.remove(step)
                ready = [s for s in pending
                         if all(d in done_ids or d not in waiting_on for d in s.deps)]
                for step in ready[:max(0, jobs - len(running))]:
                    pending.remove(step)
                    emit("start", step=step.id, index=count(), total=total)
                    running[pool.submit(execute, payload(step))] = step
                if not running:
                    break
                complete, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in complete:
                    step = running.pop(future)
                    try:
                        answer = future.result()
                    except Exception as exc:  # the worker died (killed, out of memory)
                        answer = {"id": step.id, "ok": False, "seconds": 0.0,
                                  "error": f"its worker process died ({type(exc).__name__}: {exc})"}
                    finished(step, answer)
                    if answer["ok"]:
                        done_ids.add(step.id)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
