"""Shared fixtures, the same ones plugin authors get from advbayes.testing: an isolated working directory (autouse),
a temporary MLflow store and a site directory for installable fixture plugins. And three things for the suite: its
temporary files in memory, its collection order (each worker starts on its share of the tests marked slow, for speed)
and a cache of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from advbayes.output_cache import CACHE_ENV
from advbayes.testing import batched_draws, isolated_cwd, plugin_site, store  # noqa: F401 - pytest finds fixtures by name

MEMORY_TMP = Path("/dev/shm")
MEMORY_TMP_FREE = 2 * 2**30  # the suite writes ~160 MB of stores and checkpoints; Ray's object store takes 256 MB
SESSION_TMP = "_advbayes_session_tmp"


def in_memory(folder: Path, mounts_file: Path = Path("/proc/mounts")) -> bool:
    """Whether `folder` is a writable tmpfs mount point with MEMORY_TMP_FREE bytes free."""
    try:
        mounts = mounts_file.read_text().splitlines()
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    tmpfs = any(line.split()[1:3] == [str(folder), "tmpfs"] for line in mounts)  # device, mount point, type
    return tmpfs and usage.free >= MEMORY_TMP_FREE and os.access(folder, os.W_OK | os.X_OK)


def pytest_configure(config: pytest.Config) -> None:
    """The suite's temporary files (tmp_path, and TMPDIR for what the tests and their processes create) in memory
    where /dev/shm is a tmpfs. On this disk (ext4 mounted with discard) deleting one session's 160 MB of temporary
    folders took 8.4 s, which pytest pays at the end of each session for the oldest of the 3 it keeps, and every
    sqlite commit of a tracked run waits for its fsync: tests/test_run.py alone took 125-141 s on disk and 82-98 s
    in memory (serially, beside other load). Not where the user chose a place (TMPDIR, --basetemp,
    PYTEST_DEBUG_TEMPROOT); xdist's workers inherit it."""
    if hasattr(config, "workerinput") or config.option.basetemp or not in_memory(MEMORY_TMP):
        return
    if os.environ.get("TMPDIR") or os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return
    session_tmp = tempfile.mkdtemp(prefix="advbayes-tests-", dir=MEMORY_TMP)  # this session's: removed at its end
    os.chmod(session_tmp, 0o1777)  # as /tmp: the test's PostgreSQL runs as its own user and keeps its cluster here
    os.environ["TMPDIR"] = session_tmp
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(MEMORY_TMP)  # pytest's numbered folders, the last 3 kept as always
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    setattr(config, SESSION_TMP, session_tmp)


def pytest_unconfigure(config: pytest.Config) -> None:
    """This session's TMPDIR goes with it (run folders of processes the tests killed, Ray's session logs)."""
    session_tmp = getattr(config, SESSION_TMP, None)
    if session_tmp:
        shutil.rmtree(session_tmp, ignore_errors=True)
        for name in ("TMPDIR", "PYTEST_DEBUG_TEMPROOT"):
            os.environ.pop(name, None)
        tempfile.tempdir = None


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
