"""The settings that tell tracked runs apart: what compare and report group by, so runs made with different
settings (a swept lr, an overridden defense parameter) are never averaged together or shown under one name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Params that never separate runs: the seed is what a group averages over, eps is the table's columns, the
# rest name or describe the experiment rather than set it (a run is one of its defenses and seeds, which its own
# `defense.*` and `seed` say; a resumed run logs the empty `defenses` its resolved spec has, its original none).
NOT_SETTINGS = frozenset({"seed", "seeds", "defenses", "eps", "name", "description"})
DEFENSE_PREFIX = "defense."
BOOKKEEPING_PREFIX = "advbayes."  # params advbayes keeps for itself (the run's writers, see lease.py)
CONVERGED_METRIC = "model/posterior/converged"  # 1 or 0 where a run judged its posterior (Bayesian defenses)
CAP_KEY = "epochs"
UNTIL_CONVERGED = "until converged"  # the cap of a run whose posterior converged: it did not decide the run


def run_params(run: Any) -> Mapping[str, str]:
    """The run's params as settings: a run trained until its posterior converged, which it did, has the epoch cap
    "until converged", because any cap at least its stopping epoch trains the same run (the rule is checked after
    every epoch), so runs continued to a larger cap are still averaged with those that stopped under the smaller."""
    params = run.data.params
    if params.get("until_converged") == "True" and run.data.metrics.get(CONVERGED_METRIC) == 1.0 and CAP_KEY in params:
        return {**params, CAP_KEY: UNTIL_CONVERGED}
    return params


def experiment_and_defense(run: Any) -> tuple[str, str]:
    """The (experiment, defense entry) tags of a tracked run."""
    tags = run.data.tags
    return tags.get("advbayes.experiment", "?"), tags.get("advbayes.defense", "?")


def varied_settings(runs: Sequence[Any]) -> list[str]:
    """Param keys whose value differs between runs of one experiment and defense (a missing key counts as a
    value), sorted; the seed and eps are not settings."""
    groups: dict[tuple[str, str], list[Mapping[str, str]]] = {}
    for run in runs:
        groups.setdefault(experiment_and_defense(run), []).append(run_params(run))
    varied: set[str] = set()
    for params in groups.values():
        keys = {key for key in set().union(*params) - NOT_SETTINGS if not key.startswith(BOOKKEEPING_PREFIX)}
        varied.update(key for key in keys if len({p.get(key) for p in params}) > 1)
    return sorted(varied)


def defense_label(run: Any, varied: Sequence[str]) -> str:
    """The defense entry's name, with the varied defense parameters of this run: noisy-bnn[sigma=0.2]."""
    params = run_params(run)
    own = [f"{key[len(DEFENSE_PREFIX) :]}={params.get(key, '-')}" for key in varied if key.startswith(DEFENSE_PREFIX)]
    name = experiment_and_defense(run)[1]
    return f"{name}[{','.join(own)}]" if own else name


def setting_columns(varied: Sequence[str]) -> list[str]:
    """The varied settings shown as columns: those outside the defense entry (defense ones are in its label)."""
    return [key for key in varied if not key.startswith(DEFENSE_PREFIX)]


def run_settings(run: Any, varied: Sequence[str]) -> dict[str, str]:
    """This run's values of the setting columns ("-" where it did not log the key)."""
    params = run_params(run)
    return {key: params.get(key, "-") for key in setting_columns(varied)}


def group_key(run: Any, varied: Sequence[str]) -> tuple[str, ...]:
    """What runs must share to be averaged over seeds: experiment, labelled defense and every varied setting."""
    return (experiment_and_defense(run)[0], defense_label(run, varied), *run_settings(run, varied).values())


def group_label(run: Any, varied: Sequence[str]) -> str:
    """The labelled defense and this run's other varied settings: bnn[prior_sigma=0.1] lr=0.01."""
    settings = " ".join(f"{key}={value}" for key, value in run_settings(run, varied).items())
    return f"{defense_label(run, varied)} {settings}".rstrip()
