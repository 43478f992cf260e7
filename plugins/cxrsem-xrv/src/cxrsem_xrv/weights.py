"""Reading TorchXRayVision weight files without running code from them.

xrv publishes two kinds of file:

* the DenseNet-121 weights are **whole pickled** ``nn.Module`` objects, saved by torch < 1.6 in
  its legacy (non-zip) format;
* the ResNet-50 weights are a plain state dict.

Unpickling a whole module normally imports and instantiates its classes, and allowlisting the
real classes (``torch.serialization.safe_globals([xrv.models.DenseNet, ...])``) is not enough: a
crafted file may *call* an allowlisted class, and ``xrv.models.DenseNet(weights=..., cache_dir=...)``
downloads a file and loads it with ``weights_only=False``.  So every module class a weight file
may name is resolved to an inert stand-in (:class:`PickledModule`) that only keeps the pickled
attributes as data; the state dict is then collected from those attributes and loaded, strictly,
into a model that cxrsem-xrv built itself.

* zip-format files: ``torch.load(weights_only=True)`` inside
  ``torch.serialization.safe_globals`` that maps the :data:`MODULE_CLASSES` names to stand-ins;
* legacy-format files: torch's weights-only unpickler refuses them outright (legacy ``torch.save``
  records every ``nn.Module`` class as a non-storage persistent id, which it never accepts), and
  ``torch.load`` would need ``weights_only=False`` for them.  So :func:`_read_legacy` reads that
  format itself: its pickles go through an unpickler whose ``find_class`` resolves exactly the
  same allowlist (:data:`ALLOWED_GLOBALS`, plus the storage type names) and fails on any other
  global, and the raw storage bytes that follow are copied into fresh CPU storages.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from cxrsem.errors import CheckpointError
from torch.nn.backends.thnn import _get_thnn_function_backend

__all__ = ["ALLOWED_GLOBALS", "MODULE_CLASSES", "PickledModule", "read_state_dict"]

# Every nn.Module class a DenseNet weight file of xrv can name.  xrv's own DenseNet is a copy of
# an older torchvision one; the torchvision names are accepted too because the stand-ins are
# inert, so accepting a name costs nothing.
MODULE_CLASSES = (
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    "torchvision.models.densenet.DenseNet",
    "torchvision.models.densenet._DenseBlock",
    "torchvision.models.densenet._DenseLayer",
    "torchvision.models.densenet._Transition",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.linear.Linear",
)


class PickledModule:
    """Stands in for an ``nn.Module`` class while unpickling: keeps the pickled attributes
    (``_parameters``, ``_buffers``, ``_modules``, ...) as plain data and runs no library code."""

    pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a REDUCE on the class lands here
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


_STAND_INS = {
    name: type(name.rsplit(".", 1)[1], (PickledModule,), {"pickled_name": name}) for name in MODULE_CLASSES
}

# Pre-1.6 torch pickled ``module._backend`` as a call of this function; torch keeps it (it returns
# None) precisely so that such files still unpickle.
_THNN_BACKEND = "torch.nn.backends.thnn._get_thnn_function_backend"

# The legacy path's whole allowlist: the stand-ins plus what torch's weights-only unpickler
# allows for tensors, parameters and module attributes.
ALLOWED_GLOBALS: dict[str, Any] = {
    **_STAND_INS,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "__builtin__.set": set,  # protocol 2, torch's pickle protocol, names builtins the Python 2 way
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    _THNN_BACKEND: _get_thnn_function_backend,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"Unsupported global: {module}.{name} is not allowed in an xrv "
                                         f"weight file by cxrsem-xrv")
        return found


# The legacy format (torch.serialization._legacy_load): pickles of the magic number, the
# protocol version and system info, then the object pickle whose storages are persistent ids,
# then a pickled list of storage keys, then per key an int64 element count and the raw bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _LegacyUnpickler(_RestrictedUnpickler):
    """The object pickle of a legacy file: module records resolve to their (stand-in) class,
    storage records to empty CPU storages that :func:`_read_legacy` fills afterwards."""

    def __init__(self, file: Any, storages: dict[str, torch.storage.TypedStorage]) -> None:
        super().__init__(file, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        return super().find_class(module, name)

    def persistent_load(self, saved_id: Any) -> Any:
        kind = saved_id[0] if isinstance(saved_id, tuple) and saved_id else None
        if kind == "module":
            return saved_id[1]
        if kind != "storage" or len(saved_id) != 6 or not isinstance(saved_id[1], torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(saved_id)[:80]}")
        _, dtype, key, _location, numel, view = saved_id
        if view is not None:  # storage views: never written for the parameters of a module
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            nbytes = int(numel) * torch._utils._element_size(dtype)
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=torch.UntypedStorage(nbytes), dtype=dtype, _internal=True)
        return self.storages[key]


def _read_legacy(file: Any) -> Any:
    """A legacy-format ``torch.save`` file, read without ``torch.load`` (see the module doc)."""
    header = [_RestrictedUnpickler(file, encoding="utf-8").load() for _ in range(3)]
    if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("not a torch.save file (wrong magic number or protocol)")
    if not isinstance(header[2], dict) or not header[2].get("little_endian", True):
        raise pickle.UnpicklingError("big-endian torch files are not supported")
    storages: dict[str, torch.storage.TypedStorage] = {}
    result = _LegacyUnpickler(file, storages).load()
    keys = _RestrictedUnpickler(file, encoding="utf-8").load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise pickle.UnpicklingError("the storage list does not match the pickled tensors")
    for key in keys:
        typed = storages[key]
        numel = int.from_bytes(file.read(8), "little")
        nbytes = numel * torch._utils._element_size(typed.dtype)
        data = file.read(nbytes)
        if typed._untyped_storage.nbytes() != nbytes or len(data) != nbytes:
            raise pickle.UnpicklingError(f"storage {key} is truncated or of the wrong size")
        typed._untyped_storage.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage())
    return result


def _load(path: Path) -> Any:
    if zipfile.is_zipfile(path):
        allowed = [(stand_in, name) for name, stand_in in _STAND_INS.items()]
        with torch.serialization.safe_globals([*allowed, _get_thnn_function_backend]):
            return torch.load(path, map_location="cpu", weights_only=True)
    with open(path, "rb") as file:
        return _read_legacy(file)


def _error_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch's weights-only message is a paragraph; the line naming the offending global matters.
    markers = ("GLOBAL", "Unsupported global", "WeightsUnpickler error")
    useful = next((line for line in lines if any(marker in line for marker in markers)),
                  lines[0] if lines else type(exc).__name__)
    return useful[:300]


def _collect(module: PickledModule, prefix: str, out: dict[str, Any]) -> None:
    """``nn.Module.state_dict`` over the pickled attributes: parameters, persistent buffers,
    children, in that order, skipping None entries."""
    attributes = getattr(module, "attributes", {})  # absent when the pickle never set a state

    def mapping(key: str) -> Mapping:  # a malformed entry counts as empty; the strict load then fails
        value = attributes.get(key)
        return value if isinstance(value, Mapping) else {}

    transient = attributes.get("_non_persistent_buffers_set")
    transient = transient if isinstance(transient, set) else set()
    for kind in ("_parameters", "_buffers"):
        for name, value in mapping(kind).items():
            if value is not None and not (kind == "_buffers" and name in transient):
                out[prefix + name] = value
    for name, child in mapping("_modules").items():
        if isinstance(child, PickledModule):
            _collect(child, f"{prefix}{name}.", out)
        elif child is not None:
            raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in an xrv weight file (a pickled whole module or a state dict), as a state dict.

    Raises :class:`CheckpointError` (one line) for an unreadable file, a global outside the
    allowlist, or anything that is not a module or a mapping of names to tensors.
    """
    path = Path(path)
    try:
        loaded = _load(path)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read TorchXRayVision weights {path}: {_error_line(exc)}") from None
    try:
        if isinstance(loaded, PickledModule):
            state: dict[str, Any] = {}
            _collect(loaded, "", state)
        elif isinstance(loaded, Mapping):
            state = dict(loaded)
        else:
            raise CheckpointError(f"it holds a {type(loaded).__name__}, not a network or a state dict")
    except (CheckpointError, RecursionError) as exc:  # RecursionError: a module that contains itself
        raise CheckpointError(f"cannot read TorchXRayVision weights {path}: {_error_line(exc)}") from None
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise CheckpointError(f"cannot read TorchXRayVision weights {path}: "
                              f"{'no weights' if not state else 'non-tensor entries ' + ', '.join(bad[:3])}")
    return state
