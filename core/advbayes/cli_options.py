"""The options advbayes commands share (--registry, --debug, --tracking-uri, --cards) and entry-name completion:
in a module of their own, so that commands outside cli.py (the tracking plugin's) use them without importing
the CLI."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from advbayes.errors import AdvbayesError


def registry_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--registry PATH (repeatable): files merged over the default registry, later winning."""
    return click.option(
        "--registry",
        "registry_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="A registry TOML file merged over the default one (repeatable; later wins).",
    )(func)


def debug_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--debug: show tracebacks."""
    return click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")(func)


def tracking_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--tracking-uri."""
    return click.option(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
    )(func)


def cards_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--cards FOLDER (repeatable, passed as `folders`): folders of result cards."""
    return click.option(
        "--cards", "folders", multiple=True, type=click.Path(file_okay=False, path_type=Path), help=help_text
    )


def complete_entries(kinds: Sequence[str], qualified: bool) -> Callable[..., list[Any]]:
    """Shell completion of registry entry names (of `kinds`; also as kind.name when `qualified`), read from the
    registry files alone: completion never imports torch or a component."""

    def complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        from advbayes.registry import load_registry

        try:
            registry = load_registry(ctx.params.get("registry_files") or ())
        except AdvbayesError:  # a broken registry file: no suggestions (the command itself will say why)
            return []
        names: list[str] = []
        for kind in kinds:
            names += registry.names(kind)
            if qualified:
                names += [f"{kind}.{name}" for name in registry.names(kind)]
        return [CompletionItem(name) for name in sorted(set(names)) if name.startswith(incomplete)]

    return complete
