"""Shared fixtures, the same ones plugin authors get from advbayes.testing: an isolated working directory (autouse),
a temporary MLflow store and a site directory for installable fixture plugins. And the suite's collection order:
the tests marked slow first, so that with `--dist worksteal` (Makefile) the long ones start at once and the short
ones fill the gaps; in the files' order the two 2-minute comparisons with the official SquareAttack came last and
ran one after the other while the second worker sat idle (250 s of 1,084)."""

from __future__ import annotations

import pytest

from advbayes.testing import batched_draws, isolated_cwd, plugin_site, store  # noqa: F401 - pytest finds fixtures by name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first; the order within each group is kept (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
