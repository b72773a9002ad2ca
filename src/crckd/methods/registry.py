"""Registry of training methods, selected in configs by `method.name`.

A method is registered once with its paper reference; ablations register the same class under
another name with different default settings (for example `mt+crp` is CRCKD with the CCD weight
set to 0). Adding a method never touches the trainer. `build_config` and `load_config` make a
`Config` with those defaults layered under the user's settings.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crckd.config import Config, apply_overrides, config_source, read_yaml, validate_config
from crckd.errors import ConfigError
from crckd.methods.schedule import describe_relative, describe_schedule

if TYPE_CHECKING:
    from crckd.methods.base import Method


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry: the class that implements it and the settings it starts from."""

    name: str
    cls: type[Method]
    summary: str
    reference: str
    defaults: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str, *, summary: str, reference: str, defaults: dict[str, Any] | None = None
) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method (or an ablation of it) to the registry."""

    def decorator(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = MethodSpec(name, cls, summary, reference, defaults or {})
        return cls

    return decorator


def get_method(name: str) -> MethodSpec:
    """Look a method up by name; unknown names get a `ConfigError` listing the valid ones."""
    _load_builtin_methods()
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method.name {name!r}{hint} Known: {', '.join(METHODS)}")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """The method-config settings an entry starts from (used when configs are built)."""
    return get_method(name).defaults


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping over the method's registered defaults and its preset."""
    return validate_config(raw, source, method_defaults=method_defaults)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (optional), apply `key=value` overrides and build the config."""
    raw = apply_overrides(read_yaml(path) if path is not None else {}, overrides or [])
    return build_config(raw, source=config_source(path, overrides))


def method_schedules(spec: MethodSpec) -> dict[str, str]:
    """The method's schedule in each `method.schedule` mode: the paper's values as they are
    (`epochs`) and as fractions of the run (`relative`); {} for a method without one."""
    config = build_config({"method": {"name": spec.name}}).method
    fields = spec.cls.schedule_fields(config)
    if not fields:
        return {}
    paper = spec.cls.paper_schedule
    return {
        "epochs": describe_schedule(paper, fields),
        "relative": describe_relative(paper, fields),
    }


def available_methods() -> list[MethodSpec]:
    """Every registered method, in registration order."""
    _load_builtin_methods()
    return list(METHODS.values())


def _load_builtin_methods() -> None:
    import crckd.methods  # noqa: F401  (registers the built-in methods)
