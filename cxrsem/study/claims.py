"""The paper's claims as checks over a study's results (docs/study.md, "Claims").

A study file lists its claims (``[[claims]]``); each is a comparison the paper makes, evaluated
on the study's dissections and attributions with the study's seeds:

``more``         quantity(a) - quantity(b) > 0, per seed at each run's ``epoch`` (default ``best``:
                 the epoch of ``best.pt``);
``more-gain``    (quantity(a) - quantity(b)) - (quantity(a2) - quantity(b2)) > 0: an effect larger
                 for one pair of runs than for another (pretraining helps global-score models more);
``over-epochs``  quantity(last epoch) - quantity(epoch 0), averaged over ``runs``, rises
                 (``direction = "rise"``) or falls (``"fall"``);
``top-units``    the share of attributed images whose top *labelled* unit detects one of
                 ``concepts``, minus the share a unit drawn at random among the layer's detectors
                 would give (the chance baseline).

Quantities of a dissection (at its IoU threshold): ``detectors`` (detectors of ``concepts``, all
when empty; ``significant``: only those that beat the shuffled-annotation null after
Benjamini-Hochberg, flags fixed from the whole set; a bare concept name also counts the concept
as each concept set names it when two sets share it, ``phantom/Mass`` and ``phantom-bbox/Mass``),
``unique`` (how many of ``concepts`` have a detector) and ``share`` (the fraction of the layer's
detectors that detect one of ``concepts``).

**Uncertainty.** Every run of a study is dissected on the same images, so one bootstrap draw of
those images (``resamples`` draws, by patient when the set knows patients) is applied to every
run, seed and epoch at once (:mod:`cxrsem.statistics.bootstrap`; no model pass): a claim's
statistic is the mean over seeds of the per-seed difference, its interval the percentile interval
of that mean over the draws, its p-value the two-sided bootstrap p of "no difference".  This is the
uncertainty from *which images* were dissected; the spread *between seeds* (training randomness)
is shown per seed beside it, and a claim must hold in every seed to be called holding.
``top-units`` resamples the attributed images instead.

**Verdict** (``alpha`` = 0.05): ``holds`` -- the mean difference lies in the claimed direction with
p < alpha and every seed's difference does too; ``does not hold`` -- the mean difference lies in
the opposite direction with p < alpha; ``inconclusive`` -- anything else (no clear difference, or
seeds that disagree).  A null result is reported as it is; nothing is tuned to make a claim pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrsem.errors import DataError
from cxrsem.statistics.bootstrap import (
    estimate_and_resample,
    interval,
    p_value,
    resample_weights,
    same_images,
)
from cxrsem.statistics.imagestats import ImageStats

KINDS = ("more", "more-gain", "over-epochs", "top-units")
QUANTITIES = ("detectors", "significant", "unique", "share")
VERDICTS = ("holds", "does not hold", "inconclusive")
ALPHA = 0.05
CLAIM_KEYS: dict[str, Any] = {
    "id": None, "section": "", "claim": "", "paper": "", "kind": None, "quantity": "detectors",
    "concepts": [], "a": None, "b": None, "a2": None, "b2": None, "runs": [], "epoch": "best",
    "direction": "rise",
}


@dataclass
class ClaimSpec:
    """One ``[[claims]]`` entry of a study file (names and numbers only)."""

    id: str
    kind: str
    claim: str = ""
    section: str = ""
    paper: str = ""
    quantity: str = "detectors"
    concepts: list[str] = field(default_factory=list)
    a: str | None = None
    b: str | None = None
    a2: str | None = None
    b2: str | None = None
    runs: list[str] = field(default_factory=list)
    epoch: str | int = "best"
    direction: str = "rise"

    def run_names(self) -> list[str]:
        return [r for r in (self.a, self.b, self.a2, self.b2, *self.runs) if r]

    @property
    def sign(self) -> int:
        return -1 if self.kind == "over-epochs" and self.direction == "fall" else 1


@dataclass
class ClaimResult:
    """A claim measured: the mean over seeds of its statistic with an interval and a p-value, each
    seed's value, what chance gives, and the verdict."""

    spec: ClaimSpec
    value: float
    low: float
    high: float
    p_value: float
    per_seed: dict[int, float]
    measured: str      # the compared values in words, e.g. "weighted-bce 9.3 vs bce 6.0"
    chance: str        # the chance baseline in words ("" where none applies)
    verdict: str
    why: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_seed"] = {str(k): v for k, v in self.per_seed.items()}
        return data


def validate_claims(entries: Any, runs: Sequence[str], error,
                    attributed: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The ``[[claims]]`` entries of a study file, checked and with defaults filled in;
    ``error(table, message)`` makes the one-line :class:`StudyError`; ``attributed``: the runs
    the study attributes (None: all), which ``top-units`` claims may name."""
    from cxrsem.plugins import unknown_name_message

    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise error("claims", "claims must be an array of tables ([[claims]])")
    out, seen = [], set()
    for number, entry in enumerate(entries, 1):
        label = f"claims #{number}"
        for key in entry:
            if key not in CLAIM_KEYS:
                raise error(label, unknown_name_message("key", key, list(CLAIM_KEYS)))
        claim = {**CLAIM_KEYS, **entry}
        if not isinstance(claim["id"], str) or not claim["id"] or claim["id"] in seen:
            raise error(label, f"id must be a unique non-empty string, got {claim['id']!r}")
        seen.add(claim["id"])
        label = f"claims {claim['id']}"
        if claim["kind"] not in KINDS:
            raise error(label, unknown_name_message("kind", str(claim["kind"]), list(KINDS)))
        if claim["quantity"] not in QUANTITIES:
            raise error(label, unknown_name_message("quantity", str(claim["quantity"]),
                                                    list(QUANTITIES)))
        needed = {"more": ("a", "b"), "more-gain": ("a", "b", "a2", "b2"),
                  "over-epochs": ("runs",), "top-units": ("runs", "concepts")}[claim["kind"]]
        for key in needed:
            if not claim[key]:
                raise error(label, f"a {claim['kind']} claim needs {key}")
        if not isinstance(claim["runs"], list) or not isinstance(claim["concepts"], list) \
                or not all(isinstance(c, str) for c in claim["concepts"]):
            raise error(label, "runs and concepts must be lists of names")
        for run in [claim[k] for k in ("a", "b", "a2", "b2") if claim[k]] + claim["runs"]:
            if run not in runs:
                raise error(label, unknown_name_message("run", str(run), list(runs)))
        if claim["kind"] == "top-units" and attributed is not None:
            missing = [r for r in claim["runs"] if r not in attributed]
            if missing:
                raise error(label, f"run {missing[0]} is not attributed ([attribute] runs or "
                                   f"enabled); a top-units claim reads its attributions")
        if claim["direction"] not in ("rise", "fall"):
            raise error(label, f"direction must be rise or fall, got {claim['direction']!r}")
        epoch = claim["epoch"]
        if not (epoch in ("best", "last") or (isinstance(epoch, int) and not isinstance(epoch, bool)
                                              and epoch >= 0)):
            raise error(label, f"epoch must be best, last or an epoch number, got {epoch!r}")
        out.append(claim)
    return out


# --- reading a study's results --------------------------------------------------------------------

@dataclass
class _Layer:
    """One dissected checkpoint of a study: where, its per-image statistics and its record."""

    folder: Path
    record: dict[str, Any]
    stats: ImageStats | None = None

    @property
    def threshold(self) -> float:
        return float(self.record["settings"]["iou_threshold"])

    def load_stats(self) -> ImageStats:
        if self.stats is None:
            self.stats = ImageStats.load(self.folder / "imagestats.npz")
        return self.stats


class StudyResults:
    """What ``OUT/steps.json`` says a study produced: per (run, seed) the best epoch and every
    dissected epoch, and the attribution folders."""

    def __init__(self, out: str | Path, steps: Sequence[Mapping[str, Any]]) -> None:
        """``steps``: rows of ``steps.json`` (``kind``, ``run``, ``seed``, ``status``, ``outputs``)."""
        self.out = Path(out)
        self.best: dict[tuple[str, int], int] = {}
        self.layers: dict[tuple[str, int, int], _Layer] = {}
        self.attributions: dict[tuple[str, int], dict[str, Any]] = {}
        for step in steps:
            outputs = step.get("outputs") or {}
            if step.get("status") != "done":
                continue
            key = (step["run"], int(step["seed"])) if step.get("run") else None
            if step["kind"] == "train" and key:
                self.best[key] = int(outputs["best_epoch"])
            elif step["kind"] == "dissect" and key:
                for model in outputs.get("models", {}).values():
                    if model.get("dissection"):
                        path = self.out / model["dissection"]
                        record = json.loads(path.read_text(encoding="utf-8"))
                        self.layers[(*key, int(model["epoch"]))] = _Layer(path.parent, record)
            elif step["kind"] == "attribute" and key:
                self.attributions[key] = outputs
        self.seeds = sorted({seed for _, seed in self.best})

    @classmethod
    def from_index(cls, out: str | Path) -> StudyResults:
        """What ``OUT/steps.json`` records."""
        index = Path(out) / "steps.json"
        try:
            steps = json.loads(index.read_text(encoding="utf-8"))["steps"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{index}: cannot read the study's step index ({exc})") from None
        return cls(out, steps)

    def epochs(self, run: str, seed: int) -> list[int]:
        return sorted(e for r, s, e in self.layers if (r, s) == (run, seed))

    def layer(self, run: str, seed: int, epoch: str | int) -> _Layer:
        epochs = self.epochs(run, seed)
        if not epochs:
            raise DataError(f"no dissection of run {run!r} seed {seed} in {self.out} (is the study "
                            f"finished? cxrsem study show)")
        if epoch == "best":
            epoch = self.best.get((run, seed), epochs[-1])
        elif epoch == "last":
            epoch = epochs[-1]
        if (run, seed, int(epoch)) not in self.layers:
            raise DataError(f"run {run!r} seed {seed}: epoch {epoch} was not dissected "
                            f"(dissected: {', '.join(map(str, epochs))})")
        return self.layers[(run, seed, int(epoch))]


# --- quantities under the bootstrap ---------------------------------------------------------------

class _Resampler:
    """One draw of the dissection images shared by every layer: each layer's counts per concept,
    ``[1 + resamples, C]`` (row 0 the point estimate), cached.  ``significant`` counts only the
    units that beat the shuffled-annotation null in the whole set (``dissect.nulls``; their flags
    stay fixed while the images are resampled)."""

    def __init__(self, resamples: int, seed: int) -> None:
        self.resamples, self.seed = resamples, seed
        self.weights: np.ndarray | None = None
        self.reference: ImageStats | None = None
        self.cache: dict[tuple[int, bool], tuple[list[str], np.ndarray]] = {}
        self.units: dict[int, tuple[list[str], np.ndarray, np.ndarray]] = {}

    def counts(self, layer: _Layer, significant: bool = False) -> tuple[list[str], np.ndarray]:
        key = (id(layer), significant)
        if key not in self.cache:
            concepts, detector, best = self._resampled(layer)
            if significant:
                flags = [u.get("significant") for u in layer.record["units"]]
                if any(f is None for f in flags):
                    raise DataError(f"{layer.folder}: the quantity 'significant' needs the "
                                    f"shuffled-annotation null (dissect.nulls = [\"shuffle\"])")
                detector = detector & np.asarray(flags, dtype=bool)[None, :]
            counts = np.zeros((detector.shape[0], len(concepts)), dtype=np.int64)
            rows, units = np.nonzero(detector)
            np.add.at(counts, (rows, best[rows, units]), 1)
            self.cache[key] = (concepts, counts)
        return self.cache[key]

    def _resampled(self, layer: _Layer) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The layer's detectors and best concepts ``[1 + resamples, K]`` under the shared draws:
        one resampling per layer, whichever quantities are counted from it."""
        key = id(layer)
        if key not in self.units:
            stats = layer.load_stats()
            if self.reference is None:
                self.reference = stats
                self.weights = resample_weights(stats.groups, self.resamples, self.seed)
            problem = same_images(self.reference, stats)
            if problem is not None:
                raise DataError(f"claims need every run dissected on the same images: "
                                f"{layer.folder}: {problem}")
            point, draws = estimate_and_resample(stats, self.weights, layer.threshold)
            self.units[key] = (list(stats.concepts), np.vstack([point.detector, draws.detector]),
                               np.vstack([point.best_concept, draws.best_concept]))
        return self.units[key]


def _named(concept: str | None, wanted: Sequence[str]) -> bool:
    """Whether ``concept`` is one of ``wanted``; a bare name also matches the concept as each
    concept set names it when several sets share a name (``phantom-bbox/Consolidation``)."""
    return concept is not None and any(concept == w or concept.endswith("/" + w) for w in wanted)


def _quantity(spec: ClaimSpec, concepts: list[str], counts: np.ndarray) -> np.ndarray:
    chosen = [j for j, c in enumerate(concepts) if _named(c, spec.concepts)] if spec.concepts \
        else list(range(len(concepts)))
    if spec.concepts and not chosen:
        raise DataError(f"claim {spec.id}: none of {', '.join(spec.concepts)} is a dissected "
                        f"concept ({', '.join(concepts)})")
    part = counts[:, chosen].astype(np.float64)
    if spec.quantity == "unique":
        return (part > 0).sum(axis=1).astype(np.float64)
    if spec.quantity == "share":
        total = counts.sum(axis=1).astype(np.float64)
        return np.divide(part.sum(axis=1), total, out=np.zeros_like(total), where=total > 0)
    return part.sum(axis=1)


def _null_detectors(layer: _Layer, spec: ClaimSpec) -> float | None:
    """The shuffled-annotation null's mean detector count of the claim's concepts (None without
    ``--null shuffle``)."""
    shuffle = (layer.record.get("nulls") or {}).get("shuffle")
    if not shuffle:
        return None
    if not spec.concepts:
        return float(shuffle["num_detectors"]["mean"])
    per = shuffle.get("detectors", {})
    return float(sum(v.get("mean", 0.0) for c, v in per.items() if _named(c, spec.concepts)))


# --- the claims -----------------------------------------------------------------------------------

def evaluate_claims(results: str | Path | StudyResults,
                    claims: Sequence[ClaimSpec | Mapping[str, Any]], *,
                    resamples: int = 1000, seed: int = 0, confidence: float = 0.95
                    ) -> list[ClaimResult]:
    """Evaluate ``claims`` on a study's results (a study folder with ``steps.json``, or
    :class:`StudyResults`; see the module docstring)."""
    if not isinstance(results, StudyResults):
        results = StudyResults.from_index(results)
    out = results.out
    if not results.seeds:
        raise DataError(f"{out}: the study has no finished training step")
    sampler = _Resampler(resamples, seed)
    specs = [c if isinstance(c, ClaimSpec) else ClaimSpec(**c) for c in claims]
    return [_evaluate(spec, results, sampler, confidence, resamples, seed) for spec in specs]


def _evaluate(spec: ClaimSpec, results: StudyResults, sampler: _Resampler, confidence: float,
              resamples: int, seed: int) -> ClaimResult:
    if spec.kind == "top-units":
        return _top_units(spec, results, confidence, resamples, seed)
    per_seed: dict[int, np.ndarray] = {}
    shown: dict[str, list[float]] = {}
    chance: dict[str, list[float]] = {}

    def q(run: str, s: int, epoch: str | int, label: str | None = None) -> np.ndarray:
        layer = results.layer(run, s, epoch)
        values = _quantity(spec, *sampler.counts(layer, spec.quantity == "significant"))
        name = label or run
        shown.setdefault(name, []).append(float(values[0]))
        null = _null_detectors(layer, spec) if spec.quantity == "detectors" else None
        if null is not None:
            chance.setdefault(name, []).append(null)
        return values

    for s in results.seeds:
        if spec.kind == "more":
            d = q(spec.a, s, spec.epoch) - q(spec.b, s, spec.epoch)
        elif spec.kind == "more-gain":
            d = (q(spec.a, s, spec.epoch) - q(spec.b, s, spec.epoch)) \
                - (q(spec.a2, s, spec.epoch) - q(spec.b2, s, spec.epoch))
        else:  # over-epochs
            d = np.mean([q(r, s, "last", f"{r} last") - q(r, s, 0, f"{r} epoch 0")
                         for r in spec.runs], axis=0)
        per_seed[s] = d
    mean = np.mean(list(per_seed.values()), axis=0)
    measured = ", ".join(f"{name} {np.mean(v):.3g}" for name, v in shown.items())
    chance_text = ", ".join(f"{name} {np.mean(v):.3g}" for name, v in chance.items())
    if chance_text:
        chance_text = f"shuffled annotations: {chance_text}"
    if spec.kind != "over-epochs" and spec.quantity in ("detectors", "significant"):
        initial = _initial_counts(spec, results, sampler)
        if initial:
            chance_text = "; ".join(filter(None, [f"random init (epoch 0): {initial}", chance_text]))
    return _verdict(spec, mean, {s: float(d[0]) for s, d in per_seed.items()}, measured,
                    chance_text, confidence)


def _initial_counts(spec: ClaimSpec, results: StudyResults, sampler: _Resampler) -> str:
    """The claim's quantity for the compared runs' initial models (epoch 0): a random network's,
    or the pretrained start's for a run initialised from another."""
    parts = []
    for run in dict.fromkeys(r for r in (spec.a, spec.b, spec.a2, spec.b2) if r):
        values = [float(_quantity(spec, *sampler.counts(results.layer(run, s, 0),
                                                        spec.quantity == "significant"))[0])
                  for s in results.seeds if 0 in results.epochs(run, s)]
        if values:
            parts.append(f"{run} {np.mean(values):.3g}")
    return ", ".join(parts)


def _verdict(spec: ClaimSpec, samples: np.ndarray, per_seed: dict[int, float], measured: str,
             chance: str, confidence: float) -> ClaimResult:
    value = float(samples[0])
    low, high = (float(x) for x in interval(samples[1:], confidence))
    p = p_value(samples[1:])
    shown = _p_text(p, len(samples) - 1)
    sign = spec.sign
    agree = sum(1 for d in per_seed.values() if d * sign > 0)
    if value * sign > 0 and p < ALPHA and agree == len(per_seed):
        verdict, why = "holds", f"{shown}, all {len(per_seed)} seeds agree"
    elif value * sign < 0 and p < ALPHA:
        verdict, why = "does not hold", f"the opposite direction, {shown}"
    elif p < ALPHA:
        verdict, why = "inconclusive", f"{shown} but only {agree} of {len(per_seed)} seeds agree"
    else:
        verdict, why = "inconclusive", f"no clear difference ({shown})"
    return ClaimResult(spec, value, low, high, p, per_seed, measured, chance, verdict, why)


def _top_units(spec: ClaimSpec, results: StudyResults, confidence: float, resamples: int,
               seed: int) -> ClaimResult:
    """Per attributed image: is its top labelled unit a detector of ``concepts``? minus the share
    of the layer's detectors that detect them (a random detector's chance)."""
    hits, chances, seeds = [], [], []
    for run in spec.runs:
        for s in results.seeds:
            outputs = results.attributions.get((run, s))
            if outputs is None:
                raise DataError(f"claim {spec.id}: run {run!r} seed {s} has no attribution step")
            # the dissection of the attributed weights (the study attributes `spec.epoch`)
            labels = [u["concept"] for u in results.layer(run, s, spec.epoch).record["units"]
                      if u["detector"]]
            chance = sum(_named(c, spec.concepts) for c in labels) / len(labels) if labels else 0.0
            for image in outputs.get("images", {}).values():
                data = json.loads((results.out / image["json"]).read_text(encoding="utf-8"))
                if not data.get("dissection"):
                    raise DataError(f"claim {spec.id}: {image['json']} was attributed without a "
                                    f"dissection (its units have no concepts)")
                top = data.get("top_labelled") or {}
                hits.append(1.0 if _named(top.get("concept"), spec.concepts) else 0.0)
                chances.append(chance)
                seeds.append(s)
    if not hits:
        raise DataError(f"claim {spec.id}: no attributed images")
    hits_a, chance_a, seeds_a = np.array(hits), np.array(chances), np.array(seeds)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(hits_a), size=(resamples, len(hits_a)))
    diff = hits_a - chance_a
    samples = np.concatenate([[diff.mean()], diff[draws].mean(axis=1)])
    per_seed = {int(s): float(diff[seeds_a == s].mean()) for s in np.unique(seeds_a)}
    measured = (f"{hits_a.mean():.0%} of {len(hits_a)} images' top labelled unit detects "
                f"{' / '.join(spec.concepts)}")
    chance = f"a random detector of the layer: {chance_a.mean():.0%}"
    return _verdict(spec, samples, per_seed, measured, chance, confidence)


# --- writing --------------------------------------------------------------------------------------

CLAIM_COLUMNS = ("claim (paper section)", "paper's figure", "measured (mean over seeds)",
                 "difference [interval], p", "per seed", "chance baseline", "verdict")


def _p_text(p: float, resamples: int | None) -> str:
    """A bootstrap p-value; 0 means every draw fell on one side: p < 2 / resamples."""
    if p == 0 and resamples:
        return f"p < {2 / resamples:.2g}"
    return f"p = {p:.3g}"


def claim_rows(claims: Sequence[Mapping[str, Any]], resamples: int | None = None) -> list[list[str]]:
    """The claims table's rows (:data:`CLAIM_COLUMNS`) from ``claims.json``'s ``claims`` entries
    (:meth:`ClaimResult.to_json`); ``resamples``: the bootstrap draws behind them."""
    rows = []
    for r in claims:
        s = r["spec"]
        name = s.get("claim") or s["id"]
        seeds = ", ".join(f"{float(v):+.3g}" for v in r["per_seed"].values())
        rows.append([f"{name} ({s['section']})" if s.get("section") else name, s.get("paper", ""),
                     r["measured"],
                     f"{r['value']:+.3g} [{r['low']:+.3g}, {r['high']:+.3g}], "
                     f"{_p_text(r['p_value'], resamples)}",
                     seeds, r.get("chance") or "—", f"{r['verdict']} ({r['why']})"])
    return rows


def claims_note(data: Mapping[str, Any]) -> str:
    """What the intervals and verdicts of a claims table mean."""
    alpha, confidence = data.get("alpha", ALPHA), data.get("confidence", 0.95)
    return (f"Intervals: {confidence:.0%} percentile intervals of the mean over seeds, over bootstrap "
            f"draws of the dissection (or attributed) images. Verdicts: holds = the claimed "
            f"direction with p < {alpha} in the mean and in every seed; does not hold = the "
            f"opposite direction with p < {alpha}; inconclusive = anything else.")


def _document(results: Sequence[ClaimResult], confidence: float, resamples: int | None
              ) -> dict[str, Any]:
    return {"schema": "cxrsem-claims/1", "alpha": ALPHA, "confidence": confidence,
            "resamples": resamples, "claims": [r.to_json() for r in results]}


def claims_markdown(results: Sequence[ClaimResult], confidence: float = 0.95,
                    resamples: int | None = None) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    document = _document(results, confidence, resamples)
    lines = ["| " + " | ".join(CLAIM_COLUMNS) + " |", "|" + "---|" * len(CLAIM_COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |"
              for row in claim_rows(document["claims"], resamples)]
    return "\n".join([*lines, "", claims_note(document)]) + "\n"


def write_claims(folder: str | Path, results: Sequence[ClaimResult], confidence: float = 0.95,
                 resamples: int | None = None) -> tuple[Path, Path]:
    """``claims.json`` and ``claims.md`` in ``folder``."""
    from cxrsem.outputs import write_json, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = write_json(folder / "claims.json", _document(results, confidence, resamples))
    md_path = write_text(folder / "claims.md", claims_markdown(results, confidence, resamples))
    return json_path, md_path
