"""A migrated, empty sqlite store kept in the cache, copied into every new store instead of migrating it again.

MLflow builds a new sqlite store by running each of its schema migrations: 2.4 s of a 13 s `advbayes run moons`
in a fresh directory, every time. The tables those migrations leave depend only on the MLflow version, so the
first new store of a version is migrated for real and copied, without its Default experiment (whose artifact
location names the store's own directory), into the cache; later new stores start as a copy of it, in
milliseconds, and MLflow, finding every table at its head revision, adds the Default experiment of their own
directory. A template that cannot be copied or opened is deleted and the store migrated as before; a cache that
cannot be written only costs the time it would have saved.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sqlite3
from contextlib import closing
from pathlib import Path

from advbayes.output_cache import cache_dir


def template_path() -> Path:
    """The cached template of the installed MLflow version (its migrations decide the tables)."""
    return cache_dir() / f"mlflow-{importlib.metadata.version('mlflow')}-empty-store.db"


def read_only_uri(path: Path) -> str:
    """sqlite's URI of `path`, read-only. Percent-encoded: as `file:{path}`, a directory named `x?q=1` ended the path
    at `?` (sqlite created an empty file `x` beside it, read-write, and the template became a copy of that)."""
    return f"{path.absolute().as_uri()}?mode=ro"


def copy_template(target: Path) -> bool:
    """Fill the new (absent) sqlite file `target` with the template's tables; False when there is no usable one."""
    template = template_path()
    if not template.is_file():
        return False
    try:
        with closing(sqlite3.connect(read_only_uri(template), uri=True)) as source:
            with closing(sqlite3.connect(target)) as copy:
                source.backup(copy)
                (rows,) = copy.execute(
                    "SELECT (SELECT count(*) FROM experiments) + (SELECT count(*) FROM runs)"
                ).fetchone()
        if rows == 0:
            return True
    except sqlite3.Error:  # damaged or half-written by something else: migrate instead, and make a new one
        pass
    forget_template()  # or not empty (a real store put there): a new store must start with nothing in it
    target.unlink(missing_ok=True)
    return False


def save_template(store: Path) -> None:
    """Keep a copy of the freshly migrated `store`, emptied of its Default experiment, as the template."""
    template = template_path()
    partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(read_only_uri(store), uri=True)) as source:
            with closing(sqlite3.connect(partial)) as copy:
                source.backup(copy)
                copy.execute("DELETE FROM experiment_tags")
                copy.execute("DELETE FROM experiments")
                copy.commit()
        os.replace(partial, template)  # whole or not at all: another process may be copying the old one
    except (OSError, sqlite3.Error):  # a read-only or full cache: new stores keep being migrated
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def forget_template() -> None:
    """Delete the template (MLflow refused a store made from it)."""
    with contextlib.suppress(OSError):
        template_path().unlink(missing_ok=True)
