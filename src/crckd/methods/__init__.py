"""Training methods: each owns the student, any teacher, heads and memory banks.

`build_config` and `load_config` make a run's `Config` with the method's registered defaults.
"""

from crckd.methods import ce, distill, mean_teacher, teacher  # noqa: F401  (registration)
from crckd.methods import crckd as _crckd  # noqa: F401  (registration)
from crckd.methods.base import Method, MethodContext
from crckd.methods.registry import (
    METHODS,
    MethodSpec,
    available_methods,
    build_config,
    get_method,
    load_config,
    method_schedules,
    register_method,
)

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "MethodSpec",
    "available_methods",
    "build_config",
    "get_method",
    "load_config",
    "method_schedules",
    "register_method",
]
