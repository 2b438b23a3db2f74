"""Plugins through the real plugin manager: built-ins, register/unregister, entry points, selection, clashes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from click.testing import CliRunner

from advbayes import hookspecs
from advbayes.cli import cli
from advbayes.errors import PluginError
from advbayes.plugins import PluginInfo, PluginLoadWarning, create_plugin_manager
from helpers import FailingDefense, ShiftAttack, TestComponents, install_fixture_plugin

GOOD_PLUGIN = '''
from typing import ClassVar
import attrs
import torch
from advbayes import Attack, AttackResult, hookimpl

@attrs.frozen(kw_only=True)
class Flip(Attack):
    """Negates the input."""
    name: ClassVar[str] = "flip"
    def __call__(self, model, x, y):
        return AttackResult(x_adv=-x, delta=-2 * x)

@hookimpl
def register_attacks(register):
    register(Flip)
'''


def test_builtins_are_plugins_with_their_components() -> None:
    pm = create_plugin_manager(entry_points=False)
    assert {"advbayes.builtins", "advbayes.tracking"} <= set(pm.info)
    assert pm.info["advbayes.builtins"].builtin
    index = pm.components
    assert index.names("datasets") == ["half-moons"]
    assert index.names("models") == ["mlp"]
    assert index.names("defenses") == ["standard"]
    assert index.names("attacks") == ["none"]
    assert index.names("metrics") == ["accuracy"]
    assert pm.hooks_of("advbayes.tracking") == [
        "checkpoint_saved",
        "epoch_finished",
        "evaluation_finished",
        "load_checkpoint",
        "load_model",
        "register_commands",
        "run_finished",
        "run_started",
    ]


def test_register_and_unregister_a_plugin() -> None:
    pm = create_plugin_manager(entry_points=False)
    assert pm.components.get("attacks", "shift") is None
    pm.register_plugin(TestComponents(), PluginInfo("test-components", "tests", "0", builtin=False))
    registration = pm.components.get("attacks", "shift")
    assert registration is not None and registration.cls is ShiftAttack
    assert registration.plugin == "test-components"
    assert pm.components.get("defenses", "failing").cls is FailingDefense
    assert pm.components.of_plugin("test-components") == {"defenses": ["diverging", "failing"], "attacks": ["shift"]}
    pm.unregister_plugin("test-components")
    assert pm.components.get("attacks", "shift") is None
    assert "test-components" not in pm.info


def test_two_plugins_registering_one_name_is_an_error_naming_both() -> None:
    @attrs.frozen(kw_only=True)
    class OtherShift(ShiftAttack):
        """Another attack under the same name."""

    class Again:
        @hookspecs.hookimpl
        def register_attacks(self, register: Any) -> None:
            register(OtherShift)

    pm = create_plugin_manager(entry_points=False)
    pm.register_plugin(TestComponents(), PluginInfo("first-plugin", "a", "0", builtin=False))
    pm.register_plugin(Again(), PluginInfo("second-plugin", "b", "0", builtin=False))
    with pytest.raises(
        PluginError, match=r"attack 'shift' is registered by two plugins: 'first-plugin' and 'second-plugin'"
    ):
        pm.components


def test_registering_something_that_is_not_a_component_is_an_error() -> None:
    class Bad:
        @hookspecs.hookimpl
        def register_models(self, register: Any) -> None:
            register(dict)

    pm = create_plugin_manager(entry_points=False)
    pm.register_plugin(Bad(), PluginInfo("bad-plugin", "bad", "0", builtin=False))
    with pytest.raises(
        PluginError, match=r"plugin 'bad-plugin': register_models expected an attrs subclass of advbayes.Model"
    ):
        pm.components


def test_a_component_that_forgot_its_attrs_decorator_is_refused_naming_plugin_and_class() -> None:
    from advbayes import Model, param
    from advbayes.registry import load_registry

    class Forgot(Model):  # no @attrs.frozen: `depth` would silently not be a registry parameter
        name = "forgot"
        depth: int = param(3, kind=int)

    class Careless:
        @hookspecs.hookimpl
        def register_models(self, register: Any) -> None:
            register(Forgot)

    pm = create_plugin_manager(entry_points=False)
    pm.register_plugin(Careless(), PluginInfo("careless-plugin", "careless", "0", builtin=False))
    with pytest.raises(PluginError, match=r"^plugin 'careless-plugin': Forgot is not an attrs class itself") as raised:
        load_registry(pm=pm).resolve("models", "forgot", where=("t", "t", "t"))
    assert "\n" not in str(raised.value)


def test_entry_point_plugin_is_discovered_with_its_version(plugin_site: Path) -> None:
    install_fixture_plugin(plugin_site, "advbayes-fixture-good", GOOD_PLUGIN, version="1.2.3")
    pm = create_plugin_manager()
    assert pm.info["advbayes-fixture-good"].version == "1.2.3"
    assert pm.info["advbayes-fixture-good"].distribution == "advbayes-fixture-good"
    assert pm.components.get("attacks", "flip").plugin == "advbayes-fixture-good"


def test_a_plugin_that_fails_to_import_is_reported_by_name_and_others_still_load(plugin_site: Path) -> None:
    install_fixture_plugin(plugin_site, "advbayes-fixture-good", GOOD_PLUGIN)
    install_fixture_plugin(plugin_site, "advbayes-fixture-broken", "raise ImportError('needs libfoo')\n")
    with pytest.warns(PluginLoadWarning, match=r"plugin 'advbayes-fixture-broken' .* failed to load .*needs libfoo"):
        pm = create_plugin_manager()
    assert [f.name for f in pm.failures] == ["advbayes-fixture-broken"]
    assert pm.components.get("attacks", "flip") is not None


JITTER_PLUGIN = """
from typing import ClassVar
import attrs
import torch
from advbayes import Defense, LossOutput, hookimpl

class Jittered(torch.nn.Module):
    takes_samples = DECLARED

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, samples=1):
        xs = x.unsqueeze(0).expand(samples, *x.shape)
        noisy = (xs + 0.3 * torch.randn_like(xs)).flatten(0, 1)
        return self.net(noisy).view(samples, x.shape[0], -1)

@attrs.frozen(kw_only=True)
class Jitter(Defense):
    name: ClassVar[str] = "jitter"

    def prepare(self, model):
        return Jittered(model)

    def loss(self, model, batch, context):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x, samples=1)[0], y)
        return LossOutput(loss=loss, parts={})

@hookimpl
def register_defenses(register):
    register(Jitter)
"""


@pytest.mark.parametrize("declared", [False, True])
def test_a_defense_network_that_takes_samples_must_say_so_or_its_draws_would_be_ignored(
    plugin_site: Path, declared: bool
) -> None:
    """A prepared network whose forward takes `samples` without `takes_samples = True` would be wrapped as
    deterministic (forward(x): one draw whatever S an attack asks); it is one line before any work instead."""
    from advbayes.components import prepared_model
    from advbayes.stochastic import is_stochastic
    from advbayes.testing import assert_one_clear_error, build_entry, run_tiny

    install_fixture_plugin(plugin_site, "advbayes-fixture-jitter", JITTER_PLUGIN.replace("DECLARED", str(declared)))
    if not declared:
        fragments = ("defense 'jitter'", "prepare() returned a Jittered", "takes_samples = True")
        assert_one_clear_error(lambda: run_tiny(defense="jitter", attacks=["none"]), *fragments)
        return
    net = prepared_model(
        build_entry("datasets", "half-moons"), build_entry("models", "mlp-small"), build_entry("defenses", "jitter")
    )
    x = torch.zeros(4, 2)
    assert tuple(net(x, samples=5).shape) == (5, 4, 2) and is_stochastic(net, x)
    result = run_tiny(defense="jitter", attacks=["none"])
    assert [r.attack_label for r in result.records] == ["none"]


LAZY_BROKEN_PLUGIN = """
from advbayes import hookimpl

@hookimpl
def register_datasets(register):
    import advbayes_fixture_missing_dependency  # imported in the hook, as the shipped plugins do

@hookimpl
def register_attacks(register):
    raise AssertionError("a plugin that failed in one register hook is not asked again")
"""


def test_a_plugin_whose_register_hook_fails_to_import_is_reported_and_registers_nothing(plugin_site: Path) -> None:
    install_fixture_plugin(plugin_site, "advbayes-fixture-good", GOOD_PLUGIN)
    install_fixture_plugin(plugin_site, "advbayes-fixture-lazy", LAZY_BROKEN_PLUGIN)
    pm = create_plugin_manager()
    assert "advbayes-fixture-lazy" in pm.info and not pm.failures  # loading the module itself is cheap and fine
    with pytest.warns(PluginLoadWarning, match=r"plugin 'advbayes-fixture-lazy' .* No module named"):
        index = pm.components
    assert [f.name for f in pm.failures] == ["advbayes-fixture-lazy"]
    assert index.get("attacks", "flip") is not None
    assert not index.of_plugin("advbayes-fixture-lazy")


def test_load_and_disable_environment_variables(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fixture_plugin(plugin_site, "advbayes-fixture-good", GOOD_PLUGIN)
    monkeypatch.setenv("ADVBAYES_LOAD_PLUGINS", "")
    assert "advbayes-fixture-good" not in create_plugin_manager().info
    monkeypatch.setenv("ADVBAYES_LOAD_PLUGINS", "advbayes-fixture-good")
    assert "advbayes-fixture-good" in create_plugin_manager().info
    monkeypatch.delenv("ADVBAYES_LOAD_PLUGINS")
    monkeypatch.setenv("ADVBAYES_DISABLE_PLUGINS", "advbayes-fixture-good, advbayes.tracking")
    pm = create_plugin_manager()
    assert "advbayes-fixture-good" not in pm.info
    assert "advbayes.tracking" not in pm.info
    assert "advbayes.builtins" in pm.info


def test_plugins_command_lists_builtins_and_installed_plugins(plugin_site: Path) -> None:
    install_fixture_plugin(plugin_site, "advbayes-fixture-good", GOOD_PLUGIN, version="0.4.0")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = {p["name"]: p for p in json.loads(result.output)["plugins"]}
    assert listing["advbayes.builtins"]["components"]["datasets"] == ["half-moons"]
    assert listing["advbayes-fixture-good"] == {
        "name": "advbayes-fixture-good",
        "distribution": "advbayes-fixture-good",
        "version": "0.4.0",
        "builtin": False,
        "hooks": ["register_attacks"],
        "components": {"attacks": ["flip"]},
    }
    text = CliRunner().invoke(cli, ["plugins"]).output
    assert "advbayes-fixture-good 0.4.0 (advbayes-fixture-good)" in text
    assert "  attacks: flip" in text


def test_every_hook_is_documented() -> None:
    documentation = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "advbayes_spec")]
    assert len(hooks) == 15
    for hook in hooks:
        assert re.search(rf"^#+ `?{hook}\(", documentation, re.MULTILINE), f"{hook} is not documented"


@pytest.mark.slow  # a fresh process that imports torch and trains or lists: seconds
def test_with_the_tracking_plugin_disabled_a_run_imports_no_mlflow_and_its_commands_are_gone(
    isolated_cwd: Path,
) -> None:
    import subprocess
    import sys

    script = (
        "import sys, advbayes\n"
        "result = advbayes.run('moons', track=False, epochs=1)\n"
        "assert result.run_id is None\n"
        "print('mlflow imported:', any(m == 'mlflow' or m.startswith('mlflow.') for m in sys.modules))\n"
    )
    env = {**os.environ, "ADVBAYES_DISABLE_PLUGINS": "advbayes.tracking"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mlflow imported: False" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "advbayes.cli", "compare", "moons"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "No such command 'compare'" in done.stderr
    assert not (isolated_cwd / "mlflow.db").exists()


PLUGIN_PROJECTS = sorted(
    [
        *Path(__file__).parents[1].glob("plugins/*/pyproject.toml"),
        Path(__file__).parents[1] / "examples" / "my-defense-plugin" / "pyproject.toml",
    ]
)


def declared_plugins(pyproject: Path) -> tuple[str, list[str]]:
    """A plugin distribution's name and the advbayes-* distributions it declares as dependencies."""
    from advbayes.registry import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    needs = [re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in project.get("dependencies", [])]
    return project["name"], [d for d in needs if d.startswith("advbayes-")]


@pytest.mark.parametrize("pyproject", PLUGIN_PROJECTS, ids=lambda p: p.parent.name)
def test_each_plugin_loads_and_resolves_its_registry_with_only_its_declared_dependencies(
    pyproject: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from advbayes.registry import load_registry, read_registry_file

    name, _ = declared_plugins(pyproject)
    installed = {name}  # what pip would install: the plugin and its declared dependencies, transitively
    pending = [name]
    projects = {declared_plugins(p)[0]: p for p in PLUGIN_PROJECTS}
    while pending:
        for dependency in declared_plugins(projects[pending.pop()])[1]:
            if dependency not in installed:
                installed.add(dependency)
                pending.append(dependency)
    monkeypatch.setenv("ADVBAYES_LOAD_PLUGINS", ",".join(sorted(installed)))
    pm = create_plugin_manager()
    assert set(pm.info) - {"advbayes.builtins", "advbayes.tracking"} == installed
    registry = load_registry(pm=pm, include_cwd=False)
    files = [path for plugin, path in pm.registry_paths() if plugin == name]
    assert files, f"{name} contributes no registry file"
    resolved = 0
    for path in files:
        for kind, table in read_registry_file(path).items():
            if kind == "providers":
                continue
            for entry in table:
                if kind == "experiments":
                    registry.resolve_experiment(entry)
                else:
                    registry.resolve(kind, entry, where=(str(path), entry, ""))
                resolved += 1
    assert resolved > 0
