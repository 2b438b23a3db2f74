"""New sqlite stores start as a copy of one migrated, empty store kept in the cache (tracking/store_template.py)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from advbayes.output_cache import CACHE_ENV
from advbayes.tracking.store import client_for
from advbayes.tracking.store_template import template_path


def contents(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """The schema, and every table's rows (the experiments' by name and artifact location: their times differ)."""
    with closing(sqlite3.connect(path)) as db:
        schema = [
            (kind, name, table, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, table, sql in db.execute("select type, name, tbl_name, sql from sqlite_master")
        ]  # each statement's lines sorted: MLflow's batch migrations order a table's constraints as a set does
        schema.sort()
        tables = [name for kind, name, _, _ in schema if kind == "table"]
        rows = {t: sorted(db.execute(f'select * from "{t}"').fetchall()) for t in tables if t != "experiments"}
        rows["experiments"] = db.execute("select name, lifecycle_stage, artifact_location from experiments").fetchall()
    return schema, rows


def new_store(folder: Path) -> Path:
    """A store created as a run creates it, in its own new folder; it works."""
    folder.mkdir()
    database = folder / "mlflow.db"
    client = client_for(f"sqlite:///{database}")
    run = client.create_run(client.create_experiment("x"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    return database


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], dict[str, Any]]:
    """without_runs() of a store built by MLflow's own migrations alone, as a fresh MLflow builds it."""
    database = migrated_by_mlflow(tmp_path_factory.mktemp("reference") / "store")
    return without_runs(database, Path.cwd())


def migrated_by_mlflow(folder: Path) -> Path:
    """A store built by MLflow's own migrations alone."""
    import mlflow.store.db.utils as db_utils
    import sqlalchemy
    from mlflow import MlflowClient

    folder.mkdir()
    database = folder / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        db_utils.InitialBase.metadata.create_all(engine)  # what MLflow's _initialize_tables does
        db_utils._upgrade_db(engine)
    finally:
        engine.dispose()
    MlflowClient(f"sqlite:///{database}").search_experiments()  # adds the Default experiment
    return database


def without_runs(database: Path, root: Path | None = None) -> tuple[list[Any], dict[str, Any]]:
    """contents() of a copy of `database` without what new_store logged, locations relative to the working directory
    (`root`, else the current one: MLflow puts a new store's Default experiment under ./mlruns)."""
    copy = database.with_name("compared.db")
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
        for table in ("metrics", "latest_metrics", "tags", "runs", "params"):
            target.execute(f"DELETE FROM {table}")
        target.execute("DELETE FROM experiments WHERE name != 'Default'")
        target.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, '')", (str(root or Path.cwd()),)
        )
        target.commit()
    return contents(copy)


def test_a_store_copied_from_the_template_is_what_mlflows_migrations_build(tmp_path: Path, reference: Any) -> None:
    """The first new store is migrated and leaves the template; the next is a copy of it: the same schema, indexes,
    alembic revision and rows as MLflow's own migrations build, its Default experiment in its own folder."""
    first = new_store(tmp_path / "first")
    assert template_path().is_file()
    second = new_store(tmp_path / "second")
    assert without_runs(first) == reference and without_runs(second) == reference
    schema, rows = reference
    assert len(schema) > 50 and rows["alembic_version"] and rows["experiments"] == [("Default", "active", "/mlruns/0")]


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not a database at all" * 100),
        lambda path: path.write_bytes(path.read_bytes()[:4096]),  # cut short
        lambda path: _set_revision(path, "0000not0a0revision"),  # a schema MLflow does not know
        lambda path: path.write_bytes((Path.cwd() / "first" / "mlflow.db").read_bytes()),  # a real store put there
    ],
    ids=["garbage", "truncated", "unknown-revision", "not-empty"],
)
def test_a_damaged_template_is_replaced_and_the_new_store_migrated_as_before(
    tmp_path: Path, reference: Any, damage: Any
) -> None:
    new_store(tmp_path / "first")  # a run and an experiment "x" in it
    damage(template_path())
    database = new_store(tmp_path / "second")
    assert without_runs(database) == reference and template_path().is_file()
    new_store(tmp_path / "third")  # from the template made again
    assert without_runs(tmp_path / "third" / "mlflow.db") == reference


def _set_revision(path: Path, revision: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        db.commit()


def test_a_cache_that_cannot_be_written_only_costs_the_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "cache"))
    database = new_store(tmp_path / "store")
    assert not template_path().exists() and sorted(tmp_path.iterdir()) == [blocked, database.parent]
    assert without_runs(database) == reference


@pytest.mark.parametrize("name", ["x?q=1", "x#y", "x%3F"])
def test_the_first_store_in_a_folder_named_like_a_url_leaves_a_whole_template_and_nothing_beside_it(
    tmp_path: Path, reference: Any, name: str
) -> None:
    """Before, the template was read back as `file:{path}?mode=ro`: in a folder named `x?q=1` sqlite opened `x` beside
    it (created, empty, writable) and the template became a copy of that; `x%3F` read the folder `x?`."""
    from urllib.parse import quote

    from advbayes.tracking.store import sqlite_path

    folder = tmp_path / name
    folder.mkdir()
    uri = f"sqlite:///{quote(str(folder / 'mlflow.db'))}"  # as default_tracking_uri writes a folder's store
    assert sqlite_path(uri) == folder / "mlflow.db"
    client_for(uri).search_experiments()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    with closing(sqlite3.connect(template_path())) as template:
        (tables,) = template.execute("select count(*) from sqlite_master where type = 'table'").fetchone()
    assert tables > 20
    assert without_runs(new_store(tmp_path / "next")) == reference  # a copy of that template is a whole store
