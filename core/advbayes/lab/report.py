"""`advbayes report`: tracked runs read back from MLflow into a self-contained Markdown report with its figures."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from advbayes.errors import RunError
from advbayes.experiment import Experiment
from advbayes.intervals import format_interval, is_companion, mean_sd
from advbayes.lab.claims import (
    CLAIM_HEADER,
    VERDICT_RULE,
    Claim,
    claim_row,
    evaluate,
    load_claims,
    not_run_row,
    not_testable_row,
)
from advbayes.lab.figure_specs import FigureSpec, param_number, x_of
from advbayes.lab.figures import Point, drawable_metrics, experiment_figure, save_figure, series_figure
from advbayes.lab.records import read_records
from advbayes.lab.sources import RecordRuns, RunSource, StoreRuns, values_by_key
from advbayes.posterior import WIDTH_KEY
from advbayes.posterior.convergence import stop_trends
from advbayes.results import format_value
from advbayes.tracking.runs import RESUMED_CODE_TAG, TRAINING_LOSS, commit_text
from advbayes.tracking.settings import group_label, varied_settings
from advbayes.tracking.store import client_for

DEFAULT_WINDOW = attrs.fields(Experiment).convergence_window.default  # for a run that did not log it
TRAIN_COLUMNS = ("loss", "ce", "acc", "kl_per_param", "mean_sigma2", "r", "omega_m", "omega_s", "epoch_seconds")


def defense_groups(runs: Sequence[Any]) -> dict[str, str]:
    """run id -> the defense with every setting that tells it apart from the other runs of its defense (never
    the seed); the varied settings are found once for all the runs."""
    varied = varied_settings(runs)
    return {run.info.run_id: group_label(run, varied) for run in runs}


def run_labels(runs: Sequence[Any], groups: Mapping[str, str]) -> dict[str, str]:
    """run id -> its defense group, with the seed when the report holds several seeds (a group of one run keeps
    its seed too: runs stopped at different caps are groups of their own, and their seeds are what pairs them)."""
    several = len({run.data.tags.get("advbayes.seed") for run in runs}) > 1
    return {
        run.info.run_id: f"{groups[run.info.run_id]} (seed {run.data.tags.get('advbayes.seed', '?')})"
        if several
        else groups[run.info.run_id]
        for run in runs
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; a `|` inside a cell (a norm, ||delta||) is escaped, so it stays one cell."""

    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [cells(header), "|" + "|".join(" --- " for _ in header) + "|"]
    lines += [cells(row) for row in rows]
    return "\n".join(lines)


def metric_table(results: dict[str, list[dict[str, str]]], metric: str, groups: dict[str, str] | None = None) -> str:
    """Rows defense / attack, columns eps, for one metric of every run (with its 95 % interval where logged);
    runs that `groups` maps to one defense also get a mean +- sd row across them (their seeds)."""
    eps_values = sorted({float(r["eps"]) for rows in results.values() for r in rows if r["metric"] == metric})
    rows = []
    pooled: dict[tuple[str, str], dict[float, list[float]]] = {}
    for label, records in results.items():
        value_of = values_by_key(records)
        attacks = list(dict.fromkeys(r["attack"] for r in records if r["metric"] == metric))
        for attack in attacks:
            cells = []
            for e in eps_values:
                value = value_of.get((attack, e, metric))
                low, high = (
                    value_of.get((attack, e, f"{metric}_ci_low")),
                    value_of.get((attack, e, f"{metric}_ci_high")),
                )
                if value is not None and groups:
                    pooled.setdefault((groups[label], attack), {}).setdefault(e, []).append(value)
                cells.append(
                    "-"
                    if value is None
                    else format_value(value)
                    if low is None or high is None
                    else format_interval(value, low, high)
                )
            rows.append([label, attack, *cells])
    for (defense, attack), by_eps in pooled.items():
        if max(len(v) for v in by_eps.values()) > 1:
            cells = ["{:.4f} +- {:.4f}".format(*mean_sd(by_eps[e])) if e in by_eps else "-" for e in eps_values]
            rows.append([f"{defense}: mean +- sd over {max(len(v) for v in by_eps.values())} seeds", attack, *cells])
    return markdown_table(["defense", "attack", *(f"eps {e:g}" for e in eps_values)], rows)


def points_of(run: Any, rows: Sequence[dict[str, str]], metric: str, group: str) -> list[Point]:
    """One run's values of `metric` (from its results.csv rows) as figure points of its defense group."""
    value_of = values_by_key(rows)
    seed = run.data.tags.get("advbayes.seed", "")
    return [
        Point(
            group,
            int(seed) if seed.isdigit() else None,
            attack,
            eps,
            value,
            value_of.get((attack, eps, f"{metric}_ci_low")),
            value_of.get((attack, eps, f"{metric}_ci_high")),
        )
        for (attack, eps, name), value in value_of.items()
        if name == metric
    ]


def overlay_figures(
    name: str,
    runs: Sequence[Any],
    results: dict[str, list[dict[str, str]]],
    metrics: Sequence[str],
    out: Path,
    folder: Path,
) -> list[str]:
    """The experiment's paper figures (one per metric with more than one point, defenses overlaid, PNG and PDF)
    and their Markdown."""
    groups = defense_groups(runs)
    labels = run_labels(runs, groups)
    points = {
        m: [p for r in runs for p in points_of(r, results[labels[r.info.run_id]], m, groups[r.info.run_id])]
        for m in metrics
    }
    parts: list[str] = []
    for metric in drawable_metrics(points):
        if len({(p.defense, p.attack, p.eps) for p in points[metric]}) < 2:
            continue  # one defense at one attack and eps: a single dot says less than its table row
        png, pdf = save_figure(experiment_figure(points[metric], metric, title=name), folder, f"{metric}_vs_eps")
        parts += ["", f"### figure: {metric}", "", f"![{metric} vs eps]({png.relative_to(out).as_posix()})"]
        parts.append(f"([PDF]({pdf.relative_to(out).as_posix()}))")
    return parts


def commit_of(tags: Mapping[str, str]) -> str:
    """`commit C` (with uncommitted changes) from a run's provenance tags, and the other code that resumed it."""
    resumed = tags.get(RESUMED_CODE_TAG)
    return f"{commit_text(tags)}, resumed with {resumed}" if resumed else commit_text(tags)


def versions_of(tags: Mapping[str, str]) -> str:
    """`advbayes A, torch T, mlflow M` from a run's provenance tags."""
    return ", ".join(
        f"{p} {tags[key]}" for p in ("advbayes", "torch", "mlflow") if (key := f"advbayes.version.{p}") in tags
    )


def codes_of(runs: Sequence[Any]) -> str:
    """`commit C, advbayes A, torch T, mlflow M` of the runs; where runs differ (resumed or rerun by other code), each
    commit or code with its number of runs, in the runs' order."""
    versions = {versions_of(r.data.tags) for r in runs}
    shared = versions.pop() if len(versions) == 1 else None
    codes = Counter(commit_of(r.data.tags) if shared is not None else code_of(r.data.tags) for r in runs)
    listed = [code if len(codes) == 1 else f"{code} ({count} run{'s' * (count > 1)})" for code, count in codes.items()]
    if shared is None:  # each code has commas of its own
        return "; ".join(listed)
    return ", ".join([*listed, shared] if shared else listed)


def code_of(tags: Mapping[str, str]) -> str:
    """`commit C (uncommitted changes), advbayes A, torch T, mlflow M` from a run's provenance tags."""
    return ", ".join(part for part in (commit_of(tags), versions_of(tags)) if part)


def experiment_section(store: RunSource, name: str, out: Path, figures_dir: Path, metrics: Sequence[str] | None) -> str:
    """The Markdown of one experiment: setting, tables per metric, training summary, model metrics, figures."""
    runs = store.runs(name)
    if not runs:
        raise RunError(f"experiment '{name}' has no FINISHED runs in {store.source}")
    first = runs[0]
    params = first.data.params
    # UTC: the same runs give the same report on every machine (make findings regenerates it byte for byte)
    started = dt.datetime.fromtimestamp(first.info.start_time / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setting = ", ".join(
        f"{label} {params[key]}"
        for label, key in (
            ("data", "dataset.name"),
            ("n_train", "dataset.n_train"),
            ("n_test", "dataset.n_test"),
            ("model", "model.name"),
            ("epochs", "epochs"),
            ("batch", "batch_size"),
        )
        if key in params
    )
    seeds = sorted({int(seed) for r in runs if (seed := r.data.tags.get("advbayes.seed", "")).isdigit()})
    if seeds:
        setting += f", seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    parts = [
        f"## {name}",
        "",
        params.get("description", ""),
        "",
        f"Setting: {setting}; device {first.data.tags.get('advbayes.device', '?')}; started {started}; "
        f"{codes_of(runs)}.",
        "",
    ]
    group_of = defense_groups(runs)
    label_of = run_labels(runs, group_of)
    parts.append(
        markdown_table(
            ["defense", "run id", "code"],
            [[label_of[r.info.run_id], f"`{r.info.run_id}`", commit_of(r.data.tags)] for r in runs],
        )
    )
    results = {label_of[r.info.run_id]: store.rows(r.info.run_id) for r in runs}
    groups = {label_of[r.info.run_id]: group_of[r.info.run_id] for r in runs}
    names = list(dict.fromkeys(row["metric"] for rows in results.values() for row in rows))
    names = [m for m in names if not is_companion(m, set(names))]
    shown = [m for m in names if metrics is None or m in metrics]
    for metric in shown:
        parts += ["", f"### {metric}", "", metric_table(results, metric, groups)]
    parts += overlay_figures(name, runs, results, shown, out, figures_dir / name)
    train_keys = [k for k in TRAIN_COLUMNS if any(f"train/{k}" in r.data.metrics for r in runs)]
    if train_keys:
        rows = [
            [
                label_of[r.info.run_id],
                *(
                    format_value(r.data.metrics[f"train/{k}"]) if f"train/{k}" in r.data.metrics else "-"
                    for k in train_keys
                ),
            ]
            for r in runs
        ]
        parts += ["", "### training (last epoch)", "", markdown_table(["defense", *train_keys], rows)]
    parts += posterior_at_stop(store, runs, label_of)
    model_keys = sorted({k for r in runs for k in r.data.metrics if k.startswith("model/")})  # not the store's order
    if model_keys:
        rows = [
            [k[len("model/") :], *(format_value(r.data.metrics[k]) if k in r.data.metrics else "-" for r in runs)]
            for k in model_keys
        ]
        parts += [
            "",
            "### model metrics",
            "",
            markdown_table(["metric", *(label_of[r.info.run_id] for r in runs)], rows),
        ]
    for run in runs:
        label = label_of[run.info.run_id]
        folder = label.replace(" (seed ", "-seed").rstrip(")")  # a path part without spaces or brackets
        copied = store.copy_figures(run, figures_dir / name / folder, metrics)
        if copied:
            parts += ["", f"### figures: {label}", ""]
            parts += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in copied]
    return "\n".join(parts)


def posterior_at_stop(store: RunSource, runs: Sequence[Any], label_of: Mapping[str, str]) -> list[str]:
    """A table of each Gaussian posterior where training stopped: epochs, the rule's verdict, its width against the
    initial one, and how fast width and loss still moved (relative_trend over the last 2 x convergence_window
    epochs, from the run's history, so records made before runs logged it get it too). [] without such runs."""
    rows = []
    for run in runs:
        widths = [value for _, value in store.history(run.info.run_id, f"train/{WIDTH_KEY}")]
        if not widths:
            continue
        losses = [value for _, value in store.history(run.info.run_id, TRAINING_LOSS)]
        window = int(run.data.params.get("convergence_window", DEFAULT_WINDOW))
        width_trend, loss_trend = stop_trends(widths, losses, window)
        metrics = run.data.metrics
        converged = metrics.get("model/posterior/converged")
        ratio = metrics.get("model/posterior/width_over_initial")
        rows.append(
            [
                label_of[run.info.run_id],
                str(len(widths)),
                "-" if converged is None else "yes" if converged == 1 else "no",
                "-" if ratio is None else f"x{ratio:.3g}",
                percent_or_dash(width_trend),
                percent_or_dash(loss_trend),
            ]
        )
    if not rows:
        return []
    header = ["defense", "epochs", "converged", "sigma^2 / initial", "sigma^2 trend / epoch", "loss trend / epoch"]
    return [
        "",
        "### posterior where training stopped",
        "",
        "Trends: the Theil-Sen slope per epoch over the last 2 x convergence_window epochs, relative to their median "
        "(the convergence rule compares two windows against its tolerance, so a loss that falls steadily by less "
        "than the tolerance per window meets it while still falling).",
        "",
        markdown_table(header, rows),
    ]


def percent_or_dash(value: float) -> str:
    """A signed share as `+0.123%`, or `-` for nan (too few epochs)."""
    return "-" if math.isnan(value) else f"{value:+.3%}"


def param_series(store: RunSource, spec: FigureSpec) -> dict[str, dict[float, list[float]]]:
    """{defense: {x: values}} of an x_param figure: per run of each experiment, x its param, y its metric (or its
    result at the attack and eps); an x that two experiments share would merge their settings and is an error."""
    series: dict[str, dict[float, list[float]]] = {}
    x_from: dict[float, str] = {}
    for experiment in spec.experiments:
        for run in store.runs(experiment, missing_ok=True):
            defense = run.data.tags.get("advbayes.defense", "?")
            if spec.defenses and defense not in spec.defenses:
                continue
            where = f"figure '{spec.name}': run {run.info.run_id} of {experiment}"
            raw = run.data.params.get(spec.x_param)
            x = param_number(raw)
            if x is None:
                raise RunError(f"{where}: param {spec.x_param} is {raw!r}; the x_param needs one number")
            if x_from.setdefault(x, experiment) != experiment:
                clash = f"{spec.x_param} = {x:g} in {x_from[x]} too"
                raise RunError(f"{where}: {clash}; x_param must tell the experiments apart")
            if spec.attack is None:
                value = run.data.metrics.get(spec.metric)
            else:
                value = values_by_key(store.rows(run.info.run_id)).get((spec.attack, float(spec.eps or 0), spec.metric))
            if value is not None:
                series.setdefault(defense, {}).setdefault(x, []).append(value)
    return series


def claim_figure(store: RunSource, spec: FigureSpec, folder: Path, out: Path) -> list[str]:
    """One [[figure]] of a claims file, drawn from the store, and its Markdown."""
    if spec.x_param:
        return param_figure(store, spec, folder, out)
    defenses = list(spec.defenses) or store.defenses(spec.experiment)
    series: dict[str, dict[float, list[float]]] = {}
    for defense in defenses:
        by_x = series.setdefault(defense, {})
        for _seed, run_id, results, metrics, _outcomes in store.runs_of(spec.experiment, defense):
            if spec.history:
                for step, value in store.history(run_id, spec.metric):
                    by_x.setdefault(float(step), []).append(value)
            elif spec.attack is not None:
                for (attack, eps, metric), value in results.items():
                    x = x_of(spec.attack, attack)
                    if x is not None and metric == spec.metric and (spec.eps is None or eps == spec.eps):
                        by_x.setdefault(x, []).append(value)
            else:
                for key, value in metrics.items():
                    x = x_of(spec.metric, key)
                    if x is not None:
                        by_x.setdefault(x, []).append(value)
    series = {d: v for d, v in series.items() if v}
    if not series:
        if not store.defenses(spec.experiment):  # the experiment was not run into this store
            return [f"Figure '{spec.title}': experiment {spec.experiment} has no finished runs in what was read."]
        raise RunError(f"figure '{spec.name}': no run of experiment '{spec.experiment}' has {spec.metric}")
    figure = series_figure(
        series,
        title=spec.title,
        xlabel=spec.xlabel or ("epoch" if spec.history else "x"),
        ylabel=spec.ylabel or spec.metric,
        log_x=not spec.history and min(min(v) for v in series.values()) > 0,
        log_y=spec.log_y,
    )
    return figure_markdown(figure, spec, folder, out)


def param_figure(store: RunSource, spec: FigureSpec, folder: Path, out: Path) -> list[str]:
    """An x_param [[figure]]: the metric against a setting that differs between experiments, and its Markdown."""
    series = param_series(store, spec)
    xs = [x for by_x in series.values() for x in by_x]
    names = ", ".join(spec.experiments)
    if not series:
        if not any(store.defenses(e) for e in spec.experiments):
            return [f"Figure '{spec.title}': experiments {names} have no finished runs in what was read."]
        raise RunError(f"figure '{spec.name}': no run of {names} has {spec.metric}")
    figure = series_figure(
        series,
        title=spec.title,
        xlabel=spec.xlabel or spec.x_param,
        ylabel=spec.ylabel or spec.metric,
        log_x=min(xs) > 0 and max(xs) > 10 * min(xs),  # a few settings read best on a linear axis
        log_y=spec.log_y,
    )
    return figure_markdown(figure, spec, folder, out)


def figure_markdown(figure: Any, spec: FigureSpec, folder: Path, out: Path) -> list[str]:
    """A claims file's figure saved as PNG and PDF, and the Markdown that shows it."""
    png, pdf = save_figure(figure, folder, spec.name)
    return [f"![{spec.title}]({png.relative_to(out).as_posix()}) ([PDF]({pdf.relative_to(out).as_posix()}))"]


def claims_section(
    store: RunSource, claims: Sequence[Claim], figures: Sequence[FigureSpec], source: str, out: Path, figures_dir: Path
) -> str:
    """The claims summary: the verdict rule, one row per claim, then the claims file's figures."""
    rows, outcomes = [], []
    for claim in claims:
        if claim.not_testable:
            rows.append(not_testable_row(claim))
            outcomes.append("not testable")
            continue
        # an experiment with no finished run at all was not run into this store: said in its row; a defense or
        # metric missing from an experiment that has runs is a mistake in the claims file, and an error
        named = {q.experiment for q in (claim.a, claim.b) if q.experiment}
        missing = sorted(e for e in named if not store.defenses(e))
        if missing:
            rows.append(not_run_row(claim, missing))
            outcomes.append("not run")
        else:
            evaluated = evaluate(claim, store.runs_of)
            rows.append(claim_row(evaluated))
            outcomes.append(evaluated.outcome)
    counts = {
        v: outcomes.count(v)
        for v in ("held", "did not hold", "inconclusive", "not run", "not testable", "artifact", "not converged")
    }
    parts = [
        "## Summary of the claims",
        "",
        VERDICT_RULE,
        "",
        f"Verdicts: {counts['held']} held, {counts['did not hold']} did not hold, "
        f"{counts['inconclusive']} inconclusive, {counts['not run']} not run; {counts['not testable']} not testable "
        f"here, {counts['artifact']} artifacts of the setup, {counts['not converged']} on a posterior that did not "
        f"converge (claims from `{source}`).",
        "",
        markdown_table(CLAIM_HEADER, rows),
    ]
    if figures:
        parts += ["", "### figures of the claims", ""]
        for spec in figures:
            parts += claim_figure(store, spec, figures_dir / "claims", out) + [""]
    return "\n".join(parts).rstrip()


def write_report(
    experiments: Sequence[str],
    out: Path,
    *,
    tracking_uri: str | None = None,
    file: str = "report.md",
    preamble: Path | None = None,
    metrics: Sequence[str] | None = None,
    claims: Path | None = None,
    records: Path | None = None,
) -> Path:
    """Write OUT/FILE (and its figures beside it) for the newest finished runs of `experiments`, read from the
    store or, with `records`, from run records (lab/records.py); with `claims`, a summary that checks each claim of
    that file against the runs first."""
    if Path(file).name != file or file in ("", ".", ".."):
        raise RunError(f"--file: expected a file name inside --out, got {file!r}")
    if records is not None and tracking_uri is not None:
        raise RunError("--records and --tracking-uri: a report reads one source, give one of them")
    # MLflow draws a progress bar per downloaded artifact: dozens of lines of noise for small files
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    recorded = RecordRuns(read_records(records), records) if records is not None else None
    client = client_for(tracking_uri, write=False) if recorded is None else None
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = out / f"{Path(file).stem}_figures"
    if figures_dir.exists():
        shutil.rmtree(figures_dir)
    sections = []
    if preamble is not None:
        if not preamble.is_file():
            raise RunError(f"--preamble {preamble}: no such file")
        sections.append(preamble.read_text().rstrip())
    else:
        sections.append(f"# advbayes report: {', '.join(experiments)}")
    # a malformed claims file fails before anything is read or drawn
    claim_list, claim_figures = load_claims(claims) if claims is not None else ([], [])
    with tempfile.TemporaryDirectory(prefix="advbayes-report-") as scratch:
        store: RunSource = recorded if recorded is not None else StoreRuns(client, Path(scratch))
        sections.append(f"Generated by `advbayes report {' '.join(experiments)}` from {store.source}.")
        if claims is not None:
            sections.append(claims_section(store, claim_list, claim_figures, claims.name, out, figures_dir))
        for name in experiments:
            sections.append(experiment_section(store, name, out, figures_dir, metrics))
    path = out / file
    path.write_text("\n\n".join(sections) + "\n")
    return path
