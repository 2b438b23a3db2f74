"""One writer per tracked run: a lease claimed through the store's own compare-and-set and kept by a heartbeat.

MLflow refuses to change a param once logged (its store checks it in the same transaction, under the params
table's primary key), so writer number k of a run is the param `advbayes.writer.k`: of two processes claiming the
same number, exactly one succeeds, on sqlite, PostgreSQL and a tracking server alike. The holder's heartbeat tag
says it still runs; a holder that is gone (its process dead on this machine, or silent past LEASE_EXPIRY
elsewhere) can be replaced by the next number, and a replaced holder finds out before its next write."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advbayes.errors import RunError, error_text
from advbayes.tracking.store import sqlite_path

WRITER_PREFIX = "advbayes.writer."
HEARTBEAT_TAG = "advbayes.heartbeat"
HEARTBEAT_SECONDS = 20.0
LEASE_EXPIRY = 120.0  # seconds without a heartbeat after which a holder on another machine counts as gone
# A process on this machine with the holder's id that started this long after the holder's claim is another one.
# Wide, because the clock the start time is read against can be stepped (NTP): a holder judged gone by mistake
# would let a second writer in, one judged alive by mistake only refuses a resume.
PID_REUSE_MARGIN = 60.0


def writers(params: Mapping[str, str]) -> dict[int, dict[str, Any]]:
    """The run's writers by number, read from its params (holders that do not parse are kept as unknown)."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        number = key[len(WRITER_PREFIX) :]
        if key.startswith(WRITER_PREFIX) and number.isdigit():
            try:
                holder = json.loads(value)
            except ValueError:
                holder = {}
            found[int(number)] = holder if isinstance(holder, dict) else {}
    return found


def current_writer(run: Any) -> tuple[int, dict[str, Any]] | None:
    """(number, holder) of the run's latest writer; None for a run tracked before leases existed."""
    found = writers(run.data.params)
    if not found:
        return None
    number = max(found)
    return number, found[number]


def describe(holder: Mapping[str, Any]) -> str:
    """A holder as a person reads it: process 123 on host-a (since 2026-12-04 05:01:02)."""
    since = holder.get("since")
    when = f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))})" if isinstance(since, int) else ""
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}{when}"


def last_heartbeat(run: Any, number: int, holder: Mapping[str, Any]) -> float | None:
    """When writer `number` last said it runs: its latest heartbeat, else its claim; None if neither is known."""
    times = [holder["since"]] if isinstance(holder.get("since"), int) else []
    try:
        beat = json.loads(run.data.tags.get(HEARTBEAT_TAG, "{}"))
    except ValueError:
        beat = {}
    if isinstance(beat, dict) and beat.get("writer") == number and isinstance(beat.get("at"), (int, float)):
        times.append(beat["at"])
    return max(times) if times else None


def holder_state(run: Any, number: int | None, holder: Mapping[str, Any]) -> str:
    """Whether writer `number` (None: a run tracked before leases, its holder read from its tags) is "alive",
    "stale" (gone: its process here is dead or its id now names a process that started after the claim, or it was
    silent past LEASE_EXPIRY) or "elsewhere" (another machine, no heartbeat to judge by)."""
    host, pid = holder.get("host"), str(holder.get("pid", ""))
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return "stale"
        except PermissionError:  # a process of another user holds that id: alive, unless it started later
            pass
        since, started = holder.get("since"), process_start(int(pid))
        if isinstance(since, int) and started is not None and started > since + PID_REUSE_MARGIN:
            return "stale"  # the id was given to a new process (a reboot, a restarted container): the holder is gone
        return "alive"
    beat = last_heartbeat(run, number, holder) if number is not None else None
    if beat is None:
        return "elsewhere"
    return "alive" if time.time() - beat < LEASE_EXPIRY else "stale"


class Lease:
    """This process's claim on one run: a heartbeat thread renews it; check() fails once another writer took over."""

    def __init__(self, client: Any, run_id: str, number: int, holder: dict[str, Any]) -> None:
        self.client = client
        self.run_id = run_id
        self.number = number
        self.holder = holder
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.database = sqlite_path(client.tracking_uri)
        self._identity = _file_identity(self.database)

    def beat(self) -> None:
        """Record that the holder still runs."""
        beat = json.dumps({"writer": self.number, "at": round(time.time(), 3)})
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, beat)

    def start(self) -> Lease:
        """Beat now and every HEARTBEAT_SECONDS on a daemon thread until stop()."""
        self.beat()
        self._thread = threading.Thread(target=self._beat_until_stopped, name="advbayes-lease", daemon=True)
        self._thread.start()
        return self

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - handed to the run's next write by check(), not printed here
                self.failure = exc
                return

    def stop(self) -> None:
        """End the heartbeat (the run is over, or no longer ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS)

    def holds(self) -> bool:
        """Whether this process is still the run's latest writer (read from the store)."""
        return self._is_mine(current_writer(self.client.get_run(self.run_id)))

    def _is_mine(self, latest: tuple[int, dict[str, Any]] | None) -> bool:
        return latest is not None and latest[0] == self.number and latest[1].get("token") == self.holder["token"]

    def store_gone(self) -> bool:
        """Whether the sqlite store file was deleted or replaced since the claim (writes would go nowhere)."""
        return self.database is not None and _file_identity(self.database) != self._identity

    def fail_if_store_gone(self) -> None:
        """Fail, in one line, if the store was deleted or replaced since the claim."""
        if self.store_gone():
            raise RunError(
                f"run {self.run_id}: the MLflow store {self.database} was deleted or replaced during the run; "
                "stopping (nothing more can be recorded in it)"
            )

    def check(self) -> None:
        """Fail, in one line, if the store was deleted, another process took the run over or the heartbeat could
        not be written."""
        self.fail_if_store_gone()
        if self.failure is not None:
            raise RunError(
                f"run {self.run_id}: its heartbeat could not be written to the store "
                f"({error_text(self.failure)[:200]}); stopping, so that no second writer and this one overlap"
            )
        latest = current_writer(self.client.get_run(self.run_id))
        if not self._is_mine(latest):
            other = describe(latest[1]) if latest else "another process"
            raise RunError(
                f"run {self.run_id} was taken over by {other} (this process's heartbeat went unseen for "
                f"{LEASE_EXPIRY:g} s); this process stops writing to it"
            )


def _file_identity(path: Path | None) -> tuple[int, int] | None:
    try:
        found = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if found is not None else None


def process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime; the name may hold spaces
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex[:12], "since": int(time.time())}


def claim(client: Any, run_id: str, *, purpose: str) -> Lease:
    """Become the run's writer: refused, in one line naming the holder, while the current one is alive, and for
    the loser when two processes claim at once. `purpose` starts the error line (--resume ID, runs --close ID)."""
    from mlflow.exceptions import MlflowException

    run = client.get_run(run_id)
    latest = current_writer(run)
    if latest is not None:
        number, holder = latest
        if run.info.status == "RUNNING" and holder_state(run, number, holder) == "alive":
            raise RunError(f"{purpose}: the run is being written by {describe(holder)}; only one process writes a run")
    me = _me()
    number = latest[0] + 1 if latest is not None else 0
    value = json.dumps(me, sort_keys=True)
    try:
        client.log_param(run_id, f"{WRITER_PREFIX}{number}", value)
    except MlflowException:
        pass  # another process logged this number first (MLflow refuses to change a param): read who
    taken = writers(client.get_run(run_id).data.params).get(number)
    if taken is None:  # the param is not there: the failure was not the race, so say what it was
        client.log_param(run_id, f"{WRITER_PREFIX}{number}", value)
        taken = me
    if taken.get("token") != me["token"]:
        raise RunError(f"{purpose}: {describe(taken)} took the run at the same moment; only one process writes a run")
    return Lease(client, run_id, number, me)
