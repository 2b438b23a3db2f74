"""The bench and leaderboard commands (added with the tracking plugin's: a bench tracks its runs and its card)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from advbayes.cli_options import cards_option, complete_entries, debug_option, registry_option, tracking_option
from advbayes.errors import RunError


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds 0,1,2 -> [0, 1, 2]; a one-line error for anything else."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise RunError(f"--seeds: expected integers separated by commas, e.g. 0,1,2, got {text!r}") from None


def add_lab_commands(cli: click.Group) -> None:
    """Add bench and leaderboard to the advbayes command line."""

    @cli.command("bench")
    @click.argument("entry", shell_complete=complete_entries(["defenses"], qualified=False))
    @click.option("--dataset", default="mnist-5k", show_default=True, help="The protocol's data set.")
    @click.option("--seeds", default=None, metavar="0,1,2", help="Seeds (default: the protocol's; fewer is marked).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Change a training setting (marked).")
    @click.option(
        "--out",
        default="cards",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder the card is written to.",
    )
    @registry_option
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
    @click.option(
        "--estimate",
        is_flag=True,
        help="Only project the bench's time on this device (attacks timed on --examples); write nothing.",
    )
    @click.option(
        "--examples",
        default=128,
        show_default=True,
        type=click.IntRange(min=1),
        help="With --estimate: test examples each attack is timed on.",
    )
    @click.option(
        "--train-epochs",
        default=1,
        show_default=True,
        type=click.IntRange(min=1),
        help="With --estimate: epochs the timed network is trained first.",
    )
    @click.option(
        "--resume",
        is_flag=True,
        help="Continue the latest interrupted bench of ENTRY with these settings: finished runs are read back.",
    )
    @tracking_option
    @debug_option
    def bench_command(
        entry: str,
        dataset: str,
        seeds: str | None,
        overrides: Sequence[str],
        out: Path,
        registry_files: Sequence[str],
        device: str,
        estimate: bool,
        examples: int,
        train_epochs: int,
        resume: bool,
        tracking_uri: str | None,
        debug: bool,
    ) -> None:
        """Train the defense ENTRY (or take tracked run ENTRY) and attack it under the leaderboard protocol
        (docs/leaderboard.md); write its result card to OUT and log it to its tracked runs."""
        from advbayes.lab.bench import bench, card_file
        from advbayes.registry import parse_override

        common: dict[str, Any] = {
            "dataset": dataset,
            "seeds": parse_seeds(seeds),
            "overrides": [parse_override(text) for text in overrides],
            "device": device,
            "registry": registry_files,
            "say": lambda line: click.echo(line, err=True),
        }
        if estimate:
            from advbayes.lab.cost import estimate_bench

            if resume:
                raise RunError("--resume continues a bench, and --estimate runs none: give one of them")
            click.echo("\n".join(estimate_bench(entry, examples=examples, train_epochs=train_epochs, **common).lines()))
            return
        try:
            card = bench(entry, tracking_uri=tracking_uri, progress=True, out=out, resume=resume, **common)
        except KeyboardInterrupt as exc:
            exc.advbayes_bench = True  # type: ignore[attr-defined]  # the CLI says how to go on: --resume
            raise
        failed = [c["name"] for c in card["checks"] if c["status"] == "failed"]
        click.echo(f"card {out / card_file(card)}: clean {card['clean']['value']:.4f}")
        for threat, section in card["threat_models"].items():
            stat = section["radii"][section["headline"]]
            low, high = stat["interval"]
            click.echo(f"  {threat} eps {section['headline']}: {stat['value']:.4f} [{low:.3f}, {high:.3f}]")
        click.echo("  checks: " + (f"FAILED {', '.join(failed)}" if failed else "all passed"))
        if card["deviations"]:
            click.echo("  off the protocol: " + "; ".join(card["deviations"]))

    @cli.command("leaderboard")
    @cards_option("A folder of result cards (repeatable); without it, the cards logged in the tracking store.")
    @click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder the static page is written to.",
    )
    @click.option("--ui", default=None, metavar="URL", help="The MLflow UI the runs link to (e.g. advbayes ui's).")
    @click.option(
        "--records",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="Re-derive every card from its runs' records first (advbayes export --cards); any difference stops it.",
    )
    @tracking_option
    @debug_option
    def leaderboard_command(
        folders: Sequence[Path],
        out: Path,
        ui: str | None,
        records: Path | None,
        tracking_uri: str | None,
        debug: bool,
    ) -> None:
        """Write a static HTML leaderboard (OUT/index.html, a page per defense) from result cards."""
        from advbayes.lab.bench import cards_in_store
        from advbayes.lab.cards import read_cards
        from advbayes.lab.leaderboard import write_leaderboard

        cards = [card for folder in folders for card in read_cards(folder)] if folders else cards_in_store(tracking_uri)
        if not cards:
            where = ", ".join(map(str, folders)) if folders else "the tracking store"
            raise RunError(f"no result cards in {where}: advbayes bench ENTRY makes one")
        if records is not None:
            from advbayes.lab.card_records import verify_cards

            checked = verify_cards(cards, records)
            click.echo(f"{checked} card(s) re-derived from their runs' records in {records}: as stated", err=True)
        click.echo(str(write_leaderboard(cards, out, ui)))
