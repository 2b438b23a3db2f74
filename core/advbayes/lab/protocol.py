"""The leaderboard protocol, written once: per data set its threat models, the attacks of each, the verdict, n, seeds
and the checks a result card must pass (docs/leaderboard.md explains every choice).

A defense is trained on the data set's bench experiment (registry.toml: `bench-<data set>`), once per seed. Then,
per threat model, it is attacked by:
- the final attack: `autoattack` for a deterministic network, `autoattack-rand` (EOT over S_A draws, an example
  robust only when all R predictions are right) for a stochastic one;
- EOT-PGD with 10 and with 40 steps (the best of the shipped iterative attacks, and the steps-monotonicity check);
- transfer: PGD-40 crafted on the defense's deterministic twin (`standard`, same data, model and seed), the
  black-box check.
An example counts as robust at a radius only when it survives every one of these attacks (the worst case per
example); the card reports that, per seed and over the seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from advbayes.errors import RunError

if TYPE_CHECKING:
    from advbayes.registry import Registry

PROTOCOL_VERSION = 1
TWIN = "standard"  # the deterministic twin whose PGD examples transfer to the defense
CHECKS = ("randomness", "gradient-masking", "monotonic-in-eps", "monotonic-in-steps", "black-box-below-white-box")
CONVERGED = "converged-posterior"  # a check of every defense with Gaussian weights


@attrs.frozen(kw_only=True)
class ThreatModel:
    """A norm, the radii it is evaluated at, and the radius a leaderboard ranks by."""

    name: str  # Linf or L2: in attack names, card keys and the page
    norm: str  # the attacks' norm: inf or 2
    radii: tuple[float, ...]
    headline: float

    def __attrs_post_init__(self) -> None:
        if self.headline not in self.radii:
            raise ValueError(f"threat model {self.name}: headline radius {self.headline} is not one of {self.radii}")


@attrs.frozen(kw_only=True)
class Protocol:
    """The protocol of one data set: its bench experiment, threat models, seeds and attack draws."""

    dataset: str
    experiment: str  # the registry experiment that fixes data, model and training
    test_examples: int  # the full test split: a card with fewer is not ranked as conforming
    threat_models: tuple[ThreatModel, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    attack_samples: int = 20  # S_A of the EOT attacks on a stochastic network
    version: int = PROTOCOL_VERSION

    def threat_model(self, name: str) -> ThreatModel:
        """The threat model called `name` (Linf, L2)."""
        for threat in self.threat_models:
            if threat.name == name:
                return threat
        known = ", ".join(t.name for t in self.threat_models)
        raise RunError(f"protocol {self.dataset}: no threat model {name!r} (it has {known})")

    def attacks(self, threat: ThreatModel, stochastic: bool, twin_run: str | None) -> list[dict[str, Any]]:
        """The attack entries (inline tables) of one threat model; transfer needs the twin's tracked run."""
        suffix = threat.name.lower()
        draws = self.attack_samples if stochastic else 1
        eot = [
            {"extends": "pgd-20", "name": f"eot-pgd-{steps}-{suffix}", "steps": steps, "norm": threat.norm}
            | ({"attack_samples": draws} if stochastic else {})
            for steps in (10, 40)
        ]
        attacks: list[dict[str, Any]] = [final_attack(threat, stochastic), *eot]
        if twin_run is not None:
            crafted = {"extends": "pgd-40", "name": f"pgd-40-{suffix}", "norm": threat.norm}
            attacks.append(
                {"use": "transfer", "name": f"transfer-pgd-40-{suffix}", "source": f"run:{twin_run}", "attack": crafted}
            )
        return attacks

    def describe(self) -> dict[str, Any]:
        """The protocol as a card records it."""
        return {
            "version": self.version,
            "dataset": self.dataset,
            "experiment": self.experiment,
            "test_examples": self.test_examples,
            "seeds": list(self.seeds),
            "attack_samples": self.attack_samples,
            "threat_models": [attrs.asdict(t, value_serializer=_listed) for t in self.threat_models],
        }


def _listed(instance: Any, attribute: Any, value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def final_attack(threat: ThreatModel, stochastic: bool) -> dict[str, Any]:
    """autoattack (deterministic) or autoattack-rand (stochastic) in the threat model's norm (a worst-case entry
    gives its sub-attacks its own eps, norm and S_A)."""
    name = "autoattack-rand" if stochastic else "autoattack"
    return {"extends": name, "name": f"{name}-{threat.name.lower()}", "norm": threat.norm}


PROTOCOLS = {
    # MNIST digits (mnist-5k: 4,000 train, 1,000 test), mnist-cnn. L_inf radii around the 0.1 Bayesian defenses are
    # trained at (0.3, RobustBench's MNIST radius, leaves every shipped defense near 0); L2 about 10x, as usual.
    "mnist-5k": Protocol(
        dataset="mnist-5k",
        experiment="bench-mnist-5k",
        test_examples=1000,
        threat_models=(
            ThreatModel(name="Linf", norm="inf", radii=(0.05, 0.1, 0.2), headline=0.1),
            ThreatModel(name="L2", norm="2", radii=(0.5, 1.0, 2.0), headline=1.0),
        ),
    ),
    # scikit-learn's 8x8 digits (1,437 train, 360 test, offline): minutes per card, for trying the protocol out
    # and for tests (two moons has 2 classes, and DLR, half of autoattack-rand, needs 3)
    "digits": Protocol(
        dataset="digits",
        experiment="bench-digits",
        test_examples=360,
        threat_models=(
            ThreatModel(name="Linf", norm="inf", radii=(0.05, 0.1), headline=0.05),
            ThreatModel(name="L2", norm="2", radii=(0.25, 0.5), headline=0.25),
        ),
    ),
}


def protocol_entries(
    protocol: Protocol, registry: Registry, stochastic: bool | None = None
) -> dict[str, dict[str, Any]]:
    """The entries the protocol evaluates with, resolved in `registry`: its bench experiment, the twin and every
    attack entry its attack lists extend, for a stochastic or a deterministic network (None: both)."""
    where = ("leaderboard protocol", protocol.dataset, "")
    entries = {f"experiment '{protocol.experiment}'": registry.resolve_experiment(protocol.experiment)}
    entries[f"defense '{TWIN}'"] = registry.resolve("defenses", TWIN, where=where)
    for threat in protocol.threat_models:
        for kind in (False, True) if stochastic is None else (stochastic,):
            for attack in protocol.attacks(threat, kind, twin_run="twin"):
                name = attack.get("attack", attack)["extends"]  # transfer: the attack crafted on the twin
                entries[f"attack '{name}'"] = registry.resolve("attacks", name, where=where)
    return entries


def registry_changes(
    protocol: Protocol, registry: Registry, stochastic: bool | None = None
) -> dict[str, dict[str, Any]]:
    """The entries the protocol evaluates a stochastic or a deterministic network with (None: either) that the
    registry's own files (--registry, ./registry.toml) define otherwise than the shipped registry and installed
    plugins do, as those files make them, keyed by a line that says so: a card made with them does not follow the
    protocol."""
    from advbayes.registry import load_registry

    shipped = load_registry(pm=registry.pm, include_cwd=False)
    extra = [f for f in registry.files if f not in shipped.files]
    if not extra:
        return {}
    ours, theirs = protocol_entries(protocol, registry, stochastic), protocol_entries(protocol, shipped, stochastic)
    files = ", ".join(extra)
    return {f"{files} changes the protocol's {name}": ours[name] for name in ours if ours[name] != theirs[name]}


def protocol_params(
    protocol: Protocol,
    registry: Registry,
    threat: ThreatModel | None = None,
    stochastic: bool = False,
    twin_run: str = "",
) -> dict[str, str]:
    """The params of a run that follows the protocol, flattened as a run records them: its bench experiment's data
    set and network and, given a threat model, each of its attacks with their sub-attacks (without their eps: a run's
    attacks take its eps list)."""
    from advbayes.tracking.runs import flatten

    experiment = registry.resolve_experiment(protocol.experiment)
    params = {**flatten(experiment["dataset"], "dataset."), **flatten(experiment["model"], "model.")}
    where = ("leaderboard protocol", protocol.dataset, "")
    for attack in [] if threat is None else protocol.attacks(threat, stochastic, twin_run or None):
        resolved = registry.resolve("attacks", attack, where=where)
        params.update(flatten(resolved, f"attacks.{resolved['name']}."))
    return {key: value for key, value in params.items() if not key.endswith(".eps")}


def param_differences(params: Mapping[str, str], expected: Mapping[str, str], prefixes: tuple[str, ...]) -> list[str]:
    """Each key under `prefixes` where a run's params differ from the protocol's, one line each (a key only one
    side has is a difference; the clean row's attack `none` is every run's)."""
    keys = {k for k in [*params, *expected] if k.startswith(prefixes) and not k.startswith("attacks.none.")}
    lines = []
    for key in sorted(keys):
        if key not in expected:
            lines.append(f"{key} = {params[key]!r}, which the protocol does not set")
        elif params.get(key) != expected[key]:
            has = f"{key} = {params[key]!r}" if key in params else f"no {key}"
            lines.append(f"{has}, the protocol's is {expected[key]!r}")
    return lines


def protocol_for(dataset: str) -> Protocol:
    """The protocol of a data set, or a one-line error naming those there are."""
    if dataset not in PROTOCOLS:
        raise RunError(f"--dataset {dataset!r}: no leaderboard protocol for it (there are: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[dataset]
