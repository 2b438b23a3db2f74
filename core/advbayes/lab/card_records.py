"""A card's runs shipped beside it, and the card re-derived from them.

`export_card_runs` writes the record (lab/records.py: params, tags, metrics, results and per-example verdicts; no
weights) of every run a card names. `verify_card` recomputes from those records everything a card states about its
runs: the clean and robust accuracies (per-example worst case, intervals, seed spread, each attack's accuracy), the
checks (from the findings the runs tagged and their posteriors' verdicts), whether the network was stochastic and
the commit and versions; the first difference is a one-line error. So a card can be checked against its runs by
anyone with the records, without the store that ran them.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advbayes.checks import Finding
from advbayes.errors import RunError
from advbayes.lab.cards import card_name, check_outcomes, claims_problem, summary, threat_section
from advbayes.lab.protocol import PROTOCOLS, ThreatModel, param_differences, protocol_params
from advbayes.lab.records import RecordRun, dumps_record, read_records, record_of
from advbayes.lab.sources import StoreRuns
from advbayes.results import EvalRecord, unpack_outcomes
from advbayes.tracking.settings import CONVERGED_METRIC
from advbayes.tracking.store import MAX_TAG, client_for, shown_uri

CHECK_TAG = "advbayes.check."  # checks.Finding.tag: advbayes.check.KIND.ATTACK[.EPS], the message as its value
CREATED = "created"  # the card's own date in its provenance: no run states it
TRAINED_ROLE = "train"  # the run that trained the defense (a bench of an entry; a bench of a run id has none)


def export_card_runs(cards: Sequence[Mapping[str, Any]], out: Path, tracking_uri: str | None = None) -> list[Path]:
    """Write OUT/DATASET--ENTRY/ROLE-seedS-ID.json, the record of every run each card names, read from
    `tracking_uri` (else the store the card names); a card's folder is replaced whole. Every run is found before
    anything is written."""
    if not cards:
        raise RunError("export --cards: no result cards to export the runs of")
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="advbayes-export-") as scratch:
        found: list[tuple[Mapping[str, Any], Any, list[tuple[str, str, Any]]]] = []
        for card in cards:
            store = tracking_uri or card["runs"]["store"] or None
            if store is not None and "***" in store:  # a card keeps its store without the password (shown_uri)
                raise RunError(
                    f"card {card_name(card)}: its store {store} is written without its password: give it with "
                    "--tracking-uri"
                )
            client = client_for(store, write=False)
            runs = []
            for seed, roles in card["runs"]["seeds"].items():
                for role, run_id in roles.items():
                    try:
                        runs.append((f"{role}-seed{seed}", run_id, client.get_run(run_id)))
                    except Exception as exc:  # noqa: BLE001 (MLflow raises its own kinds; any means: not there)
                        where = f"{shown_uri(client.tracking_uri)} ({type(exc).__name__})"
                        raise RunError(
                            f"card {card_name(card)}: run {run_id} (seed {seed}, {role}) is not in {where}; "
                            "give the store with --tracking-uri"
                        ) from None
            found.append((card, client, runs))
        for card, client, runs in found:
            folder = out / card_name(card)
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            store, experiments = StoreRuns(client, Path(scratch)), {}
            for label, run_id, run in runs:
                if run.info.experiment_id not in experiments:  # a bench's runs share one or two experiments
                    experiments[run.info.experiment_id] = client.get_experiment(run.info.experiment_id).name
                experiment = experiments[run.info.experiment_id]
                record = record_of(client, run, experiment, store.rows(run_id), store.examples(run_id))
                path = folder / f"{label}-{run_id[:8]}.json"
                path.write_text(dumps_record(record))
                written.append(path)
    return written


def eval_records(run: RecordRun) -> list[EvalRecord]:
    """A run's accuracy verdicts as EvalRecords, in the order the run wrote them (examples.csv rows, with each
    attack's accuracy from results.csv)."""
    values = {(r["attack"], float(r["eps"])): float(r["value"]) for r in run.results if r["metric"] == "accuracy"}
    records = []
    for row in run.examples:
        if row["metric"] != "accuracy":
            continue
        key = (row["attack"], float(row["eps"]))
        if key not in values:
            raise RunError(f"run {run.info.run_id}: its results hold no accuracy of {key[0]} at eps {key[1]:g}")
        n = int(row["n"])
        records.append(
            EvalRecord(
                attack_label=key[0],
                entry=key[0],
                eps=key[1],
                metrics={"accuracy": values[key]},
                attack_samples=0,
                inference_samples=0,
                mean_l2=0.0,
                max_linf=0.0,
                examples=n,
                per_example={"accuracy": row["outcomes"]},
            )
        )
    return records


def rederive(card: Mapping[str, Any], runs: Mapping[str, RecordRun]) -> dict[str, Any]:
    """What the card states about its runs, computed again from their records: clean, threat_models, checks,
    stochastic and the provenance of the run that trained the defense."""
    threats = [ThreatModel(**{**t, "radii": tuple(t["radii"])}) for t in card["protocol"]["threat_models"]]
    first = threats[0].name

    def run_of(seed: str, role: str) -> RecordRun:
        run_id = card["runs"]["seeds"][seed].get(role)
        if run_id is None or run_id not in runs:
            raise RunError(f"card {card_name(card)}: run {run_id} (seed {seed}, {role}) has no record")
        return runs[run_id]

    clean, converged, findings = [], [], []
    trained_by: list[dict[str, str | None]] = []
    evaluated: dict[str, list[list[EvalRecord]]] = {t.name: [] for t in threats}
    for seed, roles in card["runs"]["seeds"].items():
        for role in roles:  # every run the card names has its record, the twin's included
            run_of(seed, role)
        # the bench's own run of the trained defense: its training run, or (a tracked run benched) its first evaluation
        trained = run_of(seed, TRAINED_ROLE if TRAINED_ROLE in roles else first)
        trained_by.append({k: trained.data.tags.get(k) for k in card["provenance"] if k != CREATED})
        clean_record = next((r for r in eval_records(trained) if r.attack_label == "none"), None)
        if clean_record is None:
            raise RunError(f"card {card_name(card)}: seed {seed}: run {trained.info.run_id} recorded no clean accuracy")
        clean.append(unpack_outcomes(clean_record.per_example["accuracy"], clean_record.examples))
        converged.append(trained.data.metrics.get(CONVERGED_METRIC))
        for threat in threats:
            run = run_of(seed, threat.name)
            evaluated[threat.name].append(eval_records(run))
            findings += [
                Finding(kind=key[len(CHECK_TAG) :].split(".")[0], attack="", eps=None, message=value)
                for key, value in sorted(run.data.tags.items())
                if key.startswith(CHECK_TAG)
            ]
    if any(tags != trained_by[0] for tags in trained_by):  # one bench, one process: one commit and set of versions
        raise RunError(f"card {card_name(card)}: its seeds' runs were tagged with different code: {trained_by}")
    attacks = {r.attack_label for by_seed in evaluated.values() for records in by_seed for r in records}
    return {
        "clean": summary(clean),
        "threat_models": {t.name: threat_section(t, evaluated[t.name]) for t in threats},
        "checks": check_outcomes(findings, converged),
        "stochastic": any(a.startswith("autoattack-rand") for a in attacks),
        "provenance": trained_by[0],
    }


def _differences(stated: Any, derived: Any, key: str) -> list[tuple[str, Any, Any]]:
    """(key, stated, derived) where the card and its re-derivation differ (numbers to 1e-9; seeds' values and a
    check's messages as sets: the card's seed order and the store's tag order are not part of what it states)."""
    if isinstance(derived, dict):
        if not isinstance(stated, dict) or set(stated) != set(derived):
            return [(key, sorted(stated) if isinstance(stated, dict) else stated, sorted(derived))]
        return [d for name in derived for d in _differences(stated[name], derived[name], f"{key}.{name}")]
    if key.endswith(".seed_values"):  # compared as a whole: an index into the sorted values would name no seed
        stated, derived = sorted(stated), sorted(derived)
        return [] if not _differences(stated, derived, key + "[]") else [(key, stated, derived)]
    if isinstance(derived, list):
        if not isinstance(stated, list) or len(stated) != len(derived):
            return [(key, stated, derived)]
        return [d for i, (a, b) in enumerate(zip(stated, derived)) for d in _differences(a, b, f"{key}[{i}]")]
    if isinstance(derived, float) and isinstance(stated, (int, float)) and not isinstance(stated, bool):
        same = math.isclose(stated, derived, rel_tol=1e-9, abs_tol=1e-12)
        return [] if same else [(key, stated, derived)]
    return [] if stated == derived else [(key, stated, derived)]


def _messages(detail: str) -> set[str]:
    """A check's detail as the set of its findings' messages, each as long as a tag keeps it."""
    return {message[:MAX_TAG] for message in detail.split("; ")}


def off_protocol_setting(card: Mapping[str, Any], runs: Mapping[str, RecordRun]) -> str | None:
    """For a card of the installed protocol version that says it follows it: the first thing its runs were made
    with that the protocol, resolved in the shipped registry and installed plugins', does not give (the bench
    experiment, the data set, the network, every attack and its sub-attacks, none missing or added), or None."""
    from advbayes.registry import load_registry

    protocol = PROTOCOLS.get(card["protocol"]["dataset"])
    if not card["conforms"] or protocol is None or protocol.version != card["protocol"]["version"]:
        return None
    registry = load_registry(include_cwd=False)
    for seed, roles in card["runs"]["seeds"].items():
        for role, run_id in roles.items():
            if runs[run_id].experiment != protocol.experiment:
                trained_by = runs[run_id].experiment
                return f"seed {seed}: run {run_id} ({role}) is of experiment {trained_by}, not {protocol.experiment}"
        for threat in protocol.threat_models:
            expected = protocol_params(protocol, registry, threat, bool(card["stochastic"]), roles.get("twin", ""))
            params = runs[roles[threat.name]].data.params
            found = param_differences(params, expected, ("dataset.", "model.", "attacks."))
            if found:
                return f"seed {seed}, {threat.name}: run {roles[threat.name]} has {found[0]}"
    return None


def verify_card(card: Mapping[str, Any], runs: Mapping[str, RecordRun], where: str) -> None:
    """Raise a one-line RunError at the first thing the card states against itself or that its runs' records do not
    give. Its numbers are compared with the records' rather than checked against each other: that message names what
    each should be, and numbers equal to the records' are consistent."""
    problem = claims_problem(card)
    if problem is not None:
        raise RunError(f"{where}: {problem}")
    derived = rederive(card, runs)
    off = off_protocol_setting(card, runs)
    if off is not None:
        raise RunError(f"{where}: the card says it follows protocol {card['protocol']['version']}, but {off}")
    stated_checks = {c["name"]: c for c in card["checks"]}
    for check in derived.pop("checks"):
        mine = stated_checks.get(check["name"])
        if mine is None or mine["status"] != check["status"]:
            status = None if mine is None else mine["status"]
            raise RunError(
                f"{where}: check {check['name']}: the card says {status}, its runs' records give {check['status']}"
            )
        if check["status"] == "failed" and _messages(mine["detail"]) != _messages(check["detail"]):
            raise RunError(f"{where}: check {check['name']}: its findings differ from those its runs tagged")
    stated = {key: card[key] for key in derived if key != "provenance"}
    stated["provenance"] = {k: v for k, v in card["provenance"].items() if k != CREATED}
    found = _differences(stated, derived, "card")
    if found:
        key, says, gives = found[0]
        key = key.removeprefix("card.")
        raise RunError(f"{where}: key '{key}': the card says {says!r:.80}, its runs' records give {gives!r:.80}")


def verify_cards(cards: Sequence[Mapping[str, Any]], records: Path) -> int:
    """Check every card against the run records under `records` (advbayes export --cards); how many were checked."""
    runs = {run.info.run_id: run for found in read_records(records).values() for run in found}
    for card in cards:
        verify_card(card, runs, f"card {card_name(card)}")
    return len(cards)
