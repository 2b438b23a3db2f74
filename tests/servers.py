"""Real servers for tests (mlflow server, PostgreSQL, the MLflow UI), each started on 127.0.0.1 on a free port
in its own process group and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 240.0) -> str:
    """Poll `url` until it answers 200; fail with the server's output if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return response.read().decode("utf-8", "replace")
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    """Stop the server and its workers by PID (it leads its own process group); what it printed."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.stdout.read() if process.stdout else ""


def start(args: list[str], cwd: Path, **extra_env: str) -> subprocess.Popen:
    """`args` in its own process group (stop() ends it and every process it started), output captured."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **extra_env}
    return subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )


def mlflow_server_process(backend: str, artifacts: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` over `backend` with artifacts under `artifacts`, answering on its URL."""
    port = free_port()
    process = start(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        cwd,
        # as docs/scale.md's team server: no MLflow job runner and its 7 huey consumers (GenAI jobs advbayes never uses)
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process)
    except BaseException:
        print(stop(process))
        raise
    return process, url


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server in a fresh temporary cluster on 127.0.0.1 (run as the `postgres` user when we are
    root: PostgreSQL refuses root); yields its SQLAlchemy URI, stops it by PID and removes the cluster."""
    initdb = shutil.which("initdb")
    postgres = shutil.which("postgres")
    if initdb is None or postgres is None:
        import pytest

        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not on PATH")
    folder = Path(tempfile.mkdtemp(prefix="advbayes-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    data = folder / "data"
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    process = start([*prefix, postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(folder)], folder)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"postgres did not start: {stop(process)}") from None
                time.sleep(0.3)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop(process, sig=signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


def rendered_dom(url: str, timeout: float = 120.0) -> str | None:
    """The DOM of `url` after its JavaScript ran in headless Chromium (1,600 x 1,000, 30 s of virtual time), or
    None when no chromium is installed (Debian's package: apt-get install chromium)."""

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return None
    done = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1600,1000",
            "--virtual-time-budget=30000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def command_lines_in_group(leader: int) -> list[str]:
    """The command lines of the live processes in process group `leader` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            group = int(stat[stat.rindex(")") + 2 :].split()[2])
            if group == leader:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue  # not a process, or it ended while being read
    return found
