"""One writer per tracked run (tracking/lease.py): the store's param compare-and-set decides who writes, a live
holder is refused in one line naming it, a dead or silent one is replaced, a replaced one stops before writing;
`runs --close` ends a dead run; two resumes started together leave one writer and no duplicate rows."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import advbayes
from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.plugins import create_plugin_manager
from advbayes.tracking import lease as leases
from advbayes.tracking.lease import HEARTBEAT_TAG, LEASE_EXPIRY, WRITER_PREFIX, claim, writers
from advbayes.tracking.runs import close_run, liveness, next_step
from advbayes.tracking.store import client_for
from helpers import InterruptAfterEpoch


def new_run(store: str) -> str:
    """A bare RUNNING run in the store."""
    client = client_for(store)
    experiment = client.create_experiment(f"e{time.monotonic_ns()}")
    return client.create_run(experiment, tags={"advbayes.role": "parent", "advbayes.experiment": "moons"}).info.run_id


def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def plant_writer(store: str, run_id: str, number: int, host: str, pid: int, since: float) -> None:
    """Record writer `number` as another process would have claimed it."""
    holder = {"host": host, "pid": pid, "token": f"t{number}", "since": int(since)}
    MlflowClient(store).log_param(run_id, f"{WRITER_PREFIX}{number}", json.dumps(holder))


def test_the_first_claim_is_writer_zero_and_a_live_holder_is_refused_by_name(store: str) -> None:
    run_id = new_run(store)
    client = client_for(store)
    lease = claim(client, run_id, purpose="run x")
    assert lease.number == 0 and lease.holds()
    assert json.loads(client.get_run(run_id).data.params[f"{WRITER_PREFIX}0"])["token"] == lease.holder["token"]
    # this test's own process holds it, and is alive
    with pytest.raises(RunError, match=rf"^--resume {run_id}: the run is being written by process \d+ on "):
        claim(client, run_id, purpose=f"--resume {run_id}")
    assert set(writers(client.get_run(run_id).data.params)) == {0}


def test_a_dead_holder_here_is_replaced_and_the_replaced_lease_fails_its_check(store: str) -> None:
    run_id = new_run(store)
    plant_writer(store, run_id, 0, socket.gethostname(), dead_pid(), time.time())
    client = client_for(store)
    assert liveness(client.get_run(run_id)) == "stale"
    lease = claim(client, run_id, purpose="--resume r")
    assert lease.number == 1
    assert liveness(client.get_run(run_id)) == "alive"
    lease.check()  # still ours
    plant_writer(store, run_id, 2, "elsewhere-host", 7, time.time())  # taken over (say, after a partition)
    assert not lease.holds()
    with pytest.raises(RunError, match=rf"^run {run_id} was taken over by process 7 on elsewhere-host"):
        lease.check()


def test_a_write_that_fails_because_the_store_was_deleted_after_the_check_says_so_in_one_line(store: str) -> None:
    """The race a full suite once hit: the lease is checked, the store file is deleted, and the next write fails
    with the database's own words ("Query-invoked autoflush"). The run's error names the deletion instead; any
    other failed write keeps its own error."""
    from mlflow.exceptions import MlflowException

    from advbayes.tracking.hooks import _lease_checked

    run_id = new_run(store)
    lease = claim(client_for(store), run_id, purpose=f"run {run_id}")
    run = SimpleNamespace(tracking={"lease": lease})
    unrelated = MlflowException("(raised as a result of Query-invoked autoflush)")
    with pytest.raises(MlflowException, match="autoflush"), _lease_checked(run):  # the store is there: as raised
        raise unrelated
    with pytest.raises(RunError, match=rf"^run {run_id}: the MLflow store .* was deleted or replaced during the run"):
        with _lease_checked(run):  # the check passes; the file goes; the write fails
            Path(store.removeprefix("sqlite:///")).unlink()
            raise unrelated
    with pytest.raises(RunError, match="was deleted or replaced"), _lease_checked(run):  # and the next check says so
        pass


def test_a_holder_on_another_machine_is_alive_while_its_heartbeat_is_fresh(store: str) -> None:
    run_id = new_run(store)
    client = client_for(store)
    plant_writer(store, run_id, 0, "other-host", 12, time.time() - 10 * LEASE_EXPIRY)
    client.set_tag(run_id, HEARTBEAT_TAG, json.dumps({"writer": 0, "at": time.time()}))
    with pytest.raises(RunError, match="being written by process 12 on other-host"):
        claim(client, run_id, purpose="--resume r")
    # silent past the expiry: gone; a heartbeat of an earlier writer number does not count for this one
    client.set_tag(run_id, HEARTBEAT_TAG, json.dumps({"writer": 0, "at": time.time() - 2 * LEASE_EXPIRY}))
    assert liveness(client.get_run(run_id)) == "stale"
    plant_writer(store, run_id, 1, "other-host", 13, time.time() - 10 * LEASE_EXPIRY)
    client.set_tag(run_id, HEARTBEAT_TAG, json.dumps({"writer": 0, "at": time.time()}))
    assert liveness(client.get_run(run_id)) == "stale"
    assert claim(client, run_id, purpose="--resume r").number == 2


def test_of_two_claims_of_one_number_the_store_lets_exactly_one_win(store: str) -> None:
    """The race itself: another process logs writer 1 between our read and our write; MLflow refuses our value
    for that param, and the claim names the winner."""
    run_id = new_run(store)
    plant_writer(store, run_id, 0, socket.gethostname(), dead_pid(), time.time())
    client = client_for(store)

    class Racing:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def log_param(self, run: str, key: str, value: str) -> Any:
            plant_writer(store, run, int(key[len(WRITER_PREFIX) :]), "winner-host", 99, time.time())
            return self.inner.log_param(run, key, value)

    with pytest.raises(RunError, match=r"^--resume r: process 99 on winner-host .*took the run at the same moment"):
        claim(Racing(client), run_id, purpose="--resume r")
    assert json.loads(client.get_run(run_id).data.params[f"{WRITER_PREFIX}1"])["host"] == "winner-host"


def test_the_heartbeat_renews_the_lease_and_a_failed_heartbeat_stops_the_writer(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "HEARTBEAT_SECONDS", 0.05)
    run_id = new_run(store)
    client = client_for(store)
    lease = claim(client, run_id, purpose="run r").start()
    first = json.loads(client.get_run(run_id).data.tags[HEARTBEAT_TAG])["at"]
    deadline = time.monotonic() + 10
    while json.loads(client.get_run(run_id).data.tags[HEARTBEAT_TAG])["at"] == first:
        assert time.monotonic() < deadline, "no second heartbeat"
        time.sleep(0.05)
    lease.stop()

    class BrokenAfterOneBeat:
        beats = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def set_tag(self, *args: Any) -> None:
            self.beats += 1
            if self.beats > 1:
                raise OSError("store went away")
            client.set_tag(*args)

    broken = leases.Lease(BrokenAfterOneBeat(), run_id, lease.number, lease.holder).start()
    while broken.failure is None:
        assert time.monotonic() < deadline + 10, "the failed heartbeat was not recorded"
        time.sleep(0.05)
    with pytest.raises(RunError, match=rf"^run {run_id}: its heartbeat could not be written .*store went away"):
        broken.check()
    broken.stop()


def test_runs_close_ends_a_dead_run_and_refuses_a_live_or_finished_one(store: str) -> None:
    client = client_for(store)
    run_id = new_run(store)
    plant_writer(store, run_id, 0, socket.gethostname(), dead_pid(), time.time())
    child = client.create_run(
        client.get_run(run_id).info.experiment_id, tags={"mlflow.parentRunId": run_id, "advbayes.role": "attack"}
    )
    assert (
        next_step(client, client.get_run(run_id))
        == f"no checkpoint: advbayes runs --close {run_id}; advbayes run moons"
    )
    result = CliRunner().invoke(cli, ["runs", "--close", run_id, "--tracking-uri", store])
    assert result.exit_code == 0 and result.output == f"run {run_id} (moons) marked FAILED\n", result.output
    closed = client.get_run(run_id)
    assert closed.info.status == "FAILED" and "RUNNING (stale)" in closed.data.tags["advbayes.closed"]
    assert client.get_run(child.info.run_id).info.status == "FAILED"
    assert next_step(client, closed) == ""  # never offered again
    with pytest.raises(RunError, match="the run is closed already"):
        close_run(store, run_id)
    live = new_run(store)
    claim(client, live, purpose="run")  # this process: alive
    with pytest.raises(RunError, match=rf"^runs --close {live}: the run is being written by process \d+"):
        close_run(store, live)
    client.set_terminated(live, status="FINISHED")
    with pytest.raises(RunError, match="the run is FINISHED already"):
        close_run(store, live)
    with pytest.raises(RunError, match="no such run"):
        close_run(store, "0" * 32)


@pytest.mark.slow  # two fresh processes that import torch: about 20 s
def test_two_resumes_started_together_leave_one_writer_and_no_duplicate_rows(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pm = create_plugin_manager()
    pm.register(InterruptAfterEpoch(2), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, epochs=300, pm=pm, **{"dataset.train_size": 200})
    run_id = raised.value.advbayes_run_id
    # What kill -9 after epoch 2 leaves (no run_finished): RUNNING, its writer a process that is gone. 298 epochs
    # left keep the winner writing for seconds, so the second resume meets a live lease, not a FINISHED run.
    MlflowClient(store).update_run(run_id, status="RUNNING")
    plant_writer(store, run_id, 1, socket.gethostname(), dead_pid(), time.time())
    assert liveness(MlflowClient(store).get_run(run_id)) == "stale"
    command = [sys.executable, "-m", "advbayes.cli", "run", "--resume", run_id, "--tracking-uri", store]
    resumes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=600), *p.communicate()) for p in resumes]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], outcomes  # 2: refused before work
    (refused,) = [err for code, _, err in outcomes if code == 2]
    assert len(refused.splitlines()) == 1, refused
    assert refused.startswith(f"Error: --resume {run_id}: ") and "process " in refused, refused
    assert "being written by" in refused or "took the run at the same moment" in refused, refused
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(writers(run.data.params)) == [0, 1, 2]  # the original writer, the killed one, one resume
    history = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert history == list(range(1, 301)), history
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        duplicates = db.execute(
            "SELECT run_uuid, key, step, COUNT(*) FROM metrics GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
        ).fetchall()
        children = db.execute(
            "SELECT lifecycle_stage, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'mlflow.parentRunId' AND t.value = ? GROUP BY lifecycle_stage",
            (run_id,),
        ).fetchall()
    assert duplicates == []
    assert [stage for stage, _ in children] == ["active"]  # no attack run deleted and made again


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times are read from /proc")
def test_a_holder_id_taken_by_a_process_started_after_the_claim_is_stale_and_the_run_resumable(
    store: str, tmp_path: Path
) -> None:
    """After a reboot or a restarted container the holder's process id may name another, live process: one that
    started more than PID_REUSE_MARGIN after the claim is not the holder. The start time is checked against the
    clock around a real start, for a process whose name holds spaces and parentheses."""
    odd = tmp_path / "x) (y z"
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd.symlink_to(sleep)
    before = time.time()
    sleeper = subprocess.Popen([str(odd), "30"])
    after = time.time()
    try:
        time.sleep(0.2)
        assert Path(f"/proc/{sleeper.pid}/stat").read_text().split(" ", 1)[1].startswith("(x) (y z)")
        started = leases.process_start(sleeper.pid)
        assert started is not None and before - 1.5 <= started <= after + 1.5, (before, started, after)
        run_id = new_run(store)
        client = client_for(store)
        plant_writer(store, run_id, 0, socket.gethostname(), sleeper.pid, before - 3600)  # claimed an hour ago
        assert liveness(client.get_run(run_id)) == "stale"
        assert claim(client, run_id, purpose="--resume r").number == 1
        plant_writer(store, run_id, 2, socket.gethostname(), sleeper.pid, after)  # claimed after it started: alive
        with pytest.raises(RunError, match=rf"^--resume r: the run is being written by process {sleeper.pid} on "):
            claim(client, run_id, purpose="--resume r")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert leases.process_start(sleeper.pid) is None  # gone: nothing to read
