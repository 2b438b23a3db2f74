"""Shared fixtures, the same ones plugin authors get from advbayes.testing: an isolated working directory (autouse),
a temporary MLflow store and a site directory for installable fixture plugins. And two things for the suite's speed:
its collection order (each worker starts on its share of the tests marked slow) and new sqlite stores copied from
one migrated template."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

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
def new_sqlite_stores_from_a_migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """MLflow builds a new sqlite store by running every schema migration it has: 1.0-1.7 s each time, and the
    suite's own processes did it 67 times a run (117 s of 786 s of tests on 3 workers). Each worker now runs them
    once, for real, into a template, and copies the template into every later new store with SQLite's backup API:
    the same tables, indexes and alembic revision, in milliseconds. advbayes' own creation path (the scratch file
    moved into place) runs as before; child processes (CLI subprocesses, Ray workers, servers) and any database
    that is not empty (an old schema, a half-made file) still go through MLflow's migrations."""
    import mlflow.store.db.utils as db_utils
    import sqlalchemy

    migrate = db_utils._initialize_tables
    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    building = threading.Lock()

    def initialize(engine: Any) -> None:
        in_a_file = engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")
        if not in_a_file or sqlalchemy.inspect(engine).get_table_names():
            migrate(engine)
            return
        with building:
            if not template.exists():
                built = sqlalchemy.create_engine(f"sqlite:///{template}")
                try:
                    migrate(built)
                finally:
                    built.dispose()
        target = engine.raw_connection()
        try:
            with closing(sqlite3.connect(template)) as source:
                source.backup(target.driver_connection)
        finally:
            target.close()

    db_utils._initialize_tables = initialize
    try:
        yield
    finally:
        db_utils._initialize_tables = migrate
