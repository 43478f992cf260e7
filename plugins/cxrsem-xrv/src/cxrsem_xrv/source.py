"""The ``xrv`` model source: ``--model xrv:densenet121-res224-all`` as a cxrsem checkpoint dict.

Weights are read from the local xrv cache only (``$CXRSEM_XRV_CACHE``, else xrv's own
``~/.torchxrayvision/models_data/``); a missing file is a :class:`CheckpointError` naming the
file and the URL to fetch it from, never a download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxrsem.checkpoint import make_checkpoint
from cxrsem.errors import CheckpointError

from cxrsem_xrv.models import build_densenet121, build_resnet50, import_xrv
from cxrsem_xrv.weights import read_state_dict

__all__ = ["CACHE_ENV", "NORMALIZATION", "SPECS", "output_names", "weights_file", "xrv_checkpoint"]

CACHE_ENV = "CXRSEM_XRV_CACHE"

# The weights of xrv's ``model_urls`` under their full names (one file each; xrv's short aliases
# such as "nih" name the same files), and the cxrsem architecture each one fits.
SPECS = {
    "densenet121-res224-all": "xrv-densenet121",
    "densenet121-res224-nih": "xrv-densenet121",
    "densenet121-res224-pc": "xrv-densenet121",
    "densenet121-res224-chex": "xrv-densenet121",
    "densenet121-res224-rsna": "xrv-densenet121",
    "densenet121-res224-mimic_nb": "xrv-densenet121",
    "densenet121-res224-mimic_ch": "xrv-densenet121",
    "resnet50-res512-all": "xrv-resnet50",
}
_BUILDERS = {"xrv-densenet121": build_densenet121, "xrv-resnet50": build_resnet50}

# cxrsem feeds x in [0, 1] and the model sees (x - mean) / std.  xrv expects
# xrv.datasets.normalize(img, 255) = (2 * img / 255 - 1) * 1024 = (x - 0.5) * 2048 for x = img / 255,
# i.e. mean 0.5 and std 1/2048 (exact in binary floating point).
NORMALIZATION = {"mean": [0.5], "std": [1 / 2048]}


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(import_xrv().utils.get_cache_dir()).expanduser()


def _entry(spec: str) -> dict[str, Any]:
    if spec not in SPECS:
        from cxrsem.plugins import unknown_name_message

        raise CheckpointError(unknown_name_message("xrv model", spec, SPECS))
    entry = import_xrv().models.model_urls.get(spec)
    if entry is None:
        raise CheckpointError(f"the installed torchxrayvision does not know the weights {spec!r}; "
                              f"upgrade it (pip install -U torchxrayvision)")
    return entry


def weights_file(spec: str) -> tuple[Path, str]:
    """Where the weights of ``spec`` must be, and the URL xrv would download them from."""
    url = _entry(spec)["weights_url"]
    return cache_dir() / url.rsplit("/", 1)[-1], url


def output_names(labels: list[str]) -> list[str]:
    """xrv's labels, with ``unused-<index>`` for its empty names: the 18-way head of every xrv
    DenseNet has outputs that its training data had no label for, and cxrsem needs a unique,
    non-empty name per output."""
    return [label if label else f"unused-{index}" for index, label in enumerate(labels)]


def _load_strictly(model: Any, state: dict[str, Any]) -> str | None:
    """Load ``state`` into ``model``; None when every tensor fits, else what did not (one line)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        lines = [line.strip() for line in str(exc).splitlines()]
        return next((line for line in lines if line.startswith("size mismatch")), lines[0])[:200]
    problems = [f"{len(keys)} {kind} (e.g. {', '.join(keys[:2])})"
                for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys))
                if keys]
    return "; ".join(problems) or None


def xrv_checkpoint(*, spec: str) -> dict[str, Any]:
    """The ``ModelSourceInfo.factory`` of ``xrv``: the checkpoint dict of xrv weights ``spec``."""
    entry = _entry(spec)
    path, url = weights_file(spec)
    if not path.is_file():
        raise CheckpointError(f"TorchXRayVision weights {spec} not found at {path}: download {url} to that "
                              f"file (cxrsem never downloads), or set {CACHE_ENV} to the folder holding it")
    state = read_state_dict(path)
    # op_threshs is xrv's calibration buffer, not a weight: the architectures output logits.
    state.pop("op_threshs", None)
    arch = SPECS[spec]
    names = output_names(list(entry["labels"]))
    model = _BUILDERS[arch](num_outputs=len(names), in_channels=1)
    problem = _load_strictly(model, state)
    if problem:
        raise CheckpointError(f"{path} does not hold {arch} weights with {len(names)} outputs: {problem}")
    return make_checkpoint(model, arch=arch, arch_kwargs={}, task_kind="multilabel", outputs=names,
                           image_size=int(entry.get("input_resolution", 224)), normalization=NORMALIZATION,
                           channels=1, train={"dataset": f"torchxrayvision {spec}", "init": url})
