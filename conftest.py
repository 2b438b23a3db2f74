"""Shared fixtures: an isolated working directory and MLflow store, and installable fixture plugins."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from advbayes.plugins import reset_plugin_manager


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test runs in its own directory, so ./mlflow.db and ./registry.toml are its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ADVBAYES_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("ADVBAYES_DISABLE_PLUGINS", raising=False)
    reset_plugin_manager()
    yield tmp_path
    reset_plugin_manager()


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A temporary MLflow sqlite store."""
    (tmp_path / "store").mkdir()
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where tests install fixture plugin distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    for name in [m for m in sys.modules if m.startswith("advbayes_fixture")]:
        del sys.modules[name]
    importlib.invalidate_caches()
