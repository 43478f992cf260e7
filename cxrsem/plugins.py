"""The plugin manager: loads built-in and third-party plugins and looks components up by name.

Built-ins are listed in :data:`DEFAULT_PLUGINS` and registered exactly like third-party plugins
found in the ``cxrsem`` entry-point group.  ``CXRSEM_DISABLE_PLUGINS=name,...`` blocks plugins by
name.  A plugin that fails to import or whose hook raises is recorded with its error and skipped,
so one broken plugin never takes the rest of cxrsem down.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from cxrsem import hookspecs
from cxrsem.components import KINDS, Registration, _Component
from cxrsem.errors import PluginError, UnknownComponentError

ENTRY_POINT_GROUP = "cxrsem"

DEFAULT_PLUGINS = (
    "cxrsem.default_plugins.phantom",
    "cxrsem.default_plugins.losses",
    "cxrsem.default_plugins.architectures",
    "cxrsem.default_plugins.torchvision_models",
    "cxrsem.default_plugins.nih",
    "cxrsem.default_plugins.chexpert",
    "cxrsem.default_plugins.brixia",
    "cxrsem.default_plugins.covid_seg",
    "cxrsem.default_plugins.weak",
    "cxrsem.default_plugins.ig",
    "cxrsem.default_plugins.attribution_methods",
)

class PluginWarning(UserWarning):
    """A plugin setting that does nothing (e.g. an unknown name in CXRSEM_DISABLE_PLUGINS)."""


def disabled_plugins() -> set[str]:
    raw = os.environ.get("CXRSEM_DISABLE_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name, plus who registered what."""

    components: dict[str, dict[str, _Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    plugins: list[Registration] = field(default_factory=list)
    pm: pluggy.PluginManager | None = None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Any:
        found = self.components[kind].get(name)
        if found is None:
            raise UnknownComponentError(unknown_name_message(KINDS[kind].label, name, self.names(kind)))
        return found


def closest_name(name: str, available: Iterable[str]) -> str | None:
    """The available name closest to ``name``: a case-only difference first (``PHANTOM``), then
    difflib's best match above 0.5, compared case-insensitively."""
    available = sorted(available)
    folded = {a.casefold(): a for a in reversed(available)}
    if name.casefold() in folded:
        return folded[name.casefold()]
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.5)
    return folded[close[0]] if close else None


def unknown_name_message(label: str, name: str, available: Iterable[str]) -> str:
    available = sorted(available)
    closest = closest_name(name, available)
    close = [closest] if closest is not None else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(available) if available else "(none)"
    return f"unknown {label} {name!r}{hint} available: {listing}"


def _make_register(registry: Registry, kind: str, plugin_name: str, record: Registration):
    expected = KINDS[kind].info_class

    def register(info: _Component) -> None:
        if not isinstance(info, expected):
            raise PluginError(
                f"plugin {plugin_name!r} registered a {type(info).__name__} through "
                f"{KINDS[kind].hook}; expected {expected.__name__}"
            )
        previous = registry.owners.get((kind, info.name))
        if previous is not None:
            raise PluginError(
                f"{KINDS[kind].label} {info.name!r} is registered by two plugins: "
                f"{previous!r} and {plugin_name!r}; disable one with CXRSEM_DISABLE_PLUGINS"
            )
        registry.components[kind][info.name] = info
        registry.owners[(kind, info.name)] = plugin_name
        record.components.setdefault(kind, []).append(info.name)

    return register


def _register_plugin(registry: Registry, pm: pluggy.PluginManager, plugin: object, name: str,
                     source: str, version: str | None) -> None:
    record = Registration(plugin=name, version=version, source=source)
    registry.plugins.append(record)
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # a misspelled hook or bad signature: report, keep going
        other = pm.get_name(plugin) if pm.is_registered(plugin) else None
        record.error = (f"the same plugin object is already registered as {other!r}" if other
                        else f"{type(exc).__name__}: {exc}")
        return
    # Call each hook on this plugin alone so a failure is attributed to it and nothing else.
    for kind in KINDS.values():
        hook_name = kind.hook
        impl = getattr(plugin, hook_name, None)
        if impl is None:
            continue
        try:
            impl(register=_make_register(registry, kind.key, name, record))
        except PluginError:
            raise
        except Exception as exc:
            record.error = f"{hook_name} raised {type(exc).__name__}: {exc}"


def build_registry(extra_plugins: Iterable[tuple[str, object]] = (),
                   entry_points: bool = True) -> Registry:
    """Load every plugin and return a fresh registry (no global state touched)."""
    from cxrsem import __version__

    pm = pluggy.PluginManager("cxrsem")
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm=pm)
    blocked = disabled_plugins()

    for module_name in DEFAULT_PLUGINS:
        short = module_name.rsplit(".", 1)[-1]
        if short in blocked or module_name in blocked:
            continue
        module = importlib.import_module(module_name)
        _register_plugin(registry, pm, module, module_name, "built-in", __version__)

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked:
                continue
            dist = getattr(ep, "dist", None)
            source = dist.metadata["Name"] if dist is not None else "unknown distribution"
            version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:
                registry.plugins.append(Registration(
                    plugin=ep.name, version=version, source=source,
                    error=f"import failed: {type(exc).__name__}: {exc}"))
                continue
            _register_plugin(registry, pm, plugin, ep.name, source, version)

    known = {m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS} | set(DEFAULT_PLUGINS)
    if entry_points:
        known |= {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    extra_plugins = list(extra_plugins)
    known |= {name for name, _ in extra_plugins}
    for name in sorted(blocked - known):
        # a typo here would silently leave the plugin enabled
        shown = sorted(n for n in known if "." not in n)
        hint = closest_name(name, shown)
        warnings.warn(f"CXRSEM_DISABLE_PLUGINS names no installed plugin: {name!r}"
                      f"{f' (did you mean {hint!r}?)' if hint else ''}; known plugins: "
                      f"{', '.join(shown)}", PluginWarning, stacklevel=2)

    for name, plugin in extra_plugins:
        if name not in blocked:
            _register_plugin(registry, pm, plugin, name, "registered at run time", None)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from exc
    return registry


_registry: Registry | None = None
_extra: list[tuple[str, object]] = []
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = build_registry(_extra)
        return _registry


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks) and reload the registry."""
    global _registry
    with _lock:
        _extra.append((name, plugin))
        _registry = None


def unregister_plugin(name: str) -> None:
    global _registry
    with _lock:
        _extra[:] = [(n, p) for n, p in _extra if n != name]
        _registry = None


def reset() -> None:
    """Forget the loaded registry (e.g. after changing ``CXRSEM_DISABLE_PLUGINS``)."""
    global _registry
    with _lock:
        _registry = None


def get(kind: str, name: str) -> Any:
    """Registered component ``name`` of ``kind`` (a key of :data:`cxrsem.components.KINDS`)."""
    return get_registry().get(kind, name)


def _getter(kind: str):
    def getter(name: str) -> Any:
        return get(kind, name)

    getter.__name__ = getter.__qualname__ = f"get_{kind}"
    getter.__doc__ = (f"The registered {KINDS[kind].label} ``name`` "
                      f"(:class:`cxrsem.components.{KINDS[kind].info_class.__name__}`).")
    return getter


# get_dataset, get_concept_set, ...: one per kind of cxrsem.components.KINDS.
for _kind in KINDS:
    globals()[f"get_{_kind}"] = _getter(_kind)
del _kind


def describe_plugins(details: bool = False) -> list[dict[str, Any]]:
    """Every loaded plugin, what it registered and (with ``details``) each component's options."""
    registry = get_registry()
    described = []
    for record in registry.plugins:
        entry: dict[str, Any] = {
            "name": record.plugin,
            "source": record.source,
            "version": record.version,
            "error": record.error,
            "components": {kind: sorted(names) for kind, names in record.components.items()},
        }
        if details:
            entry["options"] = {
                f"{kind}:{name}": [
                    {"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help,
                     "choices": list(o.choices) if o.choices else None}
                    for o in registry.components[kind][name].options
                ]
                for kind, names in record.components.items()
                for name in names
            }
            entry["specs"] = {name: list(registry.components["model_source"][name].specs)
                              for name in record.components.get("model_source", [])}
        described.append(entry)
    return described
