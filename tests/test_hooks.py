"""Every hook is documented (argument list, one line per argument, an example) and exercised, datasette-style, by a
recording plugin through the real plugin manager: what each hook receives matches its spec."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import advbayes
from advbayes import EvalRecord, RunInfo, RunResult, hookimpl, hookspecs
from advbayes.cli import cli
from advbayes.plugins import create_plugin_manager
from helpers import write

DOCS = Path(__file__).parents[1] / "docs" / "plugins.md"
SPECS = {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, "advbayes_spec")}

# What each argument must be at run time (the spec's annotations, as checkable types).
EXPECTED: dict[str, Any] = {
    "register": lambda v: callable(v),
    "cli": lambda v: isinstance(v, click.Group),
    "run": lambda v: isinstance(v, RunInfo),
    "epoch": lambda v: isinstance(v, int) and v >= 1,
    "metrics": lambda v: isinstance(v, Mapping) and all(isinstance(x, float) for x in v.values()),
    "checkpoint": lambda v: isinstance(v, Path) and v.is_file(),
    "attack": lambda v: isinstance(v, str) and v,
    "attack_label": lambda v: isinstance(v, str) and v,
    "records": lambda v: isinstance(v, Sequence) and v and all(isinstance(r, EvalRecord) for r in v),
    "figures": lambda v: isinstance(v, Mapping),
    "result": lambda v: v is None or isinstance(v, RunResult),
    "status": lambda v: v in ("FINISHED", "FAILED", "KILLED"),
    "error": lambda v: v is None or isinstance(v, BaseException),
    "run_id": lambda v: isinstance(v, str) and len(v) == 32,
    "tracking_uri": lambda v: v is None or isinstance(v, str),
    "destination": lambda v: isinstance(v, Path) and v.is_dir(),
}


def section_of(documentation: str, heading: str) -> str:
    return documentation.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_hook_is_documented_with_its_arguments_and_an_example(name: str) -> None:
    spec = SPECS[name]
    arguments = list(inspect.signature(spec).parameters)
    documentation = DOCS.read_text()
    heading = f"### `{name}({', '.join(arguments)})`"
    assert heading in documentation, f"docs/plugins.md lacks the heading {heading}"
    section = section_of(documentation, heading)
    assert "```python" in section and f"def {name}(" in section, f"{name}: no code example in its section"
    for argument in arguments:
        assert re.search(rf"^\s*{argument}: \S", spec.__doc__ or "", re.MULTILINE), f"{name}: {argument} undocumented"
        assert f"`{argument}`" in section, f"docs/plugins.md, {name}: argument {argument} not described"
        assert argument in EXPECTED, f"{name}: no run-time check for argument {argument}"


class Recorder:
    """A plugin implementing every hook; it records each call's arguments and changes nothing."""

    def __init__(self, registry_file: Path) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.registry_file = registry_file

    def record(self, hook: str, **arguments: Any) -> None:
        """Keep the call, each argument checked now (a checkpoint file exists only during its hook)."""
        self.calls.append((hook, {name: (value, EXPECTED[name](value)) for name, value in arguments.items()}))

    @hookimpl
    def register_datasets(self, register):  # type: ignore[no-untyped-def]
        self.record("register_datasets", register=register)

    @hookimpl
    def register_models(self, register):  # type: ignore[no-untyped-def]
        self.record("register_models", register=register)

    @hookimpl
    def register_defenses(self, register):  # type: ignore[no-untyped-def]
        self.record("register_defenses", register=register)

    @hookimpl
    def register_attacks(self, register):  # type: ignore[no-untyped-def]
        self.record("register_attacks", register=register)

    @hookimpl
    def register_metrics(self, register):  # type: ignore[no-untyped-def]
        self.record("register_metrics", register=register)

    @hookimpl
    def register_commands(self, cli):  # type: ignore[no-untyped-def]
        self.record("register_commands", cli=cli)

        @cli.command("recorded-hello")
        def hello() -> None:
            click.echo("hello from the recorder")

    @hookimpl
    def run_figures(self, run, result):  # type: ignore[no-untyped-def]
        self.record("run_figures", run=run, result=result)
        return {}

    @hookimpl
    def registry_files(self):  # type: ignore[no-untyped-def]
        self.record("registry_files")
        return self.registry_file

    @hookimpl
    def run_started(self, run):  # type: ignore[no-untyped-def]
        self.record("run_started", run=run)

    @hookimpl
    def epoch_finished(self, run, epoch, metrics, checkpoint):  # type: ignore[no-untyped-def]
        self.record("epoch_finished", run=run, epoch=epoch, metrics=metrics, checkpoint=checkpoint)

    @hookimpl
    def checkpoint_saved(self, run, checkpoint):  # type: ignore[no-untyped-def]
        self.record("checkpoint_saved", run=run, checkpoint=checkpoint)

    @hookimpl
    def evaluation_finished(self, run, attack_label, records, figures, attack):  # type: ignore[no-untyped-def]
        self.record(
            "evaluation_finished", run=run, attack_label=attack_label, records=records, figures=figures, attack=attack
        )

    @hookimpl
    def run_finished(self, run, result, status, error):  # type: ignore[no-untyped-def]
        self.record("run_finished", run=run, result=result, status=status, error=error)

    @hookimpl
    def load_checkpoint(self, run_id, tracking_uri, destination):  # type: ignore[no-untyped-def]
        self.record("load_checkpoint", run_id=run_id, tracking_uri=tracking_uri, destination=destination)
        return None  # the tracking plugin answers

    @hookimpl
    def load_model(self, run_id, tracking_uri):  # type: ignore[no-untyped-def]
        self.record("load_model", run_id=run_id, tracking_uri=tracking_uri)
        return None


def test_a_recording_plugin_sees_every_hook_with_the_arguments_its_spec_names(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = write(tmp_path / "recorded.toml", '[models.recorded-mlp]\nuse = "mlp"\nwidths = [8]\n')
    recorder = Recorder(entries)
    pm = create_plugin_manager()
    pm.register(recorder, name="recorder")
    monkeypatch.setattr("advbayes.plugins.get_plugin_manager", lambda: pm)  # the command line's plugins
    result = CliRunner().invoke(cli, ["recorded-hello"])
    assert result.exit_code == 0 and "hello from the recorder" in result.output, result.output
    fast = {"dataset.train_size": 64, "dataset.test_size": 32, "model": "recorded-mlp"}
    first = advbayes.run("moons", tracking_uri=store, pm=pm, epochs=1, **fast)  # registration and the lifecycle
    transfer = {"name": "from-first", "use": "transfer", "source": f"run:{first.run_id}", "attack": "fgsm"}
    advbayes.run("moons", tracking_uri=store, pm=pm, epochs=0, attacks=[transfer], **fast)  # load_model
    advbayes.run(tracking_uri=store, pm=pm, resume=first.run_id, epochs=2)  # load_checkpoint
    seen = {hook for hook, _ in recorder.calls}
    assert seen == set(SPECS), f"never called: {sorted(set(SPECS) - seen)}"
    for hook, arguments in recorder.calls:
        assert list(arguments) == list(inspect.signature(SPECS[hook]).parameters), hook
        for argument, (value, valid) in arguments.items():
            assert valid, f"{hook}: {argument} = {value!r}"
    statuses = [arguments["status"][0] for hook, arguments in recorder.calls if hook == "run_finished"]
    assert statuses == ["FINISHED", "FINISHED", "FINISHED"]
