"""Shared fixtures, the same ones plugin authors get from advbayes.testing: an isolated working directory (autouse),
a temporary MLflow store and a site directory for installable fixture plugins. And two things for the suite: its
collection order (each worker starts on its share of the tests marked slow, for speed) and a cache of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from advbayes.output_cache import CACHE_ENV
from advbayes.testing import batched_draws, isolated_cwd, plugin_site, store  # noqa: F401 - pytest finds fixtures by name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every worker starts on its share of the slow tests and ends on fast ones. pytest-xdist's worksteal hands
    each of N workers one contiguous block of the collection, and an idle worker steals from the END of another's
    queue. With the slow tests simply first, one worker got nearly all of them, and the other stole the last ones
    (two Ray sweeps of 30-40 s) late: 22 s of one worker running alone at the end. So the collection becomes N
    blocks, each the slow tests dealt to it round-robin followed by its share of the fast ones. Tests marked with
    one `xdist_group` are dealt together (the sweeps that share one warm Ray); the order within each group is
    kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
        return
    units: dict[str, list[pytest.Item]] = {}
    fast = []
    for item in items:
        if item.get_closest_marker("slow") is None:
            fast.append(item)
            continue
        group = item.get_closest_marker("xdist_group")
        units.setdefault(str(group.args[0]) if group and group.args else item.nodeid, []).append(item)
    blocks: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for i, unit in enumerate(units.values()):
        blocks[i % workers].extend(unit)
    left = len(items)
    for i, block in enumerate(blocks):  # worksteal's first hand-outs: what is left, split evenly, worker by worker
        size = left // (workers - i)
        left -= size
        take = max(0, size - len(block))
        block.extend(fast[:take])
        del fast[:take]
    blocks[-1].extend(fast)
    items[:] = [item for block in blocks for item in block]


@pytest.fixture(scope="session", autouse=True)
def suite_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's own advbayes cache (cached `list`/`show` answers, the migrated empty MLflow store that every
    new sqlite store is copied from): never the user's, and shared by each worker's tests and the processes they
    start, so the store template is migrated once per worker."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("advbayes-cache")))
        yield
