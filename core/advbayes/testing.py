"""Fixtures and helpers for testing advbayes plugins, so that a plugin's tests import only `advbayes` and run from
the plugin's own directory.

In the plugin's `tests/conftest.py`::

    from advbayes.testing import isolated_cwd, plugin_site, store  # noqa: F401 - pytest fixtures

and in its tests: `build_entry("defenses", {"use": "my-defense"})` (an entry through the real plugin manager),
`run_tiny(defense="my-defense")` (a seconds-long experiment, untracked), `assert_one_clear_error(action, "key
'sigma'")` (bad input fails before any work with one line naming it), `draw_network` (draw s of a Bayesian
network as a plain torch network, the independent reference for per-draw results).
"""

from __future__ import annotations

import copy
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from advbayes.errors import AdvbayesError
from advbayes.plugins import PluginManager, create_plugin_manager, reset_plugin_manager

if TYPE_CHECKING:
    from torch import nn

    from advbayes.registry import Registry
    from advbayes.results import RunGroup, RunResult

__all__ = [
    "assert_one_clear_error",
    "batched_draws",
    "build_entry",
    "create_plugin_manager",
    "draw_network",
    "install_fixture_plugin",
    "isolated_cwd",
    "observed_splits",
    "plugin_site",
    "plugin_registry",
    "run_tiny",
    "store",
    "write",
]

TINY_EXPERIMENT = "moons"  # the core's two-moons MLP: seconds on a CPU, no data set to download


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test runs in its own directory, so ./mlflow.db and ./registry.toml are its own, with no plugin
    selection from the environment and a fresh plugin manager."""
    monkeypatch.chdir(tmp_path)
    for variable in ("MLFLOW_TRACKING_URI", "ADVBAYES_LOAD_PLUGINS", "ADVBAYES_DISABLE_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    reset_plugin_manager()
    yield tmp_path
    reset_plugin_manager()


@pytest.fixture
def batched_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stochastic model runs its S draws in one pass (ADVBAYES_STRATEGY=batched, inherited by worker
    processes): for tests that check an experiment runs end to end, where the auto strategy's timing race would
    only add seconds per model; the race itself is tested on its own."""
    monkeypatch.setenv("ADVBAYES_STRATEGY", "batched")


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A temporary MLflow sqlite store (its tracking URI)."""
    (tmp_path / "store").mkdir()
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where a test installs plugin distributions with install_fixture_plugin."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    before = set(sys.modules)
    yield site
    for name in set(sys.modules) - before:  # the fixture plugins' modules go with their directory
        module = sys.modules.get(name)
        if str(getattr(module, "__file__", "") or "").startswith(str(site)):
            del sys.modules[name]
    importlib.invalidate_caches()


# ------------------------------------------------------------------------------------------------- helpers


def plugin_registry(*files: str | Path, pm: PluginManager | None = None) -> Registry:
    """The registry every installed plugin adds to (and `files`), through a fresh real plugin manager."""
    from advbayes.registry import load_registry

    return load_registry(files, pm=pm or create_plugin_manager(), include_cwd=False)


def build_entry(kind: str, entry: str | Mapping[str, Any], *, using: Registry | None = None) -> Any:
    """The component an entry builds, as a run builds it: `kind` is "defenses", "attacks", "metrics", "models" or
    "datasets"; `entry` an entry name, a component name or an inline table. Bad parameters raise RegistryError."""
    loaded = using or plugin_registry()
    resolved = loaded.resolve(kind, dict(entry) if isinstance(entry, Mapping) else entry, where=("test", "", kind))
    return loaded.build(kind, resolved)


def run_tiny(experiment: str = TINY_EXPERIMENT, *, epochs: int = 1, **overrides: Any) -> RunResult | RunGroup:
    """Run `experiment` (the two-moons MLP by default) for `epochs`, untracked, through a fresh plugin manager;
    keyword arguments are the dotted-key overrides of `advbayes.run` (defense=..., attacks=[...])."""
    from advbayes.engine import run

    pm = overrides.pop("pm", None) or create_plugin_manager()
    return run(experiment, track=False, pm=pm, epochs=epochs, **overrides)


def assert_one_clear_error(
    action: Callable[[], object], *fragments: str, error: type[BaseException] = AdvbayesError
) -> BaseException:
    """Call `action` and check it fails with `error` whose message is one line holding every fragment (what was
    wrong, where, what was expected); returns the exception for further checks."""
    with pytest.raises(error) as raised:
        action()
    message = str(raised.value)
    assert message.strip(), f"{type(raised.value).__name__} with an empty message"
    assert "\n" not in message.strip(), f"a message of several lines: {message!r}"
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"{message!r} does not name {missing}"
    return raised.value


def draw_network(original: nn.Module, stochastic: nn.Module, s: int) -> nn.Module:
    """Draw s of a stochastic model (to_bayesian of `original`, after a forward) as a plain torch network: the
    original with w = mu + sigma * noise[s] and the draw's BatchNorm statistics."""
    from torch import nn

    from advbayes.stochastic import BayesBatchNorm2d, StochasticLayer

    plain = copy.deepcopy(original)
    for name, module in stochastic.net.named_modules():  # type: ignore[union-attr]
        if isinstance(module, StochasticLayer):
            target = plain.get_submodule(name)
            for attr in ("weight", "bias"):
                gaussian = getattr(module, attr)
                if gaussian is not None:
                    value = gaussian.mu + gaussian.sigma * gaussian.noise[s]
                    setattr(target, attr, nn.Parameter(value.detach().clone()))
            if isinstance(module, BayesBatchNorm2d):
                target.running_mean.copy_(module.running_mean)  # type: ignore[operator]
                target.running_var.copy_(module.running_var)  # type: ignore[operator]
    return plain


def install_fixture_plugin(site: Path, name: str, source: str, version: str = "0.1.0") -> None:
    """Install a one-module plugin distribution into `site` (the plugin_site fixture) as pip would: the module,
    its METADATA and its advbayes entry point."""
    module = name.replace("-", "_")
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{module}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[advbayes]\n{name} = {module}\n")
    (dist_info / "RECORD").write_text("")


def write(path: Path, text: str) -> Path:
    """Write dedented text to a file (a registry file, a claims file) and return its path."""
    path.write_text(textwrap.dedent(text))
    return path


@contextmanager
def observed_splits() -> Iterator[dict[str, Any]]:
    """Within the block, every run records what it trained on ("train": the data set after the defense's
    before_training), what it evaluated on ("test") and its Dataset component ("dataset")."""
    from advbayes.engine.evaluation import Evaluator
    from advbayes.engine.training import Trainer

    seen: dict[str, Any] = {}
    train, evaluate = Trainer.train, Evaluator.evaluate

    def observed_train(self: Trainer, net: Any, batches: Any, context: Any) -> None:
        seen["train"] = batches.dataset
        train(self, net, batches, context)

    def observed_evaluate(self: Evaluator, net: Any, test: Any) -> Sequence[Any]:
        seen["test"], seen["dataset"] = test.dataset, self.parts.dataset
        return evaluate(self, net, test)

    Trainer.train, Evaluator.evaluate = observed_train, observed_evaluate  # type: ignore[method-assign,assignment]
    try:
        yield seen
    finally:
        Trainer.train, Evaluator.evaluate = train, evaluate  # type: ignore[method-assign]
