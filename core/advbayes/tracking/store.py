"""The MLflow store: where it is, whether it answers, one client that retries a busy sqlite, experiments by name."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from advbayes.errors import RunError, error_text

DEFAULT_STORE = "mlflow.db"
PARENT_ROLE = "parent"
CHILD_ROLE = "attack"
ROLE_TAG = "advbayes.role"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
MODEL_WEIGHTS = "weights.pt"
MODEL_ENTRY = "entry.toml"
MAX_TAG = 4000


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store ./mlflow.db as an absolute sqlite URI, its path
    percent-encoded (a directory named `x?q=1`, `x#y` or `x%20y` is a path, not a query, a fragment or an escape)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{quote(str(Path.cwd() / DEFAULT_STORE))}"


def normalize_uri(uri: str) -> str:
    """One spelling per store: the scheme in lower case (schemes are case-insensitive, SQLAlchemy's registry is
    not: SQLITE:/// failed at run time) and sqlite+pysqlite (the default driver) as sqlite, so every sqlite
    spelling gets the store lock and the busy retries."""
    scheme, sep, rest = uri.partition(":")
    if not sep or len(scheme) == 1 or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return uri  # a plain path (or a Windows drive letter)
    scheme = scheme.lower()
    if scheme == "sqlite+pysqlite":
        scheme = "sqlite"
    return f"{scheme}:{rest}"


SECRET_QUERY_KEYS = ("password", "passwd", "token", "secret")


def shown_uri(uri: str) -> str:
    """A store URI as advbayes writes it where others read it (cards, reports, messages): its password (in the
    user part, or as a query parameter) replaced by ***, so that a team store's credential never lands in a file."""
    parsed = urlparse(uri)
    if not parsed.scheme or not parsed.netloc and not parsed.query:
        return uri
    netloc = parsed.netloc
    if parsed.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{key}=***" if key.lower() in SECRET_QUERY_KEYS else part
        for part in parsed.query.split("&")
        if part
        for key in [part.split("=", 1)[0]]
    )
    return parsed._replace(netloc=netloc, query=query).geturl()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (percent-decoded, as SQLAlchemy reads it), or None for other stores."""
    uri = normalize_uri(uri)
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(unquote(path))


_READY: set[str] = set()  # sqlite stores this process has seen created and migrated


@contextmanager
def store_lock(database: Path) -> Iterator[None]:
    """An exclusive lock on <database>.lock, held while a sqlite store is created or an experiment is added, so
    concurrent runs in one directory never race on MLflow's table creation and migrations."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
CONNECT_TIMEOUT = 3.0  # seconds; MLflow itself retries an unreachable server for minutes


def check_answers(uri: str) -> None:
    """An MLflow server answers its /health request within CONNECT_TIMEOUT: a port that accepts connections and
    never answers (a hung server, something else listening) is an error now, not a run that hangs for minutes."""
    import urllib.error
    import urllib.request

    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT) as response:  # noqa: S310 - http(s) only
            response.read(64)
    except urllib.error.HTTPError:
        return  # it answers HTTP (a proxy in front of MLflow may not route /health): MLflow's calls will tell
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RunError(
            f"tracking store {shown_uri(uri)} accepts connections but gave no HTTP answer within {CONNECT_TIMEOUT:g} s "
            f"({reason or type(exc).__name__}); is an MLflow server running there? Or pass --no-track"
        ) from None


def check_databricks(uri: str) -> None:
    """A Databricks store needs databricks-sdk and credentials for the URI's profile: checked as MLflow will read
    them (environment, ~/.databrickscfg), before any work."""
    try:
        from databricks.sdk.config import Config
    except ImportError:
        raise RunError(f"tracking URI {shown_uri(uri)}: a Databricks store needs the databricks-sdk package") from None
    profile = urlparse(uri).netloc or os.environ.get("DATABRICKS_CONFIG_PROFILE") or None
    try:
        Config(profile=profile)
    except Exception as exc:  # noqa: BLE001 - the SDK's ValueError and its config-file errors alike
        raise RunError(
            f"tracking URI {shown_uri(uri)}: no Databricks credentials for profile {profile or 'DEFAULT'} "
            f"({error_text(exc)[:160]}); run databricks auth login, or set DATABRICKS_HOST and DATABRICKS_TOKEN"
        ) from None


def check_store(uri: str, *, write: bool) -> None:
    """Fail fast, in one line, on a store that cannot work: an unknown scheme, MLflow's retired file store, a
    server nobody answers on, or (to write) a sqlite file whose directory is missing or read-only."""
    uri = normalize_uri(uri)
    shown = shown_uri(uri)  # the URI as messages say it: without its password
    if uri.startswith("-"):
        raise RunError(
            f"tracking URI {uri!r} looks like an option, not a store; expected sqlite:///PATH, "
            "postgresql://HOST/DB or http(s)://HOST:PORT"
        )
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if len(scheme) == 1 or not scheme:  # a plain path (or a Windows drive letter): MLflow's file store
        scheme = "file"
    if scheme not in STORE_SCHEMES:
        raise RunError(
            f"tracking URI {shown}: unknown scheme '{scheme}'; expected sqlite:///PATH, postgresql://HOST/DB or "
            "http(s)://HOST:PORT"
        )
    if scheme == "databricks":
        check_databricks(uri)
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise RunError(
            f"tracking URI {shown}: MLflow's file store is in maintenance mode and refuses new runs; use "
            "sqlite:///PATH/mlflow.db (mlflow migrate-filestore moves old runs into it), or set "
            "MLFLOW_ALLOW_FILE_STORE=true"
        )
    if scheme in DEFAULT_PORTS:
        parsed = urlparse(uri)
        host = parsed.hostname or "localhost"
        try:
            port = parsed.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise RunError(f"tracking URI {shown}: the port is not a number from 1 to 65535") from None
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise RunError(
                f"tracking store {shown} is unreachable ({host}:{port}: {exc.strerror or type(exc).__name__}); "
                "start it, or pass another --tracking-uri, or --no-track"
            ) from None
        if scheme in ("http", "https"):
            check_answers(uri)
    database = sqlite_path(uri)
    if database is None:
        if scheme == "sqlite":
            raise RunError(f"tracking URI {shown}: expected sqlite:///PATH (three slashes, then the file's path)")
        return
    if database.exists():
        if not database.is_file():
            raise RunError(f"tracking store {database} is not a file")
        if write and not os.access(database, os.W_OK):
            raise RunError(f"tracking store {database} is read-only; pass another --tracking-uri, or --no-track")
        return
    folder = database.parent
    if not folder.is_dir():
        raise RunError(f"tracking store {database}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunError(
            f"tracking store {database} cannot be created: {folder} is read-only; pass --tracking-uri "
            "sqlite:////a/writable/mlflow.db, or --no-track"
        )
    if not write:
        raise RunError(f"no tracking store {database} (nothing was tracked here); pass --tracking-uri")


BUSY_RETRIES = 8  # sqlite answers "database is locked" when another run holds the write lock past its timeout


class BusyRetryingClient:
    """An MlflowClient whose calls are retried, with growing pauses, while sqlite reports the database busy (each
    failed call was rolled back, so a retry writes once)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(BUSY_RETRIES + 1):
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if attempt == BUSY_RETRIES or not _is_busy(exc):
                        raise
                    time.sleep(min(0.1 * 2**attempt, 5.0))
            raise AssertionError("unreachable")

        return call


class _HideBusyErrors(logging.Filter):
    """MLflow logs every "database is locked" with a traceback before raising it; BusyRetryingClient retries those
    and raises the last one, so the log record is noise (a hundred lines on stderr for a call that then succeeds)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(_is_busy(arg) for arg in record.args or () if isinstance(arg, BaseException)) and not (
            record.exc_info and record.exc_info[1] is not None and _is_busy(record.exc_info[1])
        )


_BUSY_FILTER = _HideBusyErrors()


def _is_busy(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) is sqlite's "database is locked" / "database is busy"."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen).lower()
        if "database is locked" in text or "database is busy" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def client_for(uri: str | None, *, write: bool = True) -> Any:
    """An MlflowClient on `uri` (or the default store), checked first; a sqlite store is created and migrated once,
    under a lock."""
    from mlflow import MlflowClient

    uri = normalize_uri(uri or default_tracking_uri())
    if uri not in _READY:
        check_store(uri, write=write)
    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    busy_logger = logging.getLogger("mlflow.store.db.utils")
    if _BUSY_FILTER not in busy_logger.filters:
        busy_logger.addFilter(_BUSY_FILTER)
    if uri in _READY:
        return BusyRetryingClient(MlflowClient(tracking_uri=uri))
    if not write:  # reading an existing store: no lock file beside it (its directory may be read-only)
        client = _open_sqlite(uri, database)
    else:
        with store_lock(database):
            if not database.exists():
                _create_sqlite(database)
                # Said on stderr: a store appearing wherever a script or notebook was started is otherwise a surprise.
                print(
                    f"advbayes: created the MLflow store {database} (--tracking-uri or MLFLOW_TRACKING_URI chooses "
                    "another; advbayes ui shows it)",
                    file=sys.stderr,
                )
            client = _open_sqlite(uri, database)
        _READY.add(uri)
    return BusyRetryingClient(client)


def _create_sqlite(database: Path) -> None:
    """Create a new store in a scratch file beside it (a copy of the cached template, else migrated by MLflow),
    then move it into place in one step: a run killed while the tables are built leaves only the scratch file
    (rebuilt next time), never a half-made store."""
    from advbayes.tracking.store_template import copy_template, forget_template, save_template

    scratch = database.with_name(f".{database.name}.creating")
    for name in (scratch.name, f"{scratch.name}-migrated"):  # a killed creation's journal must not roll into a new file
        for suffix in ("", "-journal", "-wal", "-shm"):
            scratch.with_name(name + suffix).unlink(missing_ok=True)
    if copy_template(scratch):  # the migrated tables, copied (store_template.py): MLflow adds the Default experiment
        try:
            _open_sqlite(f"sqlite:///{quote(str(scratch))}", scratch)
        except RunError:  # a template MLflow does not accept: migrate as if there were none
            forget_template()
            scratch.unlink(missing_ok=True)
            # under another name: MLflow keeps the engine of a URI it opened, connected to the deleted copy
            scratch = scratch.with_name(f"{scratch.name}-migrated")
        else:
            os.replace(scratch, database)
            return
    _open_sqlite(f"sqlite:///{quote(str(scratch))}", scratch)
    save_template(scratch)
    os.replace(scratch, database)


def _open_sqlite(uri: str, database: Path) -> Any:
    """An MlflowClient on a sqlite store, opened (created and migrated when new) and read once to prove it works."""
    from mlflow import MlflowClient

    quiet = logging.getLogger("mlflow.store.db.utils")  # it logs each database error with a traceback first
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    # MLflow creates the parent of the URI's path as written, percent-encoding and all: an empty twin directory
    stray = Path(uri[len("sqlite:///") :].split("?", 1)[0]).parent
    stray_existed = stray == database.parent or stray.exists()
    try:
        client = MlflowClient(tracking_uri=uri)  # opening a sqlite store creates its tables and runs migrations
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow and SQLAlchemy raise many kinds; each becomes one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"the MLflow store {database} cannot be opened ({type(exc).__name__}: {first}); if it is not a store or "
            f"a run was killed while creating it, move it away (mv {database} {database}.broken) and run again"
        ) from None
    finally:
        quiet.setLevel(level)
        if not stray_existed and stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()
    return client


def describe_store(uri: str | None) -> str:
    """Where runs would be tracked, checked as a run checks it, and whether the store exists yet."""
    uri = normalize_uri(uri or default_tracking_uri())
    check_store(uri, write=True)
    database = sqlite_path(uri)
    if database is None:
        return shown_uri(uri)
    return f"{uri} ({'exists' if database.exists() else 'would be created'})"


@contextmanager
def experiment_lock(client: Any) -> Iterator[None]:
    """Serialise concurrent runs' read-modify-writes of experiment tags: the store's file lock for sqlite (a
    server store's tags are set one by one; see set_changed_tags)."""
    database = sqlite_path(client.tracking_uri)
    if database is None:
        yield
        return
    with store_lock(database):
        yield


def set_changed_tags(client: Any, experiment: str, tags: Mapping[str, str]) -> None:
    """Set the experiment's tags whose value differs; call it under experiment_lock (which is not re-entrant).
    Two runs adding the same new tag at once make MLflow insert it twice (UNIQUE constraint failed): the lock
    prevents that for sqlite, and on a server store the loser's second try updates the row the winner inserted."""
    current = client.get_experiment(experiment).tags
    for key, value in tags.items():
        if current.get(key) != value:
            set_racing(client.set_experiment_tag, experiment, key, value)


def set_racing(set_tag: Callable[[str, str, str], Any], owner: str, key: str, value: str) -> None:
    """set_tag(owner, key, value) where another process may add the same new tag at the same moment: MLflow's
    SQL store reads, then inserts, so the loser fails on the unique key (PostgreSQL's tag_pk); its second try
    finds the row and updates it. A second failure is raised."""
    try:
        set_tag(owner, key, value)
    except Exception:  # noqa: BLE001 - the concurrent insert, reported differently by every store
        set_tag(owner, key, value)


def tracked_run(client: Any, run_id: str, purpose: str) -> Any:
    """The run `run_id` of the store, or one line starting with `purpose`: no such run, or the store's own error
    (a timeout is not a missing run)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RunError(f"{purpose}: no such run in {shown_uri(client.tracking_uri)}") from None
        reason = error_text(exc)[:300]
        raise RunError(f"{purpose}: the store {shown_uri(client.tracking_uri)} could not be read ({reason})") from None
