"""Finding and reading the report's inputs: dissection results (``cxrsem-dissection/1``) and
attribution results (``cxrsem-attribution/1``).

Nothing here raises on bad input files: every problem becomes a warning (one line a user can act
on) and the file is left out, so the report is still written for what is valid.  Only the
fields the report shows are read, and optional ones may be missing.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrsem.formats import dissection as dissection_format
from cxrsem.formats.attribution import Attribution, parse_attribution
from cxrsem.formats.dissection import UnitLabel

_EPOCH_STEM = re.compile(r"epoch[-_]?(\d+)$")


Unit = UnitLabel  # one unit of a dissected layer: best concept and its dataset-wide IoU (Eq. 5)


@dataclass
class Dissection:
    """One ``dissection.json`` (one model, one layer) as the report uses it: the format's reading
    of the file (:class:`cxrsem.formats.dissection.Dissection`) plus where it was found and the
    names the report gives it."""

    result: dissection_format.Dissection = field(repr=False)
    source: Path  # the DISSECT_DIR it was found under
    name: str = ""
    base_name: str = ""
    label: str | None = None

    # read-only views of the parsed file
    json_path = property(lambda self: self.result.path)
    data = property(lambda self: self.result.data)
    model_path = property(lambda self: self.result.model_path)
    sha256 = property(lambda self: self.result.sha256)
    train = property(lambda self: self.result.train)
    settings = property(lambda self: self.result.settings)
    concepts = property(lambda self: self.result.concepts)
    concept_images = property(lambda self: self.result.concept_images)
    units = property(lambda self: self.result.units)

    @property
    def layer(self) -> str:
        return self.result.layer or self.folder.name

    @property
    def epoch(self) -> int | None:
        return _epoch_of(self.train, self.model_path)

    @property
    def folder(self) -> Path:
        return self.json_path.parent

    @property
    def model_stem(self) -> str:
        return Path(self.model_path).stem if self.model_path else self.folder.parent.name

    @property
    def run_dir(self) -> str:
        return str(Path(self.model_path).parent) if self.model_path else str(self.folder.parent.parent)

    @property
    def num_units(self) -> int:
        return self.result.num_units or len(self.units)

    @property
    def files(self) -> set[str] | None:
        """The files ``dissection.json`` says belong to it (None: an older result without the
        list, whose every file is taken as its own)."""
        listed = self.data.get("files")
        if not isinstance(listed, list):
            return None
        return {str(name) for name in listed}

    def own_file(self, name: str) -> Path | None:
        """``folder / name`` when it exists and belongs to this result (a file another run left
        in the folder is not shown as this model's)."""
        listed = self.files
        if listed is not None and name not in listed:
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def unit_figure(self, unit: int) -> Path | None:
        return self.own_file(f"units/unit-{unit:04d}.png")

    def summary_figure(self) -> Path | None:
        return self.own_file("summary.png")

    def manifest(self) -> dict[str, Any]:
        path = self.own_file("manifest.json")
        return _read_json_quietly(path) if path is not None else {}

    def run_config(self) -> dict[str, Any]:
        """The training run's resolved ``config.toml`` next to the checkpoint, when it is there."""
        return _read_toml_quietly(Path(self.model_path).parent / "config.toml") if self.model_path else {}


@dataclass
class AttributionSet:
    """The attributions of one folder for one model and layer, and the dissection naming its units."""

    folder: Path
    model_path: str
    layer: str | None
    sha256: str | None
    items: list[Attribution]
    method: str = "ig"  # the attribution method and its settings (formats.attribution.describe_method)
    dissection: Dissection | None = None
    own_labels: bool = False  # the JSON names its units with a dissection the report was not given


@dataclass
class Collected:
    dissections: list[Dissection]
    attributions: list[AttributionSet]
    warnings: list[str]


def _read_json_quietly(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_toml_quietly(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def read_json(path: Path, warnings: list[str], what: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None with a line in ``warnings`` saying why it was skipped."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        warnings.append(f"cannot read {what} {path}: {exc.strerror or exc}; skipped")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{what} {path} is not valid JSON ({exc}); skipped")
        return None
    if not isinstance(data, dict):
        warnings.append(f"{what} {path} is not a JSON object; skipped")
        return None
    return data


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _epoch_of(train: Mapping[str, Any], model_path: str) -> int | None:
    epoch = train.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return epoch
    match = _EPOCH_STEM.search(Path(model_path).stem) if model_path else None
    return int(match.group(1)) if match else None


def find_files(root: Path, name: str) -> list[Path]:
    """``root`` itself when it is the file, else every ``name`` below it, skipping hidden folders
    (the dissection's ``.cache`` holds activations, not results)."""
    if root.is_file():
        return [root] if root.name == name else []
    found = []
    for path in root.rglob(name):
        parts = path.relative_to(root).parts[:-1]
        if not any(part.startswith(".") for part in parts) and path.is_file():
            found.append(path)
    return sorted(found)


def load_dissections(dirs: Sequence[str | Path], warnings: list[str]) -> list[Dissection]:
    """Every readable ``dissection.json`` under the given folders (or given as files), once each."""
    loaded: list[Dissection] = []
    seen: set[Path] = set()
    for given in dirs:
        root = Path(given)
        if not root.exists():
            warnings.append(f"{root} does not exist; skipped")
            continue
        found = find_files(root, "dissection.json")
        if not found:
            warnings.append(f"{root} holds no dissection.json (give the folder `cxrsem dissect --out` "
                            f"wrote, a model folder or a layer folder); skipped")
            continue
        for path in found:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            data = read_json(path, warnings, "dissection result")
            if data is None:
                continue
            try:
                loaded.append(Dissection(dissection_format.parse_dissection(data, path), root))
            except ValueError as exc:
                warnings.append(f"{path}: {exc}; skipped")
    return loaded


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``["runs/a=CheXpert BCE"]`` -> ``{"runs/a": "CheXpert BCE"}``.

    The split is at the last ``=`` whose left side is an existing path (paths may hold ``=``),
    else at the first one.
    """
    labels: dict[str, str] = {}
    for item in items:
        positions = [i for i, ch in enumerate(item) if ch == "="]
        if not positions:
            from cxrsem.errors import UsageError

            raise UsageError(f"--label expects DIR=NAME, got {item!r}")
        cut = next((i for i in reversed(positions) if Path(item[:i]).exists()), positions[0])
        key, name = item[:cut].strip(), item[cut + 1:].strip()
        if not key or not name:
            from cxrsem.errors import UsageError

            raise UsageError(f"--label expects DIR=NAME, got {item!r}")
        labels[key] = name
    return labels


def _short_init(init: Any) -> str:
    if init is None or init == "":
        return "?"
    text = str(init)
    if text in ("random", "imagenet"):
        return text
    path = Path(text)
    return f"from {path.parent.name}/{path.stem}" if path.parent.name else f"from {path.stem}"


def default_base_name(d: Dissection) -> str:
    """``dataset/loss/init`` from the checkpoint's training info."""
    parts = [str(d.train.get("dataset") or "?"), str(d.train.get("loss") or "?"),
             _short_init(d.train.get("init"))]
    return "/".join(parts) if any(p != "?" for p in parts) else "model"


def _label_for(d: Dissection, labels: Mapping[Path, str]) -> tuple[str, Path] | None:
    """The most specific ``--label``: the file, a folder above it, or the checkpoint itself."""
    candidates = []
    json_path = d.json_path.resolve()
    model = Path(d.model_path).resolve() if d.model_path else None
    for key, name in labels.items():
        if key == json_path or key in json_path.parents or (model is not None and key == model):
            candidates.append((len(key.parts), name, key))
    if not candidates:
        return None
    _, name, key = max(candidates, key=lambda c: c[0])
    return name, key


def short_layer(layer: str) -> str:
    return layer.rsplit(".", 1)[-1]


def assign_names(dissections: Sequence[Dissection], labels: Mapping[str, str],
                 warnings: list[str]) -> None:
    """Display names: the ``--label`` (plus the checkpoint stem when the label covers several
    checkpoints) or ``dataset/loss/init · stem``; `` @ layer`` is added when layers differ."""
    resolved = {Path(k).resolve(): v for k, v in labels.items()}
    used_keys: dict[Path, set[str]] = {}
    matches: dict[int, tuple[str, Path] | None] = {}
    for i, d in enumerate(dissections):
        match = _label_for(d, resolved)
        matches[i] = match
        if match is not None:
            used_keys.setdefault(match[1], set()).add(d.model_path or str(d.folder.parent))
    for key, name in labels.items():
        if Path(key).resolve() not in used_keys:
            warnings.append(f"--label {key}={name}: no dissection found under {key}; label unused")
    models_per_key = {key: len(models) for key, models in used_keys.items()}
    for i, d in enumerate(dissections):
        match = matches[i]
        if match is not None:
            d.label = match[0]
            d.base_name = match[0]
            d.name = match[0] if models_per_key[match[1]] == 1 else f"{match[0]} · {d.model_stem}"
        else:
            d.base_name = default_base_name(d)
            d.name = f"{d.base_name} · {d.model_stem}"
    if len({d.layer for d in dissections}) > 1:  # then every name says its layer
        for d in dissections:
            d.name = f"{d.name} @ {short_layer(d.layer)}"
    counts: dict[str, int] = {}
    for d in dissections:
        counts[d.name] = counts.get(d.name, 0) + 1
        if counts[d.name] > 1:
            d.name = f"{d.name} ({counts[d.name]})"


def sort_dissections(dissections: list[Dissection]) -> list[Dissection]:
    """Order of the given folders, then run, layer and epoch."""
    order = {}
    for d in dissections:
        order.setdefault(str(d.source), len(order))
    return sorted(dissections, key=lambda d: (order[str(d.source)], d.run_dir, d.layer,
                                              -1 if d.epoch is None else d.epoch, d.model_stem))


def load_attributions(dirs: Sequence[str | Path], dissections: Sequence[Dissection],
                      warnings: list[str]) -> list[AttributionSet]:
    """Attribution results grouped by folder, model and layer, each matched to the dissection of
    the same weights (sha256) and layer among ``dissections``."""
    sets: list[AttributionSet] = []
    by_identity = {(d.sha256, d.layer): d for d in dissections if d.sha256}
    seen: set[Path] = set()
    for given in dirs:
        root = Path(given)
        if not root.exists():
            warnings.append(f"attribution folder {root} does not exist; skipped")
            continue
        groups: dict[tuple[Path, str | None, str | None], AttributionSet] = {}
        bad = 0
        for path in find_files(root, "*.json") if root.is_dir() else [root]:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            data = _read_json_quietly(path)
            if not str(data.get("schema", "")).startswith("cxrsem-attribution/"):
                continue  # config, manifest, dissection results: not ours
            try:
                item = parse_attribution(path, data)
            except ValueError as exc:
                warnings.append(f"{path}: {exc}; skipped")
                bad += 1
                continue
            key = (path.parent, item.sha256, item.layer, item.method)
            if key not in groups:
                model = data.get("model") if isinstance(data.get("model"), Mapping) else {}
                groups[key] = AttributionSet(folder=path.parent, model_path=str(model.get("path") or "?"),
                                             layer=item.layer, sha256=item.sha256, items=[],
                                             method=item.method)
            groups[key].items.append(item)
        if not groups:
            if not bad:
                warnings.append(f"{root} holds no attribution results (cxrsem attribute --out); skipped")
            continue
        for group in groups.values():
            group.items.sort(key=lambda a: a.stem)
            _match(group, by_identity, warnings)
            sets.append(group)
    return sets


def _match(group: AttributionSet, by_identity: Mapping[tuple[Any, Any], Dissection],
           warnings: list[str]) -> None:
    where = f"attributions in {group.folder} ({Path(group.model_path).name}, {group.layer})"
    dissection = by_identity.get((group.sha256, group.layer))
    if dissection is not None:
        sizes = {len(a.units) for a in group.items if a.units is not None}
        if sizes and sizes != {dissection.num_units}:
            warnings.append(f"{where}: {sorted(sizes)} units, but its dissection {dissection.json_path} "
                            f"has {dissection.num_units}; units are not named")
            return
        group.dissection = dissection
        return
    named = any(row.get("dissected") or row.get("concept") is not None
                for a in group.items for row in a.top_k)
    if named:
        group.own_labels = True
        warnings.append(f"{where}: none of the given dissections is of this model and layer (weights "
                        f"sha256 {str(group.sha256)[:12]}); its units keep the labels stored with the "
                        f"attribution; add that model's dissection folder to compare at one IoU threshold")
    else:
        warnings.append(f"{where}: computed without a dissection and none of the given dissections is "
                        f"of this model and layer (weights sha256 {str(group.sha256)[:12]}); its units "
                        f"are shown unnamed: add that model's dissection folder")


def collect(dissect_dirs: Sequence[str | Path], attributions: Sequence[str | Path] = (),
            labels: Mapping[str, str] | None = None) -> Collected:
    """Load, name and order every valid input; problems become ``warnings``."""
    warnings: list[str] = []
    dissections = sort_dissections(load_dissections(dissect_dirs, warnings))
    assign_names(dissections, labels or {}, warnings)
    attribution_sets = load_attributions(attributions, dissections, warnings)
    return Collected(dissections, attribution_sets, warnings)
