"""advbayes.testing, the helpers plugin authors test with: each does what it says and fails when it should."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import advbayes
from advbayes.testing import (
    assert_one_clear_error,
    build_entry,
    draw_network,
    install_fixture_plugin,
    observed_splits,
    plugin_registry,
    run_tiny,
)


def test_build_entry_builds_what_a_run_builds_and_rejects_bad_parameters() -> None:
    attack = build_entry("attacks", {"use": "fgsm", "eps": 0.25})
    assert type(attack).__name__ == "FGSM" and attack.eps == 0.25
    registry = plugin_registry()
    from_registry = registry.build("attacks", registry.resolve("attacks", "fgsm", where=("t", "t", "t")))
    assert build_entry("attacks", "fgsm", using=registry) == from_registry
    error = assert_one_clear_error(lambda: build_entry("attacks", {"use": "fgsm", "eps": -1.0}), "key 'eps'")
    assert isinstance(error, advbayes.RegistryError)


def test_assert_one_clear_error_fails_on_a_missing_fragment_several_lines_or_no_error() -> None:
    def raise_(message: str) -> None:
        raise advbayes.RunError(message)

    assert_one_clear_error(lambda: raise_("key 'x': expected an int"), "key 'x'", "expected an int")
    with pytest.raises(AssertionError, match="does not name"):
        assert_one_clear_error(lambda: raise_("key 'x': expected an int"), "key 'y'")
    with pytest.raises(AssertionError, match="several lines"):
        assert_one_clear_error(lambda: raise_("first line\nsecond line"))
    with pytest.raises(pytest.fail.Exception):  # no error at all
        assert_one_clear_error(lambda: None)
    with pytest.raises(ValueError):  # another kind of error is not swallowed
        assert_one_clear_error(lambda: int("x"))


def test_run_tiny_runs_the_engine_and_observed_splits_sees_its_data() -> None:
    with observed_splits() as seen:
        result = run_tiny(attacks=["fgsm"], eps=[0.1])
    assert isinstance(result, advbayes.RunResult) and len(result.history) == 1
    assert [r.attack_label for r in result.records] == ["fgsm"] and result.records[0].eps == 0.1
    train_x, _ = seen["dataset"].data("train").tensors
    torch.testing.assert_close(seen["train"].tensors[0], train_x)  # a plain defense trains on the train split
    assert len(seen["test"]) == result.records[0].examples  # and is evaluated on every test example
    with observed_splits() as later:
        pass
    assert later == {}  # outside the block the engine is as it was


def test_draw_network_equals_the_stochastic_draw() -> None:
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model = advbayes.to_bayesian(original, init_sigma=0.1)
    x = torch.randn(5, 4)
    logits = model(x, 3)
    for s in range(3):
        torch.testing.assert_close(draw_network(original, model, s)(x), logits[s])


def test_install_fixture_plugin_is_found_by_a_fresh_plugin_manager(plugin_site) -> None:
    install_fixture_plugin(
        plugin_site,
        "advbayes-fixture-empty",
        """
        from advbayes import hookimpl

        @hookimpl
        def register_defenses(register):
            pass
        """,
    )
    assert "advbayes-fixture-empty" in advbayes.testing.create_plugin_manager().info


def suite_conftest() -> Any:
    """The suite's conftest.py as a module of its own (pytest's copy is not importable by name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite_conftest", Path(__file__).parents[1] / "conftest.py")
    assert spec is not None and spec.loader is not None
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def test_the_suites_order_starts_every_worker_on_slow_tests_and_keeps_an_xdist_group_on_one_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """conftest.py's collection order for pytest-xdist's worksteal, which hands each of N workers one contiguous
    block (what is left, split evenly, worker by worker): each block begins with its slow tests, the slow ones are
    spread over the blocks, a group's tests are in one block, and no test is lost or repeated."""
    from types import SimpleNamespace

    suite = suite_conftest()

    def item(name: str, *marks: tuple[str, tuple]) -> SimpleNamespace:
        found = {mark: SimpleNamespace(args=args) for mark, args in marks}
        return SimpleNamespace(nodeid=name, get_closest_marker=found.get)

    slow, warm = ("slow", ()), ("xdist_group", ("warm-ray",))
    items = [item(f"fast{i}") for i in range(7)] + [item(f"slow{i}", slow) for i in range(5)]
    items.insert(3, item("ray-a", slow, warm))
    items.append(item("ray-b", slow, warm))
    names = [i.nodeid for i in items]
    for workers in (2, 3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
        ordered = list(items)
        suite.pytest_collection_modifyitems(None, ordered)
        assert sorted(i.nodeid for i in ordered) == sorted(names)
        blocks, left, start = [], len(ordered), 0
        for w in range(workers):
            size = left // (workers - w)
            blocks.append([i.nodeid for i in ordered[start : start + size]])
            left, start = left - size, start + size
        for block in blocks:
            kinds = [name.startswith(("slow", "ray")) for name in block]
            assert kinds == sorted(kinds, reverse=True), block  # slow first, then fast
            assert any(kinds), block  # every worker starts on slow work
        assert sum("ray-a" in b and "ray-b" in b for b in blocks) == 1, blocks
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    ordered = list(items)
    suite.pytest_collection_modifyitems(None, ordered)
    assert [i.nodeid for i in ordered] == [n for n in names if n[0] != "f"] + [n for n in names if n[0] == "f"]


def test_the_suite_keeps_its_temporary_files_in_memory_only_on_a_tmpfs_mount_point_with_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conftest.py moves tmp_path and TMPDIR to /dev/shm only where /proc/mounts lists it as a tmpfs mount point
    with room; anywhere else the suite keeps pytest's own choice."""
    suite = suite_conftest()
    folder = tmp_path / "shm"
    folder.mkdir()
    mounts = tmp_path / "mounts"
    for line, expected in [
        (f"tmpfs {folder} tmpfs rw,relatime 0 0", True),
        (f"/dev/vda {folder} ext4 rw,relatime,discard 0 0", False),  # a disk
        (f"tmpfs {folder}/below tmpfs rw 0 0", False),  # another mount point
        ("", False),
    ]:
        mounts.write_text(f"proc /proc proc rw 0 0\n{line}\n")
        assert suite.in_memory(folder, mounts) is expected, line
    mounts.write_text(f"tmpfs {folder} tmpfs rw 0 0\n")
    assert not suite.in_memory(folder, tmp_path / "no-such-file")  # no /proc: not in memory
    monkeypatch.setattr(suite, "MEMORY_TMP_FREE", 2**62)
    assert not suite.in_memory(folder, mounts)  # too little room
