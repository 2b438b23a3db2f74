"""Result cards: one JSON file per benched defense (schema CARD_VERSION, validated on read), built from its runs'
per-example verdicts, and their ranking (a card with a failed check never above a passing one)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advbayes.checks import Finding
from advbayes.errors import RunError
from advbayes.intervals import mean_sd, wilson_interval
from advbayes.lab.protocol import CHECKS, CONVERGED, Protocol, ThreatModel
from advbayes.results import EvalRecord, unpack_outcomes

CARD_VERSION = 1
# which check each evaluation finding (advbayes.checks) fails
FAILS = {
    "randomness": "randomness",
    "zero-gradients": "gradient-masking",
    "rises-with-eps": "monotonic-in-eps",
    "rises-with-steps": "monotonic-in-steps",
    "black-box-stronger": "black-box-below-white-box",
}


def worst_case(records: Sequence[EvalRecord], eps: float) -> tuple[list[int], dict[str, float]]:
    """Per test example at radius `eps`: 1 when it survived every attack (each attack's own verdict, all R
    predictions right for autoattack-rand), and each attack's accuracy."""
    rows = [r for r in records if r.eps == eps and r.entry != "none" and r.attack_label != "none"]
    if not rows:
        raise RunError(f"no attack was evaluated at eps {eps:g}: the card has nothing to report there")
    survived: list[int] | None = None
    for record in rows:
        if "accuracy" not in record.per_example:
            raise RunError(f"attack {record.attack_label} at eps {eps:g} kept no per-example verdicts (sharded run?)")
        outcomes = unpack_outcomes(record.per_example["accuracy"], record.examples)
        survived = outcomes if survived is None else [a & b for a, b in zip(survived, outcomes)]
    assert survived is not None
    return survived, {r.attack_label: r.metrics["accuracy"] for r in rows}


def summary(per_seed: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Mean over seeds of the per-seed accuracy, the seeds' sd and values, and the 95 % Wilson interval of all the
    verdicts pooled (n x seeds; the seeds' sd is beside it, not in it)."""
    values = [sum(v) / len(v) for v in per_seed]
    mean, sd = mean_sd(values)
    successes, n = sum(sum(v) for v in per_seed), sum(len(v) for v in per_seed)
    low, high = wilson_interval(successes, n)
    return {"value": mean, "interval": [low, high], "seed_sd": sd, "seed_values": values, "n": len(per_seed[0])}


def check_outcomes(findings: Sequence[Finding], converged: Sequence[float | None]) -> list[dict[str, str]]:
    """Every protocol check: failed with the findings' messages, or passed; the posterior check is n/a for a network
    without Gaussian weights (no posterior to judge)."""
    outcomes = []
    for check in CHECKS:
        failed = [f.message for f in findings if FAILS.get(f.kind) == check]
        status = "failed" if failed else "passed"
        outcomes.append({"name": check, "status": status, "detail": "; ".join(failed) or "no finding"})
    judged = [c for c in converged if c is not None]
    if not judged:
        outcomes.append({"name": CONVERGED, "status": "n/a", "detail": "no Gaussian weights: no posterior to judge"})
    else:
        unconverged = sum(1 for c in judged if c != 1.0)
        outcomes.append(
            {
                "name": CONVERGED,
                "status": "failed" if unconverged else "passed",
                "detail": f"posterior/converged on {len(judged) - unconverged} of {len(judged)} seeds",
            }
        )
    return outcomes


def threat_section(threat: ThreatModel, records_by_seed: Sequence[Sequence[EvalRecord]]) -> dict[str, Any]:
    """A threat model's part of a card: per radius the worst case over its attacks, and each attack's mean."""
    radii = {}
    for eps in threat.radii:
        survived, by_attack = zip(*(worst_case(records, eps) for records in records_by_seed))
        attacks = sorted({name for row in by_attack for name in row})
        section = summary(survived)
        section["by_attack"] = {a: mean_sd([row[a] for row in by_attack if a in row])[0] for a in attacks}
        radii[f"{eps:g}"] = section
    return {"norm": threat.norm, "headline": f"{threat.headline:g}", "radii": radii}


# Settings the protocol fixes (what is evaluated, on what): a --set of one is a deviation. Training settings (epochs,
# lr, batch size, the defense's own parameters) are the defense's configuration, recorded with it on the card.
PROTOCOL_KEYS = ("dataset", "model", "attacks", "eps", "seeds", "seed", "metrics", "defenses", "variants")


def deviations(protocol: Protocol, seeds: Sequence[int], examples: int, overrides: Sequence[str]) -> list[str]:
    """Where a bench left the protocol: fewer seeds or test examples, a changed evaluation setting."""
    found = []
    if len(seeds) < len(protocol.seeds):
        found.append(f"{len(seeds)} seed(s), the protocol asks for {len(protocol.seeds)}")
    if examples < protocol.test_examples:
        found.append(f"{examples} test examples, the protocol asks for the full split of {protocol.test_examples}")
    found += [f"--set {o}" for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in PROTOCOL_KEYS]
    return found


# ------------------------------------------------------------------------------------------------ schema

NUMBER, TEXT, FLAG, INTEGER = "number", "text", "flag", "integer"
STAT = {"value": NUMBER, "interval": [NUMBER], "seed_sd": NUMBER, "seed_values": [NUMBER], "n": INTEGER}
SCHEMA: dict[str, Any] = {
    "advbayes_card": INTEGER,
    "protocol": {
        "version": INTEGER,
        "dataset": TEXT,
        "experiment": TEXT,
        "test_examples": INTEGER,
        "seeds": [INTEGER],
        "attack_samples": INTEGER,
        "threat_models": [{"name": TEXT, "norm": TEXT, "radii": [NUMBER], "headline": NUMBER}],
    },
    "defense": {"entry": TEXT, "params": {"*": None}, "settings": [TEXT]},
    "model": TEXT,
    "stochastic": FLAG,
    "conforms": FLAG,
    "deviations": [TEXT],
    "passed": FLAG,
    "checks": [{"name": TEXT, "status": TEXT, "detail": TEXT}],
    "clean": STAT,
    "threat_models": {"*": {"norm": TEXT, "headline": TEXT, "radii": {"*": {**STAT, "by_attack": {"*": NUMBER}}}}},
    "runs": {"store": TEXT, "experiment_id": TEXT, "seeds": {"*": {"*": TEXT}}},
    "provenance": {"*": TEXT},
    "device": TEXT,
    "seconds": NUMBER,
}
KINDS = {
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    INTEGER: lambda v: isinstance(v, int) and not isinstance(v, bool),
    TEXT: lambda v: isinstance(v, str),
    FLAG: lambda v: isinstance(v, bool),
}


def validate(value: Any, schema: Any, where: str) -> None:
    """Raise a one-line RunError at the first key whose value does not have the schema's type."""
    if schema is None:  # anything (a defense's own parameters)
        return
    if isinstance(schema, str):
        if not KINDS[schema](value):
            raise RunError(f"{where}: expected {schema}, got {json.dumps(value)[:80]}")
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise RunError(f"{where}: expected a list, got {json.dumps(value)[:80]}")
        for i, item in enumerate(value):
            validate(item, schema[0], f"{where}[{i}]")
        return
    if not isinstance(value, dict):
        raise RunError(f"{where}: expected a table, got {json.dumps(value)[:80]}")
    if "*" in schema:
        for key, item in value.items():
            validate(item, schema["*"], f"{where}.{key}")
        return
    for key, item_schema in schema.items():
        if key not in value:
            raise RunError(f"{where}: key '{key}' is missing")
        validate(value[key], item_schema, f"{where}.{key}")
    extra = sorted(set(value) - set(schema))
    if extra:
        raise RunError(f"{where}: unknown key '{extra[0]}' (expected {', '.join(schema)})")


def read_card(path: Path) -> dict[str, Any]:
    """A result card, validated: a one-line error naming the file and key for anything else."""
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not a readable result card ({exc})") from None
    if not isinstance(card, dict) or card.get("advbayes_card") != CARD_VERSION:
        found = card.get("advbayes_card") if isinstance(card, dict) else None
        raise RunError(f"{path}: expected a result card of schema {CARD_VERSION} (advbayes_card), got {found!r}")
    validate(card, SCHEMA, str(path))
    for check in card["checks"]:
        if check["status"] not in ("passed", "failed", "n/a"):
            status = check["status"]
            raise RunError(f"{path}: check {check['name']}: status must be passed, failed or n/a, not {status!r}")
    problem = inconsistency(card)
    if problem is not None:
        raise RunError(f"{path}: {problem}")
    return card


def inconsistency(card: Mapping[str, Any]) -> str | None:
    """What a (schema-valid) card states against itself: its claims (claims_problem), each accuracy against its
    seeds' counts, each threat model against its protocol; None when nothing."""
    problem = claims_problem(card)
    if problem is not None:
        return problem
    clean = stat_problem(card["clean"], len(card["runs"]["seeds"]))
    return threats_problem(card) if clean is None else f"clean{clean}"


def claims_problem(card: Mapping[str, Any]) -> str | None:
    """'passed' against its checks, 'conforms' against its deviations, its seeds and test examples; None when
    consistent."""
    if card["passed"] != all(c["status"] != "failed" for c in card["checks"]):
        return f"'passed' is {card['passed']} but its checks say otherwise"
    if card["conforms"] != (not card["deviations"]):
        return f"'conforms' is {card['conforms']} but its deviations are {card['deviations']!r}"
    seeds, examples, protocol = len(card["runs"]["seeds"]), card["clean"]["n"], card["protocol"]
    if not seeds:
        return "runs.seeds: expected the runs of at least one seed, got none"
    if card["conforms"] and (seeds < len(protocol["seeds"]) or examples < protocol["test_examples"]):
        return (
            f"'conforms' is true but it has {seeds} seed(s) of {examples} test examples; its protocol asks for "
            f"{len(protocol['seeds'])} of {protocol['test_examples']}"
        )
    return None


def threats_problem(card: Mapping[str, Any]) -> str | None:
    """Each threat model of the card's protocol, with its norm, headline and radii, and each radius's accuracy
    consistent: a hand-edited section is refused before it is ranked or drawn."""
    seeds, sections = len(card["runs"]["seeds"]), card["threat_models"]
    expected = {t["name"]: t for t in card["protocol"]["threat_models"]}
    if sorted(sections) != sorted(expected):
        return f"threat_models: expected {sorted(expected)} (its protocol's), got {sorted(sections)}"
    for name, threat in expected.items():
        section, where = sections[name], f"threat_models.{name}"
        wanted = (threat["norm"], f"{threat['headline']:g}", sorted(f"{r:g}" for r in threat["radii"]))
        given = (section["norm"], section["headline"], sorted(section["radii"]))
        if given != wanted:
            return f"{where}: expected norm, headline and radii {wanted} (its protocol's), got {given}"
        for radius, stat in section["radii"].items():
            problem = stat_problem(stat, seeds) or worst_case_problem(stat)
            if problem is not None:
                return f"{where}.radii.{radius}{problem}"
    return None


TOLERANCE = 1e-9  # float round-off of a mean over a few seeds


def worst_case_problem(stat: Mapping[str, Any]) -> str | None:
    """Each attack's accuracy in [0, 1] and none below the worst case over them (an example counts only when it
    survived every attack)."""
    attacks = stat["by_attack"]
    if any(not 0 <= v <= 1 for v in attacks.values()):
        return f".by_attack: expected accuracies in [0, 1], got {attacks}"
    weakest = min(attacks, key=attacks.get, default=None)
    if weakest is not None and stat["value"] > attacks[weakest] + TOLERANCE:
        return f": the worst case over its attacks ({stat['value']:.6g}) is above {weakest}'s ({attacks[weakest]:.6g})"
    return None


def stat_problem(stat: Mapping[str, Any], seeds: int) -> str | None:
    """An accuracy against itself: a count of n examples per seed, their mean and sd, and a pooled interval in
    [0, 1] around the mean; what is not, after the key's name (".n: ..."), or None."""
    values, n, interval = stat["seed_values"], stat["n"], stat["interval"]
    if n < 1:
        return f".n: expected at least 1 test example, got {n}"
    if len(values) != seeds:
        return f".seed_values: expected one per seed ({seeds}), got {len(values)}"
    if any(not 0 <= v <= 1 or abs(v * n - round(v * n)) > 1e-6 for v in values):
        return f".seed_values: expected accuracies of {n} examples (a count / {n}), got {values}"
    mean, sd = mean_sd(values)
    if abs(stat["value"] - mean) > TOLERANCE or abs(stat["seed_sd"] - sd) > TOLERANCE:
        expected, given = f"{mean:.6f} and {sd:.6f}", f"{stat['value']:.6f} and {stat['seed_sd']:.6f}"
        return f": expected value and seed_sd {expected} (its seed_values' mean and sd), got {given}"
    low, high = interval if len(interval) == 2 else (math.nan, math.nan)
    if not (-TOLERANCE <= low <= mean + TOLERANCE and mean - TOLERANCE <= high <= 1 + TOLERANCE):  # nan: False
        return f".interval: expected [low, high] in [0, 1] around its value {mean:.6g}, got {interval}"
    return None


def write_card(card: Mapping[str, Any], path: Path) -> Path:
    """Write a card (validated first: nothing invalid is ever written) as indented JSON with sorted keys."""
    validate(card, SCHEMA, str(path))
    problem = inconsistency(card)
    if problem is not None:
        raise RunError(f"{path}: {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return path


def read_cards(folder: Path) -> list[dict[str, Any]]:
    """Every *.json card under `folder`, validated, in file-name order."""
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder of result cards")
    return [read_card(path) for path in sorted(folder.rglob("*.json"))]


def card_name(card: Mapping[str, Any]) -> str:
    """A card's name: data set and defense entry (its file is NAME.json, its runs' records folder NAME/)."""
    return f"{card['protocol']['dataset']}--{card['defense']['entry']}"


def headline(card: Mapping[str, Any], threat: str) -> float:
    """The card's robust accuracy at its threat model's headline radius (-1 when it has no such threat model)."""
    section = card["threat_models"].get(threat)
    return -1.0 if section is None else float(section["radii"][section["headline"]]["value"])


def ranked(cards: Sequence[Mapping[str, Any]], threat: str) -> list[Mapping[str, Any]]:
    """Cards by robust accuracy at the headline radius, highest first; every card with a failed check and every
    card off the protocol after every passing, conforming one."""
    return sorted(
        cards, key=lambda c: (not c["passed"], not c["conforms"], -headline(c, threat), c["defense"]["entry"])
    )
