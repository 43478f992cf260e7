"""Validation of component options (``--dataset-opt size=128``, ``[dataset]`` tables, keyword args).

Every component declares its options (:class:`cxrsem.components.Option`); values arrive as strings
from the command line or typed values from TOML/Python, and leave here coerced to the declared type,
with errors that name the option and the component.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cxrsem.components import Option, _Component
from cxrsem.errors import UsageError
from cxrsem.plugins import unknown_name_message

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_assignments(items: Iterable[str], what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; ``what`` names the flag in errors."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} expects NAME=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def coerce(option: Option, value: Any, owner: str) -> Any:
    where = f"option {option.name!r} of {owner}"
    try:
        if option.type is bool:
            if isinstance(value, bool):
                result: Any = value
            elif isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                result = value.lower() in _TRUE
            else:
                raise ValueError
        elif option.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            result = int(value)
        elif option.type is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
        else:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            result = str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where} must be {option.type.__name__}, got {value!r}") from None
    if option.choices is not None and result not in option.choices:
        allowed = ", ".join(map(str, option.choices))
        raise UsageError(f"{where} must be one of {allowed}, got {value!r}")
    return result


def resolve_options(component: _Component, kind_label: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``component`` updated with ``given``, each value checked and coerced."""
    owner = f"{kind_label} {component.name!r}"
    resolved = component.defaults()
    for key, value in given.items():
        option = component.option(key)
        if option is None:
            known = [o.name for o in component.options]
            raise UsageError(unknown_name_message(f"option for {owner}:", key, known))
        resolved[key] = coerce(option, value, owner)
    return resolved
