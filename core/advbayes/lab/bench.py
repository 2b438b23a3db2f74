"""advbayes bench: a defense trained and attacked under the leaderboard protocol, its result card written and tracked.

Per seed: the defense is trained (clean accuracy, its posterior's verdict), then its deterministic twin (the transfer
attack's source), then each threat model's attacks evaluate the trained defense as a resumed run (the trained
model is read from the checkpoint, not trained again). Every run is tracked; the card names them. Given a tracked
run's id instead of a defense, that run's model is attacked as it is, beside a twin trained on its settings.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from advbayes.errors import RunError
from advbayes.lab.bench_steps import ID_TAG, KEY_TAG, STEP_TAG, BenchSteps, bench_key
from advbayes.lab.cards import CARD_VERSION, card_name, check_outcomes, deviations, summary, threat_section, write_card
from advbayes.lab.protocol import TWIN, Protocol, param_differences, protocol_for, protocol_params, registry_changes
from advbayes.results import RunResult, unpack_outcomes
from advbayes.tracking.store import client_for, shown_uri

if TYPE_CHECKING:
    from advbayes.registry import Registry

RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id: bench that tracked run instead of training an entry
BENCH_TAG = "advbayes.bench"  # the bench a run belongs to: defense entry, data set and protocol version


def bench(
    entry: str,
    *,
    dataset: str = "mnist-5k",
    seeds: Sequence[int] | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    device: str = "auto",
    tracking_uri: str | None = None,
    registry: Sequence[str | Path] = (),
    progress: bool = False,
    out: Path | None = None,
    say: Callable[[str], None] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Bench the defense entry (or tracked run id) `entry` under the protocol of `dataset`; the card (also written
    under `out`, and logged to every run of the defense as bench_card.json). With `resume`, the latest earlier bench
    of the same entry, data set, protocol and settings in the store is continued: its finished runs are read back,
    its interrupted ones resumed from their checkpoints."""
    from advbayes.engine.building import tracked_model
    from advbayes.engine.lifecycle import prepare_run, run
    from advbayes.plugins import get_plugin_manager
    from advbayes.tracking.runs import provenance

    protocol = protocol_for(dataset)
    seeds = list(protocol.seeds if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise RunError(f"--seeds: expected distinct seeds, got {seeds}")
    tracked = RUN_ID.fullmatch(entry) is not None
    if tracked:  # a tracked run: its own experiment, defense and seed; the twin trained on the same settings
        prepared = prepare_run(resume=entry, registry=registry, device=device, tracking_uri=tracking_uri)
        name, spec = prepared.name, prepared.spec
        if spec["dataset"].get("name") != protocol.dataset:
            raise RunError(f"run {entry}: trained on data set {spec['dataset'].get('name')!r}, not {dataset!r}")
        if overrides:
            raise RunError(f"run {entry}: --set changes training, and a tracked run is already trained")
        seeds = [int(spec["seed"])]
        settings: list[tuple[str, Any]] = []
    else:
        check_entry(entry, registry)
        name, settings = protocol.experiment, [("defense", entry), *overrides]
        prepared = prepare_run(name, registry=registry, device=device, track=False, overrides=settings)
        spec = prepared.spec
    data = prepared.registry.build("datasets", spec["dataset"])
    shape, value_range = tuple(data.input_shape), tuple(data.value_range)
    label = spec["defense"]["name"] if tracked else entry
    redefined = registry_changes(protocol, prepared.registry)  # --registry files may redefine what it attacks with
    trained_off = []
    if tracked:  # trained before this bench: by the protocol's settings? by this code (a card names one commit)?
        source_tags = client_for(tracking_uri, write=False).get_run(entry).data.tags
        trained_off = [
            *_trained_off_protocol(entry, protocol, spec, prepared.registry),
            *trained_by_other_code(entry, source_tags, provenance()),
        ]
    for line in [*redefined, *trained_off]:
        say(f"bench {label}: off the protocol: {line}")
    started = time.perf_counter()
    key = bench_key(entry, protocol, overrides, redefined)
    steps = BenchSteps(name, key, label, tracking_uri, say)
    if resume:
        steps.continue_earlier()  # refused here, before any work, when there is nothing to continue
    else:
        steps.start_new()
    tag = {BENCH_TAG: f"{label} on {dataset}, protocol {protocol.version}", KEY_TAG: key, ID_TAG: steps.bench_id}
    common: dict[str, Any] = {"registry": registry, "device": device, "tracking_uri": tracking_uri}
    common.update(progress=progress)

    def tracked_step(seed: int, role: str, start: Callable[[dict[str, str]], Any]) -> RunResult:
        return steps.run(seed, role, lambda: start({**tag, STEP_TAG: f"{seed}/{role}"}), common)

    trained: list[RunResult] = []
    evaluated: dict[str, list[RunResult]] = {t.name: [] for t in protocol.threat_models}
    run_ids: dict[str, dict[str, str]] = {}
    clean = [("attacks", ["none"]), ("eps", [0.0])]  # the twin of a tracked run is evaluated clean only
    for seed in seeds:
        ids = run_ids[str(seed)] = {}
        if tracked:  # trained already: its model is probed, and the first threat model's run gives the clean row
            ids["source"] = entry
            model = tracked_model(get_plugin_manager(), entry, tracking_uri, torch.device("cpu"))
        else:  # before the twin: a defense that fails in training fails before the twin's cost, not after it
            say(f"bench {label}: seed {seed}: training")
            settings_seed = [*settings, ("seed", seed)]
            result = tracked_step(seed, "train", lambda t: run(name, overrides=settings_seed, tags=t, **common))
            trained.append(result)
            ids["train"] = _run_id(result)
            model = result.model
        twin_id = None
        if spec["defense"].get("use") != TWIN:
            say(f"bench {label}: seed {seed}: training the deterministic twin ({TWIN})")
            twin_settings = [*settings, ("defense", TWIN), ("seed", seed)]
            if tracked:  # the tracked run's own settings, a standard defense, evaluated clean only
                twin_overrides = [*twin_settings, *clean]
                twin = tracked_step(
                    seed, "twin", lambda t: run(name, spec=spec, overrides=twin_overrides, tags=t, **common)
                )
            else:
                twin = tracked_step(seed, "twin", lambda t: run(name, overrides=twin_settings, tags=t, **common))
            twin_id = ids["twin"] = _run_id(twin)
        stochastic = _is_stochastic(model, shape, value_range)
        source = entry if tracked else ids["train"]
        for threat in protocol.threat_models:
            say(f"bench {label}: seed {seed}: {threat.name} attacks at eps {', '.join(f'{e:g}' for e in threat.radii)}")
            attacks = ["none", *protocol.attacks(threat, stochastic, twin_id)]
            changed = [("attacks", attacks), ("eps", list(threat.radii))]
            attacked = tracked_step(
                seed, threat.name, lambda t: run(resume=source, overrides=changed, tags=t, **common)
            )
            evaluated[threat.name].append(attacked)
            ids[threat.name] = _run_id(attacked)
        if tracked:
            trained.append(evaluated[protocol.threat_models[0].name][-1])
    card = card_of(protocol, label, spec, seeds, trained, evaluated, run_ids, overrides, stochastic)
    if name != protocol.experiment:  # trained elsewhere: data, network or training may differ from the protocol's
        card["deviations"].append(f"trained by experiment {name}, not the protocol's {protocol.experiment}")
    card["deviations"] += [*registry_changes(protocol, prepared.registry, stochastic), *trained_off]  # those it ran
    card["conforms"] = not card["deviations"]
    card["seconds"] = steps.seconds + time.perf_counter() - started  # with earlier processes' time on it
    card["device"] = trained[0].device
    card["runs"]["store"] = shown_uri(steps.store)  # never a password in a card
    _log_card(card, trained, evaluated, steps.store)
    if out is not None:
        write_card(card, out / card_file(card))
    return card


def _trained_off_protocol(run_id: str, protocol: Protocol, spec: dict[str, Any], registry: Registry) -> list[str]:
    """Where a tracked run's data set and network differ from the protocol's (its test examples are counted apart)."""
    from advbayes.registry import load_registry
    from advbayes.tracking.runs import flatten

    expected = protocol_params(protocol, load_registry(pm=registry.pm, include_cwd=False))
    params = {**flatten(spec["dataset"], "dataset."), **flatten(spec["model"], "model.")}
    found = param_differences(params, expected, ("dataset.", "model."))
    return [f"run {run_id} was trained with {line}" for line in found if not line.startswith("dataset.n_test ")]


def trained_by_other_code(run_id: str, tags: Mapping[str, str], mine: Mapping[str, str]) -> list[str]:
    """A deviation when a tracked run was trained (or resumed) by other code than the bench's: every number of a
    card comes from the one commit it names."""
    from advbayes.tracking.runs import RESUMED_CODE_TAG, code_differences, code_text

    found = []
    if code_differences(tags, mine):
        found.append(f"run {run_id} was trained by {code_text(tags)}, this bench runs {code_text(mine)}")
    if tags.get(RESUMED_CODE_TAG):
        found.append(f"run {run_id} was resumed with {tags[RESUMED_CODE_TAG]}")
    return found


def check_entry(entry: str, registry: Sequence[str | Path]) -> Any:
    """A one-line error for a name that is neither a defense entry nor a defense component; the loaded registry."""
    from advbayes.registry import load_registry

    loaded = load_registry(registry)
    known = sorted({*loaded.names("defenses"), *loaded.pm.components.names("defenses")})  # entries and components
    if entry not in known:
        close = difflib.get_close_matches(entry, known, n=2)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise RunError(
            f"ENTRY {entry!r}: no such defense entry or component; {hint}(advbayes list defenses shows them)"
        )
    return loaded


def _run_id(result: Any) -> str:
    if not isinstance(result, RunResult) or result.run_id is None:
        raise RunError("bench needs tracked runs (its evaluations resume the trained run): do not pass --no-track")
    return result.run_id


def _is_stochastic(net: torch.nn.Module, input_shape: tuple[int, ...], value_range: tuple[float, float]) -> bool:
    """Whether the trained network draws at random (two identical calls differ), probed on inputs of its data."""
    from advbayes.stochastic import as_sampled, is_stochastic

    model = as_sampled(net).eval()
    parameter = next(model.parameters(), None)
    where = parameter.device if parameter is not None else torch.device("cpu")
    low, high = value_range
    probe = low + (high - low) * torch.rand((8, *input_shape), generator=torch.Generator().manual_seed(0))
    return is_stochastic(model, probe.to(where))


def card_of(
    protocol: Protocol,
    entry: str,
    spec: dict[str, Any],
    seeds: Sequence[int],
    trained: Sequence[RunResult],
    evaluated: dict[str, list[RunResult]],
    run_ids: dict[str, dict[str, str]],
    overrides: Sequence[tuple[str, Any]],
    stochastic: bool,
) -> dict[str, Any]:
    """The card of a bench from its runs' results."""
    from advbayes.tracking.runs import provenance

    clean = []
    for result in trained:
        (record,) = [r for r in result.records if r.attack_label == "none"][:1]
        clean.append(unpack_outcomes(record.per_example["accuracy"], record.examples))
    findings = [f for results in evaluated.values() for result in results for f in result.findings]
    converged = [r.model_metrics.get("posterior/converged") for r in trained]
    checks = check_outcomes(findings, converged)
    examples = len(clean[0])
    settings = [f"{key}={json.dumps(value)}" for key, value in overrides]  # as --set takes them (TOML values)
    return {
        "advbayes_card": CARD_VERSION,
        "protocol": protocol.describe(),
        "defense": {"entry": entry, "params": dict(spec["defense"]), "settings": settings},
        "model": str(spec["model"].get("name", spec["model"].get("use", ""))),
        "stochastic": stochastic,
        "deviations": (found := deviations(protocol, seeds, examples, settings)),
        "conforms": not found,
        "passed": all(c["status"] != "failed" for c in checks),
        "checks": checks,
        "clean": summary(clean),
        "threat_models": {
            t.name: threat_section(t, [r.records for r in evaluated[t.name]]) for t in protocol.threat_models
        },
        "runs": {"store": "", "experiment_id": "", "seeds": run_ids},
        "provenance": {**provenance(), "created": datetime.date.today().isoformat()},
        "device": "",
        "seconds": 0.0,
    }


def card_file(card: dict[str, Any]) -> str:
    """The card's file name: data set and defense entry."""
    return f"{card_name(card)}.json"


def _log_card(
    card: dict[str, Any], trained: Sequence[RunResult], evaluated: dict[str, list[RunResult]], uri: str | None
) -> None:
    """Log the card to each of the defense's runs (bench_card.json), so the store holds it beside them, and name the
    store's experiment in it (the page links to the runs)."""
    client = client_for(trained[0].store or uri, write=True)
    card["runs"]["experiment_id"] = client.get_run(trained[0].run_id).info.experiment_id
    text = json.dumps(card, indent=1, sort_keys=True)
    for result in [*trained, *(r for results in evaluated.values() for r in results)]:
        if result.run_id is not None:
            client.log_text(result.run_id, text, "bench_card.json")


def cards_in_store(uri: str | None) -> list[dict[str, Any]]:
    """The newest card of each defense and data set logged in the store (bench_card.json of the bench's runs)."""
    import tempfile

    from advbayes.lab.cards import read_card

    client = client_for(uri, write=False)
    newest: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for experiment in client.search_experiments():
            for found in client.search_runs([experiment.experiment_id], f"tags.`{BENCH_TAG}` != ''"):
                if "bench_card.json" not in {a.path for a in client.list_artifacts(found.info.run_id)}:
                    continue
                path = Path(client.download_artifacts(found.info.run_id, "bench_card.json", scratch))
                card = read_card(path)
                key = (card["protocol"]["dataset"], card["defense"]["entry"])
                if key not in newest or found.info.start_time > newest[key][0]:
                    newest[key] = (found.info.start_time, card)
    return [card for _, card in sorted(newest.values(), key=lambda item: item[1]["defense"]["entry"])]
