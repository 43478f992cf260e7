"""cxrsem-xrv: TorchXRayVision's pretrained chest X-ray models and its datasets in cxrsem.

* architectures ``xrv-densenet121`` and ``xrv-resnet50`` (logits out, random initialisation);
* model source ``xrv``: ``--model xrv:densenet121-res224-all`` and the other xrv weights, read from
  the local xrv cache (never downloaded) without running code from the pickled files;
* datasets ``xrv-nih``, ``xrv-chexpert``, ``xrv-padchest``, ``xrv-rsna`` and concept sets
  ``xrv-nih-bbox``, ``xrv-rsna-bbox``: xrv's dataset classes on local files (:mod:`cxrsem_xrv.datasets`);
  :mod:`cxrsem_xrv.sample_data` writes tiny copies of their layouts.
"""

from __future__ import annotations

from cxrsem_xrv.datasets import CONCEPT_SETS, DATASETS
from cxrsem_xrv.models import build_densenet121, build_resnet50
from cxrsem_xrv.source import CACHE_ENV, NORMALIZATION, SPECS, output_names, weights_file, xrv_checkpoint
from cxrsem_xrv.weights import read_state_dict

__version__ = "0.1.0"

__all__ = [
    "CACHE_ENV",
    "CONCEPT_SETS",
    "DATASETS",
    "NORMALIZATION",
    "SPECS",
    "build_densenet121",
    "build_resnet50",
    "output_names",
    "read_state_dict",
    "weights_file",
    "xrv_checkpoint",
]
