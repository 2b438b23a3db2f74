"""Modules that moved keep their old name for one release (CHANGELOG.md): the old module warns once on import
and hands out the new module's objects."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forward_to(old: str, new: str) -> Callable[[str], Any]:
    """Warn that `old` moved to `new`; the returned function is the old module's __getattr__ (every name of
    `new`, as before)."""
    warnings.warn(f"{old} moved to {new}; the old module goes in the next release", DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)

    def moved_name(name: str) -> Any:
        return getattr(module, name)

    return moved_name
