"""What a sweep's --resume does not start again: per combination, the defenses whose runs FINISHED in the sweep (read
back, not rerun) and the unfinished runs it continues from their last checkpoint, so that a sweep stopped by a
preempted node or a killed driver loses at most an epoch of each run, not the runs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

import attrs

from advbayes.sweep.plan import COMBINATION_TAG, SWEEP_ID_TAG, SweepError, SweepPlan


@attrs.frozen
class Earlier:
    """The runs of one combination a --resume keeps: defense name -> run id."""

    finished: dict[str, str] = attrs.field(factory=dict)
    continued: dict[str, str] = attrs.field(factory=dict)  # unfinished, with a checkpoint: continued from it
    epochs: dict[str, int] = attrs.field(factory=dict)  # the epoch each continued run's checkpoint is at
    replaced: list[str] = attrs.field(factory=list)  # left RUNNING by a stopped process, not continued: closed


def sweep_runs_filter(sweep_id: str, role: str, condition: str = "") -> str:
    """The MLflow filter for a sweep's runs of one role (its record run, or its parent runs), and `condition`."""
    from advbayes.tracking import ROLE_TAG

    text = f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = '{role}'"
    return f"{text} and {condition}" if condition else text


def earlier_runs(client: Any, plan: SweepPlan) -> dict[str, Earlier]:
    """label -> the runs of that combination a --resume keeps: per defense its FINISHED run, else its newest unfinished
    run with a checkpoint; the runs a stopped process left RUNNING that neither is are to be closed. A run another
    process still writes stops the resume: continuing it or starting it again would train the same combination
    twice."""
    from advbayes.tracking import PARENT_ROLE
    from advbayes.tracking.lease import describe
    from advbayes.tracking.runs import current_holder, has_checkpoint, last_epoch, liveness

    experiment = client.get_experiment_by_name(plan.experiment)
    if experiment is None:
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=sweep_runs_filter(plan.sweep_id, PARENT_ROLE),
        max_results=50000,
        order_by=["attributes.start_time DESC"],
    )
    finished: dict[tuple[str, str], str] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            finished.setdefault(_combination_defense(run), run.info.run_id)
    kept: dict[str, Earlier] = {}
    for run in runs:  # newest first
        key, run_id = _combination_defense(run), run.info.run_id
        earlier = kept.setdefault(key[0], Earlier())
        if key in finished:
            earlier.finished[key[1]] = finished[key]
            if run.info.status == "RUNNING":  # a later try of a defense that has finished: closed
                earlier.replaced.append(run_id)
            continue
        if liveness(run) == "alive":
            raise SweepError(
                f"--resume {plan.sweep_id}: run {run_id} ({key[0]}, defense {key[1]}) is being written by "
                f"{describe(current_holder(run))}; let it finish or stop it first"
            )
        if key[1] not in earlier.continued and has_checkpoint(client, run_id):
            earlier.continued[key[1]] = run_id
            earlier.epochs[key[1]] = last_epoch(client, run_id)
        elif run.info.status == "RUNNING":  # no checkpoint, or an older one than the run continued
            earlier.replaced.append(run_id)
    return kept


def finished_labels(plan: SweepPlan, earlier: dict[str, Earlier]) -> set[str]:
    """Combinations each of whose defenses has a FINISHED run in the sweep (what --resume skips)."""
    return {c.label for c in plan.combinations if len(earlier.get(c.label, Earlier()).finished) >= c.runs}


def resume_lines(plan: SweepPlan, earlier: dict[str, Earlier], skipped: set[str]) -> list[str]:
    """What a --resume keeps of each combination it runs, one line per run."""
    lines = []
    for label, runs in sorted(earlier.items()):
        if label in skipped:
            continue
        for defense, run_id in sorted(runs.finished.items()):
            lines.append(f"sweep {plan.sweep_id}: {label}: {defense} FINISHED in run {run_id}, read back, not rerun")
        for defense, run_id in sorted(runs.continued.items()):
            lines.append(
                f"sweep {plan.sweep_id}: {label}: {defense} continues run {run_id} from its checkpoint "
                f"(epoch {runs.epochs[defense]})"
            )
    return lines


def close_replaced(tracking_uri: str, plan: SweepPlan, earlier: dict[str, Earlier]) -> list[str]:
    """Close (mark FAILED) the runs a stopped process left RUNNING that the resume neither keeps nor continues, so
    that none stays RUNNING for good; a line for each."""
    from advbayes.tracking.runs import close_run

    return [
        f"sweep {plan.sweep_id}: {label}: {close_run(tracking_uri, run_id)} (left RUNNING, not continued)"
        for label, runs in sorted(earlier.items())
        for run_id in runs.replaced
    ]


def close_runs(client: Any, experiment: str, plan: SweepPlan, label: str, error: str, status: str) -> list[str]:
    """A combination's runs its task left RUNNING (its worker died, or the sweep stopped it), marked `status` with
    the error; their ids."""
    from advbayes.tracking import PARENT_ROLE
    from advbayes.tracking.runs import filter_value

    condition = f"tags.`{COMBINATION_TAG}` = {filter_value(label)} and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment], filter_string=sweep_runs_filter(plan.sweep_id, PARENT_ROLE, condition))
    for run in runs:
        client.set_tag(run.info.run_id, "error", error)
        client.set_terminated(run.info.run_id, status=status)
    return [run.info.run_id for run in runs]


# the values `advbayes sweep` takes when an option is not given: a resume command repeats the others
OPTION_DEFAULTS: dict[str, Any] = {
    "--address": None,
    "--workers": None,
    "--gpus-per-run": None,
    "--cpus-per-run": 1.0,
    "--device": "auto",
}


def resume_command(sweep_id: str, options: Mapping[str, Any]) -> str:
    """The command that finishes sweep `sweep_id` with the options it ran with (those not at their defaults)."""
    words = ["advbayes", "sweep", "--resume", sweep_id]
    for option, value in options.items():
        if value is not None and value != OPTION_DEFAULTS.get(option):
            words += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _combination_defense(run: Any) -> tuple[str, str]:
    tags = run.data.tags
    return tags.get(COMBINATION_TAG, ""), tags.get("advbayes.defense", run.info.run_name)
