"""The commands of README.md and every page of docs/ work as written: each `advbayes` command parses against the
real command line; runs and sweeps resolve and pass their pre-run checks (`--dry-run`, with the page's registry
tables in ./registry.toml); `list`, `show` and `plugins` run; a documented error is the error the command prints;
every Python block compiles and its imports resolve."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import warnings
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from advbayes.cli import cli
from advbayes.plugins import reset_plugin_manager
from advbayes.registry import ENTRY_KINDS, PROVIDERS, SWEEPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.\.\.)?$|RUN_ID|\.\.\.|<|^ID$")
EXECUTED = {"list", "show", "plugins"}  # cheap and store-free: run as written
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


# Libraries the pages tell the reader to install themselves (not advbayes dependencies): their imports are
# checked only where they are installed.
OPTIONAL = {"torchattacks", "autoattack"}


def optional_and_absent(module: str) -> bool:
    """Whether `module` is an optional library the page mentions that is not installed here."""
    top = module.split(".")[0]
    return top in OPTIONAL and importlib.util.find_spec(top) is None


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced code block."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def shell_commands(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, advbayes arguments) of each advbayes command in a shell block (continuations joined,
    comments dropped, `$ ` prompts and `torchrun ... -m advbayes.cli` understood)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        env = {}
        while words and ENV.match(words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words[:1] == ["advbayes"]:
            commands.append((env, words[1:]))
        elif "advbayes.cli" in words and words[0] in ("torchrun", "python"):
            commands.append((env, words[words.index("advbayes.cli") + 1 :]))
    return commands


def parse(args: list[str]) -> tuple[str, dict[str, object]]:
    """The subcommand and its parameters, as click parses them (a UsageError for an unknown option or command)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2+: protected_args
        context = cli.make_context("advbayes", list(args))
        rest = [*context.protected_args, *context.args]
    name, command, rest = cli.resolve_command(context, rest)
    assert command is not None and name is not None, args
    return name, command.make_context(name, rest, parent=context).params


def registry_tables(page: Path) -> str:
    """The page's TOML blocks that are registry tables (entries, experiments, sweeps), as one file."""
    kept = []
    for language, text in blocks(page):
        if language != "toml":
            continue
        try:
            tables = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            continue
        if tables and set(tables) <= {*ENTRY_KINDS, PROVIDERS, SWEEPS}:
            kept.append(text)
    return "\n".join(kept)


def invoke(args: list[str], env: dict[str, str]) -> click.testing.Result:
    reset_plugin_manager()
    try:
        return CliRunner().invoke(cli, args, env=env)
    finally:
        reset_plugin_manager()


def test_every_page_has_commands_to_check() -> None:
    counted = {
        page.name: sum(len(shell_commands(t)) for lang, t in blocks(page) if lang in ("bash", "")) for page in PAGES
    }
    assert counted["README.md"] >= 5
    for name in ("cli.md", "tracking.md", "scale.md", "evaluation.md"):
        assert counted[name] >= 2, f"docs/{name}: {counted[name]} commands"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_commands_of_a_page_work_as_written(page: Path, isolated_cwd: Path) -> None:
    tables = registry_tables(page)
    if tables:
        (isolated_cwd / "registry.toml").write_text(tables)
    for language, text in blocks(page):
        if language == "python":
            compile(text, f"{page.name} python block", "exec")
            imports = "\n".join(
                line
                for line in text.splitlines()
                if re.match(r"(import|from) \S+", line) and not optional_and_absent(line.split()[1])
            )
            exec(compile(imports, f"{page.name} imports", "exec"), {})  # noqa: S102 - the page's own imports
        if language not in ("bash", "console", "sh", ""):
            continue
        lines = text.splitlines()
        for env, args in shell_commands(text):
            where = f"{page.name}: advbayes {' '.join(args)}"
            try:
                name, params = parse(args)
            except click.UsageError as exc:
                pytest.fail(f"{where}: {exc}")
            placeholders = [a for a in args if PLACEHOLDER.search(a)]
            missing_files = [a for a in args if a.endswith(".toml") and not Path(a).exists()]
            documented = next(
                (
                    lines[i + 1]
                    for i, line in enumerate(lines[:-1])
                    if line.startswith("$ ") and shlex.split(line[2:])[1:] == args
                ),
                None,
            )
            if documented is not None and documented.startswith("Error: "):  # the page shows what it prints
                result = invoke(args, env)
                assert result.exit_code == 2 and result.output.splitlines()[0] == documented, (where, result.output)
                continue
            needs_gpu = str(params.get("device", "")).startswith("cuda") and not torch.cuda.is_available()
            if placeholders or missing_files or needs_gpu or params.get("resume") or params.get("nproc"):
                continue  # parsed; running it needs a tracked run, a file or processes the page stands for
            if name in EXECUTED:
                result = invoke(args, env)
            elif name in ("run", "sweep") and "address" not in {k for k, v in params.items() if v}:
                result = invoke([*args, "--dry-run"] if not params.get("dry_run") else args, env)
            else:
                continue  # parsed: it needs a store or a server (ui, compare, runs, report)
            assert result.exit_code == 0, (where, result.output[-2000:])
