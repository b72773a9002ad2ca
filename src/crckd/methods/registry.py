"""Registry of training methods, selected in configs by `method.name`.

A method is registered once with its paper reference; ablations register the same class under
another name with different default settings (for example `mt+crp` is CRCKD with the CCD weight
set to 0). Adding a method never touches the trainer.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crckd.errors import ConfigError

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


def available_methods() -> list[MethodSpec]:
    """Every registered method, in registration order."""
    _load_builtin_methods()
    return list(METHODS.values())


def _load_builtin_methods() -> None:
    import crckd.methods  # noqa: F401  (registers the built-in methods)
