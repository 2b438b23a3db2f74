"""The tracking plugin's commands: ui, compare, runs and report over the MLflow store (added by register_commands)."""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from advbayes.cli_options import cards_option, debug_option, tracking_option
from advbayes.errors import RunError


def runs_view_urls(uri: str, port: int) -> list[tuple[str, str]]:
    """(experiment, URL) of each tracked experiment's saved runs views (accuracy columns; accuracy with its interval's
    bounds); none for a new store."""
    from advbayes.tracking.store import client_for, sqlite_path
    from advbayes.tracking.view import INTERVALS_KEY, INTERVALS_TAG, VIEW_KEY, VIEW_TAG

    database = sqlite_path(uri)
    if database is not None and not database.exists():
        return []
    client = client_for(uri, write=False)
    urls = []
    for experiment in client.search_experiments():
        for tag, key, label in ((VIEW_TAG, VIEW_KEY, ""), (INTERVALS_TAG, INTERVALS_KEY, " (with intervals)")):
            if tag in experiment.tags:
                query = f"workflowType=machine_learning&viewStateShareKey={key}"
                page = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?{query}"
                urls.append((experiment.name + label, page))
    return urls


def add_commands(cli: click.Group) -> None:
    """Add ui, compare, runs, report and export to the advbayes command line."""

    @cli.command("ui")
    @click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
    @tracking_option
    def ui_command(port: int, tracking_uri: str | None) -> None:
        """Serve the MLflow UI on 127.0.0.1 over the same store runs are tracked in."""
        from advbayes.tracking.store import check_store, default_tracking_uri, normalize_uri, shown_uri

        uri = normalize_uri(tracking_uri or default_tracking_uri())
        if uri.startswith(("http://", "https://")):
            raise RunError(f"--tracking-uri {shown_uri(uri)} is a server already: open it in a browser")
        check_store(uri, write=True)  # the UI creates a new sqlite store, so its directory must be writable
        click.echo(f"MLflow UI for {shown_uri(uri)} at http://127.0.0.1:{port}", err=True)
        for name, url in runs_view_urls(uri, port):
            click.echo(f"  {name}: {url}", err=True)
        args = [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",  # one person's browser: MLflow's default of 4 workers would take every core of a laptop
            "1",
        ]
        # MLflow 3's server also starts a job runner and 7 huey consumers, each its own Python importing MLflow, for
        # GenAI jobs (scorers, prompt optimization) that advbayes never submits; a user who wants them sets it true.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
        os.execve(sys.executable, args, env)

    @cli.command("compare")
    @click.argument("experiments", nargs=-1, required=True)
    @click.option("--metric", default="accuracy", show_default=True, help="The metric shown per attack and eps.")
    @click.option(
        "--format",
        "output",
        type=click.Choice(["table", "json", "csv"]),
        default="table",
        show_default=True,
        help="json and csv: one record per run, attack and eps, with the interval.",
    )
    @click.option("--json", "output", flag_value="json", help="Same as --format json.")
    @click.option("--csv", "output", flag_value="csv", help="Same as --format csv.")
    @tracking_option
    @debug_option
    def compare_command(
        experiments: Sequence[str], metric: str, output: str, tracking_uri: str | None, debug: bool
    ) -> None:
        """Print the tracked runs of EXPERIMENTS as a table: one row per run, one column per attack x eps."""
        from advbayes.tracking.compare import compare_csv, compare_records, compare_table

        if output == "table":
            click.echo(compare_table(tracking_uri, experiments, metric))
            return
        records = compare_records(tracking_uri, experiments, metric)
        if output == "json":
            click.echo(json.dumps(records, indent=2))
            return
        click.echo(compare_csv(records), nl=False)

    @cli.command("runs")
    @click.argument("experiments", nargs=-1)
    @click.option("--stale", is_flag=True, help="Only runs left RUNNING by a process that no longer exists (killed).")
    @click.option(
        "--close",
        "close",
        metavar="RUN_ID",
        default=None,
        help="Mark a run whose process is gone (stale, or interrupted) FAILED, so it is no longer offered for resume.",
    )
    @tracking_option
    @debug_option
    def runs_command(
        experiments: Sequence[str], stale: bool, close: str | None, tracking_uri: str | None, debug: bool
    ) -> None:
        """List the tracked runs of EXPERIMENTS (all when none is named), newest first, with how to resume each."""
        from advbayes.results import format_grid
        from advbayes.tracking.runs import (
            attacks_running,
            close_run,
            liveness,
            next_step,
            progress_text,
            status_text,
            tracked_runs,
        )
        from advbayes.tracking.store import client_for

        if close is not None:
            if experiments or stale:
                raise click.UsageError("--close RUN_ID takes no EXPERIMENTS and no --stale")
            click.echo(close_run(tracking_uri, close))
            return
        runs = tracked_runs(tracking_uri, experiments)
        if stale:
            runs = [run for run in runs if liveness(run) == "stale"]
        if not runs:
            click.echo("no stale runs" if stale else "no tracked runs")
            return
        rows = []
        client = client_for(tracking_uri, write=False)
        attacking = attacks_running(client, sorted({run.info.experiment_id for run in runs}))
        for run in runs:
            tags = run.data.tags
            started = datetime.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
            rows.append(
                [
                    run.info.run_id,
                    tags.get("advbayes.experiment", "?"),
                    tags.get("advbayes.defense", "?"),
                    tags.get("advbayes.seed", "?"),
                    status_text(run),
                    started,
                    "" if run.info.status == "FINISHED" else progress_text(client, run, attacking),
                    next_step(client, run),
                ]
            )
        click.echo(format_grid(["run", "experiment", "defense", "seed", "status", "started", "at", "next"], rows))

    @cli.command("report")
    @click.argument("experiments", nargs=-1, required=True)
    @click.option(
        "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory to write into."
    )
    @click.option("--file", "file", default="report.md", show_default=True, help="Name of the Markdown file in --out.")
    @click.option(
        "--preamble",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Markdown put before the sections.",
    )
    @click.option("--metric", "metrics", multiple=True, help="Only these per-attack metrics (repeatable; default all).")
    @click.option(
        "--claims",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A claims file ([[claim]], [[figure]]): a verdict per claim from the runs, before the sections.",
    )
    @click.option(
        "--records",
        type=click.Path(file_okay=False, path_type=Path),
        help="Read the runs from run records (advbayes export) instead of a store: no store, no network.",
    )
    @tracking_option
    @debug_option
    def report_command(
        experiments: Sequence[str],
        out: Path,
        file: str,
        preamble: Path | None,
        metrics: Sequence[str],
        claims: Path | None,
        records: Path | None,
        tracking_uri: str | None,
        debug: bool,
    ) -> None:
        """Write a Markdown report (tables, figures) of the newest finished runs of EXPERIMENTS, read from MLflow."""
        from advbayes.lab.report import write_report

        path = write_report(
            experiments,
            out,
            tracking_uri=tracking_uri,
            file=file,
            preamble=preamble,
            metrics=metrics or None,
            claims=claims,
            records=records,
        )
        click.echo(str(path))

    @cli.command("export")
    @click.argument("experiments", nargs=-1)
    @click.option(
        "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder of the records."
    )
    @cards_option("Export the runs of these result cards instead (repeatable): OUT/DATASET--ENTRY/.")
    @tracking_option
    @debug_option
    def export_command(
        experiments: Sequence[str], out: Path, folders: Sequence[Path], tracking_uri: str | None, debug: bool
    ) -> None:
        """Export the runs a report of EXPERIMENTS reads (or every run of the result cards in --cards) as JSON run
        records (params, metrics, tags, results; no weights) into OUT, for `advbayes report --records OUT` (or
        `advbayes leaderboard --records OUT`)."""
        from advbayes.lab.sources import export_records

        if bool(experiments) == bool(folders):
            raise click.UsageError("name EXPERIMENTS or give --cards FOLDER, not both and not neither")
        if folders:
            from advbayes.lab.card_records import export_card_runs
            from advbayes.lab.cards import read_cards

            cards = [card for folder in folders for card in read_cards(folder)]
            written = export_card_runs(cards, out, tracking_uri)
        else:
            written = export_records(experiments, out, tracking_uri, say=lambda line: click.echo(line, err=True))
        size = sum(p.stat().st_size for p in written)
        click.echo(f"{len(written)} run records ({size / 1e6:.2f} MB) in {out}")
