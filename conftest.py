"""Shared fixtures, the same ones plugin authors get from advbayes.testing: an isolated working directory (autouse),
a temporary MLflow store and a site directory for installable fixture plugins. And two things for the suite's speed:
its collection order (the tests marked slow first) and new sqlite stores copied from one migrated template."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from advbayes.testing import batched_draws, isolated_cwd, plugin_site, store  # noqa: F401 - pytest finds fixtures by name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first, so that with `--dist worksteal` (Makefile) the long ones start at once and the short ones
    fill the gaps (in the files' order the two official-SquareAttack comparisons came last and ran one after the
    other while the second worker sat idle: 250 s of 1,084). The order within each group is kept (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
