"""registry.toml: resolution, extends, references, overrides, and every error kind as one line."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from advbayes.cli import cli
from advbayes.errors import RegistryError
from advbayes.registry import apply_override, load_registry, parse_override, tomllib
from advbayes.registry.files import copied
from helpers import write

BASE = """
[models.wide]
use = "mlp"
widths = [64, 64]

[models.wider]
extends = "wide"
widths = [256]
dropout = 0.1

[experiments.tiny]
dataset = { use = "half-moons", train_size = 200, test_size = 100 }
model = "wider"
attacks = ["none"]
epochs = 2
"""


def registry_from(tmp_path: Path, text: str):
    return load_registry([write(tmp_path / "user.toml", text)])


def test_moons_resolves_fully(tmp_path: Path) -> None:
    spec = load_registry().resolve_experiment("moons")
    assert spec["dataset"] == {
        "name": "half-moons",
        "use": "half-moons",
        "train_size": 1000,
        "test_size": 500,
        "noise": 0.1,
        "seed": 0,
        "test_seed": -1,
    }
    assert spec["model"] == {"name": "mlp-small", "use": "mlp", "widths": [32, 32], "dropout": 0.0}
    assert spec["attacks"][0]["use"] == "none"
    assert spec["epochs"] == 5 and spec["eps"] == [0.0]
    assert "optimizer" not in spec  # None values are left out (TOML has no null)


def test_extends_inherits_and_overrides(tmp_path: Path) -> None:
    registry = registry_from(tmp_path, BASE)
    wider = registry.resolve("models", "wider", where=("t", "t", "t"))
    assert wider == {"name": "wider", "use": "mlp", "widths": [256], "dropout": 0.1}
    spec = registry.resolve_experiment("tiny")
    assert spec["model"]["widths"] == [256]
    assert spec["dataset"]["train_size"] == 200 and spec["dataset"]["name"] == "half-moons"


def test_resolved_experiment_is_a_fixed_point(tmp_path: Path) -> None:
    registry = registry_from(tmp_path, BASE)
    spec = registry.resolve_experiment("tiny")
    assert registry.resolve_inline_experiment(spec, source="again") == spec


def test_user_registry_is_merged_over_the_default_later_wins(tmp_path: Path) -> None:
    first = write(tmp_path / "first.toml", '[experiments.moons]\ndataset = "half-moons"\nmodel = "mlp"\nepochs = 7\n')
    second = write(tmp_path / "second.toml", '[experiments.moons]\ndataset = "half-moons"\nmodel = "mlp"\nepochs = 9\n')
    assert load_registry([first]).resolve_experiment("moons")["epochs"] == 7
    assert load_registry([first, second]).resolve_experiment("moons")["epochs"] == 9
    assert load_registry().resolve_experiment("moons")["epochs"] == 5


def test_working_directory_registry_is_merged(isolated_cwd: Path) -> None:
    write(isolated_cwd / "registry.toml", '[experiments.local]\ndataset = "half-moons"\nmodel = "mlp"\n')
    assert load_registry().resolve_experiment("local")["model"]["use"] == "mlp"


def test_overrides_reach_nested_entries_and_list_items(tmp_path: Path) -> None:
    registry = registry_from(tmp_path, BASE)
    overrides = [
        parse_override(t) for t in ("epochs=3", "model.dropout=0.5", "attacks.none.attack_samples=4", "eps=[0, 0.1]")
    ]
    spec = registry.resolve_experiment("tiny", overrides)
    assert spec["epochs"] == 3
    assert spec["model"]["dropout"] == 0.5
    assert spec["attacks"][0]["attack_samples"] == 4
    assert spec["eps"] == [0.0, 0.1]
    swapped = registry.resolve_experiment("tiny", [parse_override("model=wide")])
    assert swapped["model"]["widths"] == [64, 64]


def test_parse_override_reads_toml_values() -> None:
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("x=0.25") == ("x", 0.25)
    assert parse_override("x=[1, 2]") == ("x", [1, 2])
    assert parse_override("x=true") == ("x", True)
    assert parse_override("x=banana") == ("x", "banana")
    assert parse_override('x="1"') == ("x", "1")
    with pytest.raises(RegistryError, match="expected KEY=VALUE"):
        parse_override("novalue")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[models.m]\nuse = "mlp"\nwidht = [3]\n',
            r"user.toml: entry models.m: key 'widht': unknown key; did you mean 'widths'\? parameters of model 'mlp': dropout, widths",
        ),
        (
            '[models.m]\nuse = "mlp"\nwidths = "wide"\n',
            r"user.toml: entry models.m: key 'widths': expected a list of integers >= 1 and <= 10000000, got 'wide' \(str\)",
        ),
        (
            '[models.m]\nuse = "mlp"\ndropout = 1.5\n',
            r"user.toml: entry models.m: key 'dropout': expected a finite number >= 0.0 and < 1.0, got 1.5 \(float\)",
        ),
        (
            '[models.m]\nuse = "mlq"\n',
            r"user.toml: entry models.m: key 'use': unknown model component 'mlq'; did you mean 'mlp'\? registered: mlp",
        ),
        (
            '[models.a]\nextends = "b"\n[models.b]\nextends = "a"\n',
            r"user.toml: entry models.\w: key 'extends': cycle in extends: (a -> b -> a|b -> a -> b)",
        ),
        (
            '[models.a]\nextends = "nope"\n',
            r"user.toml: entry models.a: key 'extends': extends unknown model entry 'nope'",
        ),
        ('[models.m\nuse = "mlp"\n', r"user.toml: TOML syntax error: .*\(at line 1, column \d+\)"),
        ('[model.m]\nuse = "mlp"\n', r"user.toml: key 'model': unknown table \[model\]; did you mean 'models'\?"),
        (
            '[experiments.e]\ndataset = "half-moon"\nmodel = "mlp"\n',
            r"user.toml: entry experiments.e: key 'dataset': unknown dataset 'half-moon'; did you mean 'half-moons'\? known: .*half-moons",
        ),
        (
            '[experiments.e]\ndataset = "half-moons"\nmodel = "mlp"\nepochs = "many"\n',
            r"user.toml: entry experiments.e: key 'epochs': expected an integer >= 0 and <= 10000000, got 'many' \(str\)",
        ),
        (
            '[experiments.e]\ndataset = "half-moons"\nmodel = "mlp"\nattacks = []\n',
            r"key 'attacks': expected a non-empty list of attack entry names or inline tables, got \[\] \(list\)",
        ),
        (
            '[experiments.e]\ndataset = "half-moons"\nmodel = "mlp"\nseed = true\n',
            r"key 'seed': expected an integer >= 0 and <= 4294967295, got True \(bool\)",
        ),
        (
            '[experiments.e]\ndataset = "half-moons"\nmodel = { use = "mlp", widths = [0] }\n',
            r"entry experiments.e.model: key 'widths': expected a list of integers >= 1 and <= 10000000, got \[0\] \(list\)",
        ),
    ],
)
def test_every_error_kind_is_one_line_naming_file_entry_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RegistryError) as raised:
        registry = registry_from(tmp_path, text)
        for name in registry.names("experiments"):
            if name != "moons":
                registry.resolve_experiment(name)
        for kind in ("models",):
            for name in registry.names(kind):
                registry.resolve(kind, name, where=("user.toml", name, ""))
    text_of_error = str(raised.value)
    assert "\n" not in text_of_error
    assert raised.value.file and raised.value.file.endswith("user.toml")
    assert re.search(message, text_of_error), text_of_error


def test_entry_of_an_uninstalled_plugin_is_an_error_only_when_used(tmp_path: Path) -> None:
    registry = registry_from(
        tmp_path,
        '[providers]\n"advbayes-fancy" = ["fancy"]\n[attacks.fancy-20]\nuse = "fancy"\nsteps = 20\n'
        '[experiments.uses-fancy]\ndataset = "half-moons"\nmodel = "mlp"\nattacks = ["fancy-20"]\n',
    )
    assert registry.resolve_experiment("moons")["epochs"] == 5
    with pytest.raises(
        RegistryError,
        match=r"key 'use': attack 'fancy' is not installed; user.toml says distribution "
        r"'advbayes-fancy' provides it \(check that before installing anything\)",
    ) as raised:
        registry.resolve_experiment("uses-fancy")
    assert "pip install" not in str(raised.value)  # a local file never gets to print an install command


def test_unknown_experiment_suggests_close_names() -> None:
    with pytest.raises(RegistryError, match=r"unknown experiment 'quikstart'; did you mean 'quickstart'\?"):
        load_registry().resolve_experiment("quikstart")


def test_override_errors_name_the_key() -> None:
    registry = load_registry()
    with pytest.raises(RegistryError, match=r"--set: entry experiments.moons: key 'epochs': expected an integer"):
        registry.resolve_experiment("moons", [("epochs", "banana")])
    with pytest.raises(RegistryError, match=r"--set: key 'model.widht': unknown key; did you mean 'widths'\?"):
        spec = registry.resolve_experiment("moons")
        apply_override(spec, "model.widht.x", 1)
    with pytest.raises(
        RegistryError, match=r"--set: entry experiments.moons.model: key 'widht': unknown key; did you mean 'widths'\?"
    ):
        registry.resolve_experiment("moons", [("model.widht", 3)])
    with pytest.raises(RegistryError, match=r"no entry 'fgsm' in this list"):
        registry.resolve_experiment("moons", [("attacks.fgsm.eps", 0.1)])


def test_cli_errors_exit_2_with_one_line_and_traceback_only_with_debug() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "moons", "--set", "epochs=banana"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "key 'epochs': expected an integer >= 0 and <= 10000000, got 'banana' (str)" in result.output
    result = runner.invoke(cli, ["run", "quikstart"])
    assert result.exit_code == 2
    assert "did you mean 'quickstart'?" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["--debug", "run", "quikstart"])
    assert isinstance(result.exception, RegistryError)


def test_show_prints_the_resolved_entry_as_toml(tmp_path: Path) -> None:
    user = write(tmp_path / "user.toml", BASE)
    result = CliRunner().invoke(cli, ["show", "wider", "--registry", str(user)])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.output) == {
        "models": {"wider": {"name": "wider", "use": "mlp", "widths": [256], "dropout": 0.1}}
    }
    result = CliRunner().invoke(cli, ["show", "tiny", "--registry", str(user)])
    shown = tomllib.loads(result.output)["experiments"]["tiny"]
    resolved = load_registry([user]).resolve_experiment("tiny")
    if resolved["eps"]:  # the experiment's eps list replaces each attack's own: show leaves those out
        resolved["attacks"] = [{k: v for k, v in a.items() if k != "eps"} for a in resolved["attacks"]]
    assert shown == resolved
    assert tomllib.loads(tomli_w.dumps(shown)) == shown  # what show prints is valid TOML that reads back the same


def test_show_lists_every_parameter_with_its_type_default_or_required_and_help(tmp_path: Path) -> None:
    import attrs

    from advbayes.components import Defense
    from advbayes.params import param, parameter_fields
    from advbayes.registry import construct

    @attrs.frozen(kw_only=True)
    class Needy(Defense):
        """A defense with a required parameter."""

        strength: float = param(ge=0.0, le=2.0, help="how strong")

    assert [line.split(":")[0] for line in parameter_help_lines(Needy)] == list(parameter_fields(Needy))
    assert "strength: a finite number >= 0.0 and <= 2.0; required. how strong" in parameter_help_lines(Needy)
    construct(Needy, {"strength": 1.0}, file="t", entry="t")  # the class is a valid component
    result = CliRunner().invoke(cli, ["show", "mc-dropout"])
    assert result.exit_code == 0, result.output
    assert "rate" not in tomllib.loads(result.output)["defenses"]["mc-dropout"]  # no value: not a TOML key ...
    assert (
        "#   rate: a finite number >= 0.0 and < 1.0 or none; default none. dropout rate" in result.output
    )  # ... but shown
    quickstart = CliRunner().invoke(cli, ["show", "quickstart"]).output
    assert all("eps" not in a for a in tomllib.loads(quickstart)["experiments"]["quickstart"]["attacks"])
    assert "#   eps: a list of finite numbers >= 0.0" in quickstart


def parameter_help_lines(cls: type) -> list[str]:
    from advbayes.params import parameter_help

    return parameter_help(cls)


def test_list_shows_entries_components_and_unavailable_ones(tmp_path: Path) -> None:
    user = write(
        tmp_path / "user.toml",
        '[providers]\n"advbayes-fancy" = ["fancy"]\n[attacks.fancy-20]\nuse = "fancy"\n',
    )
    result = CliRunner().invoke(cli, ["list", "attacks", "--registry", str(user)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "fancy-20" in line)
    assert "unavailable" in line and "advbayes-fancy" in line and "(use fancy)" not in line
    assert "components: " in result.output and "none" in result.output


def test_quickstart_without_the_vision_plugin_names_the_package_to_install() -> None:
    from advbayes.plugins import create_plugin_manager

    registry = load_registry(pm=create_plugin_manager(entry_points=False))
    with pytest.raises(RegistryError, match=r"dataset 'mnist-5k' is not installed: it is provided by advbayes-vision"):
        registry.resolve_experiment("quickstart")


def test_every_shipped_entry_resolves_with_the_installed_plugins() -> None:
    registry = load_registry()
    installed = {info.distribution for info in registry.pm.info.values()}
    for kind in ("datasets", "models", "defenses", "attacks", "metrics", "experiments"):
        for name in registry.names(kind):
            raw = registry.find(kind, name)
            try:
                registry.resolve(kind, name, where=(raw.file, name, ""))
            except RegistryError as exc:
                # only an entry of a plugin that is not installed here may fail, and it must say so
                assert "is not installed" in str(exc) and not any(d in str(exc) for d in installed), str(exc)


def test_an_echoed_key_cannot_forge_a_line_or_flood_the_terminal(isolated_cwd) -> None:
    from click.testing import CliRunner

    from advbayes.cli import cli

    forged = CliRunner().invoke(cli, ["run", "moons", "--set", "model.widths_x\nError: fake=1"])  # a real newline
    huge = CliRunner().invoke(cli, ["run", "moons", "--set", "k" * 2_000_000 + "=1"])
    for result in (forged, huge):
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and len(lines[0]) <= len("Error: ") + 1000, (
            result.output[:300]
        )
    assert "widths_x\\nError: fake" in forged.output  # the newline shown escaped, inside the one line


def test_an_override_can_reach_into_an_entry_an_earlier_override_replaced(tmp_path: Path) -> None:
    registry = registry_from(tmp_path, BASE)
    overrides = [parse_override(t) for t in ("model=wide", "model.dropout=0.25", 'defense={use="standard"}')]
    overrides.append(parse_override("defense.train_samples=3"))
    spec = registry.resolve_experiment("tiny", overrides)
    assert spec["model"]["widths"] == [64, 64] and spec["model"]["dropout"] == 0.25
    assert spec["defense"]["train_samples"] == 3
    with pytest.raises(RegistryError, match=r"entry experiments.tiny.model: key 'nope': unknown key"):
        registry.resolve_experiment("tiny", [parse_override("model=wide"), parse_override("model.nope=1")])


def test_a_misspelled_plugin_selection_is_a_warning_naming_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from advbayes.plugins import PluginLoadWarning, create_plugin_manager

    monkeypatch.setenv("ADVBAYES_LOAD_PLUGINS", "advbayes-visoin")
    with pytest.warns(
        PluginLoadWarning,
        match=r"ADVBAYES_LOAD_PLUGINS names no installed plugin: advbayes-visoin "
        r"\(installed: .*advbayes-vision",
    ):
        create_plugin_manager()


DOTTED = """
[defenses."std-0.3"]
use = "standard"

[defenses."std-0.3.1"]
use = "standard"

[experiments.dotty]
dataset = "half-moons"
model = "mlp"
defenses = ["standard", "std-0.3", "std-0.3.1"]
attacks = ["none"]
eps = [0.0]
"""


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("defenses.std-0.3.train_samples", "std-0.3"),  # unquoted: the longest entry name that matches
        ('defenses."std-0.3".train_samples', "std-0.3"),
        ("defenses.'std-0.3'.train_samples", "std-0.3"),
        ("defenses.std-0.3.1.train_samples", "std-0.3.1"),
    ],
)
def test_an_override_reaches_an_entry_whose_name_holds_a_dot(tmp_path: Path, key: str, target: str) -> None:
    spec = registry_from(tmp_path, DOTTED).resolve_experiment("dotty", [parse_override(f"{key}=4")])
    assert {d["name"]: d["train_samples"] for d in spec["defenses"]} == {
        "standard": 1,
        "std-0.3": 4 if target == "std-0.3" else 1,
        "std-0.3.1": 4 if target == "std-0.3.1" else 1,
    }


def test_a_malformed_quoted_override_key_is_one_line() -> None:
    with pytest.raises(RegistryError, match=r"""key 'defenses."std-0.3.p': expected a dotted key whose parts"""):
        apply_override({}, 'defenses."std-0.3.p', 1)


def test_an_unquoted_dotted_table_header_is_an_error_that_shows_the_quoted_form(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as raised:
        registry_from(tmp_path, '[defenses.gauss-noise-0.1]\nuse = "standard"\n')
    assert str(raised.value).endswith(
        "user.toml: entry defenses.gauss-noise-0: [defenses.gauss-noise-0.1] is an entry 'gauss-noise-0' with a "
        """table '1'; a name that holds a dot is quoted: [defenses."gauss-noise-0.1"]"""
    )


def test_defense_naming_one_of_the_experiments_own_defenses_picks_it_as_the_experiment_configures_it(
    tmp_path: Path,
) -> None:
    """`--grid defense=NAME` splits an experiment's own defenses: NAME is the experiment's entry, with its own
    settings, not the registry entry of the same name (which a sweep of hvi-vs-advbnn-mnist-5k had run instead)."""
    registry = load_registry([write(tmp_path / "user.toml", MINE)])
    own = registry.resolve_experiment("mine", [("defense", "bnn")])
    assert own["defense"]["init_sigma"] == 0.05 and not own.get("defenses")
    both = registry.resolve_experiment("mine", [("defenses", ["bnn", "standard"])])
    assert [d["name"] for d in both["defenses"]] == ["bnn", "standard"] and both["defenses"][0]["init_sigma"] == 0.05
    other = registry.resolve_experiment("mine", [("defense", "adv-bnn")])  # not the experiment's: the registry's
    assert other["defense"]["name"] == "adv-bnn" and other["defense"]["init_sigma"] == 0.01
    plain = load_registry().resolve_experiment("moons", [("defense", "bnn")])
    assert plain["defense"]["init_sigma"] == 0.01  # the registry's bnn, whose default it is


MINE = """
[experiments.mine]
dataset = "half-moons"
model = "mlp-small"
defenses = [{ extends = "bnn", name = "bnn", init_sigma = 0.05 }, "standard"]
attacks = ["none"]
"""


def test_a_registry_file_parsed_again_is_an_independent_copy_and_an_edit_or_an_error_is_seen(tmp_path: Path) -> None:
    """Parsed tables are cached per text (registry/files.py): a caller's change to its table never reaches the next
    read, an edited file is read as edited, and a broken file fails on every read, naming the file read."""
    from advbayes.registry.files import read_registry_file

    path = write(tmp_path / "r.toml", BASE)
    first = read_registry_file(path)
    first["models"]["wide"]["widths"].append(1)
    del first["experiments"]
    assert read_registry_file(path) == tomllib.loads(BASE)
    write(path, BASE.replace("[64, 64]", "[32]"))
    assert read_registry_file(path)["models"]["wide"]["widths"] == [32]
    broken = "[models.a]\nuse = \n"
    for name in ("one.toml", "two.toml"):
        with pytest.raises(RegistryError, match=rf"{name}.*TOML syntax error"):
            read_registry_file(write(tmp_path / name, broken))


TOML_LEAVES = st.one_of(
    st.text(max_size=5), st.integers(), st.floats(allow_nan=False), st.booleans(), st.datetimes(), st.dates()
)
TOML_VALUES = st.recursive(
    TOML_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
)


def containers(value: object) -> list[int]:
    """The ids of every dict and list inside `value`, itself included."""
    if isinstance(value, dict):
        return [id(value), *(i for item in value.values() for i in containers(item))]
    if isinstance(value, list):
        return [id(value), *(i for item in value for i in containers(item))]
    return []


@given(value=TOML_VALUES)
def test_a_copied_registry_value_equals_its_deep_copy_and_shares_no_table_or_array(value: object) -> None:
    """copied() is registry loading's copy.deepcopy: equal, and no dict or list of the original reachable from it
    (the parse cache's tables stay as parsed whatever a caller does to its copy)."""
    copy_ = copied(value)
    assert copy_ == copy.deepcopy(value) and not set(containers(copy_)) & set(containers(value))


def test_a_copied_python_object_inside_a_registry_value_is_deep_copied() -> None:
    """An inline entry from the Python API may hold any object: it is copied as deepcopy copies it."""

    class Holder:
        def __init__(self) -> None:
            self.items = [1, 2]

    holder = Holder()
    copy_ = copied({"x": [holder]})
    assert copy_["x"][0] is not holder and copy_["x"][0].items == [1, 2] and copy_["x"][0].items is not holder.items
