"""What a bench will cost, before it starts: a few training epochs of the defense and one of its twin, and each
protocol attack timed on a few test examples, projected to the protocol's test split, radii, epoch cap and seeds
(`advbayes bench ENTRY --estimate`; benchmarks/bench_cost.py prints the same).

An attack skips an example the network already gets wrong and stops on one it has broken, so its time follows how
robust the network is: autoattack on a converged mnist-cnn took 11.3 s per digit at eps 0.05 and 0.22 s at 0.2
(2026-12-06, one thread beside a bench), and a network trained for a few epochs to be timed is less robust than the
one the bench trains. So each attack is timed twice: at the largest radius (the least any radius costs) and at a
radius so small that nothing breaks, which runs every sub-attack's full budget on every example the network gets
right: the most any radius can cost. That budget is fixed by the attack and the architecture, not by how robust the
weights are, so it bounds the trained network's time too. The estimate states the clean accuracy of the network it
timed and warns where it is low."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from advbayes.errors import EvaluationWarning, RunError
from advbayes.lab.protocol import TWIN, protocol_for, registry_changes

LOW_ACCURACY = 0.5  # below it the timed network leaves most examples unattacked: the low end is far too low
MAX_TRAIN_EPOCHS = 1000


FULL_BUDGET_SCALE = 1e-4  # x the smallest radius: a radius at which no attack breaks anything, so each runs in full


@attrs.frozen
class AttackCost:
    """One protocol attack of one threat model: measured seconds per test example with its full budget (nothing
    broken, every example attacked) and at the largest radius, and its projected seconds per seed (the full test
    split at every radius) as a range: every radius costs at least the largest one's time and at most the full
    budget's."""

    threat: str
    name: str
    full_budget: float  # seconds per correctly classified example when nothing breaks: the most any radius costs
    at_largest: float  # seconds per example at the threat model's largest radius: the least any radius costs
    radii: int
    test_examples: int

    @property
    def seconds_per_seed(self) -> tuple[float, float]:
        """The least and the most seconds of one seed: every radius between the largest one's time and the full
        budget's (the larger of the two where timing noise put the largest radius above the budget)."""
        per_radius = self.test_examples * self.radii
        return per_radius * self.at_largest, per_radius * max(self.full_budget, self.at_largest)


@attrs.frozen
class CostEstimate:
    """A bench's projected time: training epochs x measured epoch seconds plus every attack, per seed and in all."""

    defense: str
    dataset: str
    protocol: int
    device: str
    stochastic: bool
    examples: int  # test examples each attack was timed on
    trained_epochs: int  # epochs the timed network was trained
    clean_accuracy: float  # of the timed network on the timed examples
    epochs: int  # the epochs projected: the bench experiment's cap (an upper bound when it trains until converged)
    defense_epoch: float
    twin_epoch: float
    attacks: tuple[AttackCost, ...]
    seeds: int
    off_protocol: tuple[str, ...] = ()  # what registry files changed of the protocol's entries (timed as changed)

    @property
    def training_seconds(self) -> float:
        """Seconds of one seed's training: the defense's and its twin's epochs."""
        return (self.defense_epoch + self.twin_epoch) * self.epochs

    @property
    def attack_seconds(self) -> tuple[float, float]:
        """The least and the most seconds of one seed's attacks, every threat model and radius."""
        return sum(a.seconds_per_seed[0] for a in self.attacks), sum(a.seconds_per_seed[1] for a in self.attacks)

    @property
    def total_seconds(self) -> tuple[float, float]:
        """The least and the most seconds of the whole card: every seed's training and attacks."""
        low, high = self.attack_seconds
        return self.seeds * (self.training_seconds + low), self.seeds * (self.training_seconds + high)

    def lines(self) -> list[str]:
        """The estimate as a person reads it: the measured times, then the projection."""
        kind = "stochastic" if self.stochastic else "deterministic"
        lines = [
            f"{self.defense} on {self.dataset} (protocol {self.protocol}), device {self.device}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {kind}; attacks timed on {self.examples} test "
            "examples",
            f"timed network: {self.trained_epochs} epoch(s) of training, clean accuracy {self.clean_accuracy:.3f} on "
            "the timed examples",
            f"training: {self.defense_epoch:.2f} s/epoch (twin {self.twin_epoch:.2f} s/epoch) x {self.epochs} epochs "
            "(the cap: a run that converges stops earlier)",
        ]
        for a in self.attacks:
            low, high = a.seconds_per_seed
            lines.append(
                f"  {a.threat:<5} {a.name:<24} {a.at_largest:9.4f} s/example at the largest radius, "
                f"{a.full_budget:.4f} with the full budget -> {span(low / 60, high / 60, '.1f')} min per seed"
            )
        lines += [f"off the protocol (a card would be marked): {line}" for line in self.off_protocol]
        if self.clean_accuracy < LOW_ACCURACY:
            lines.append(
                f"warning: the timed network gets {1 - self.clean_accuracy:.0%} of the timed examples wrong, which the "
                "attacks skip: the low end is low, as a trained one is attacked longer (time a better-trained one with "
                "--train-epochs N)"
            )
        (low, high), (total_low, total_high) = self.attack_seconds, self.total_seconds
        per_seed = span((self.training_seconds + low) / 60, (self.training_seconds + high) / 60, ".1f")
        lines.append(
            f"projected card: {per_seed} min per seed ({self.training_seconds / 60:.1f} training, "
            f"{span(low / 60, high / 60, '.1f')} attacks), {span(total_low / 3600, total_high / 3600, '.2f')} h for "
            f"{self.seeds} seeds"
        )
        lines.append(
            "(at least: every radius as cheap as the largest; at most: every test example resisting every attack to "
            "its full budget, the training at its cap)"
        )
        return lines


def span(low: float, high: float, spec: str) -> str:
    """'low-high' in `spec`, or one number where both print the same."""
    first, second = format(low, spec), format(high, spec)
    return first if first == second else f"{first}-{second}"


def estimate_bench(
    entry: str,
    *,
    dataset: str = "mnist-5k",
    seeds: Sequence[int] | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    device: str = "auto",
    registry: Sequence[str | Path] = (),
    examples: int = 128,
    epochs: int | None = None,
    train_epochs: int = 1,
    say: Callable[[str], None] = print,
) -> CostEstimate:
    """Measure and project what `advbayes bench entry` will cost on `device` (nothing is tracked or written)."""
    from advbayes.attacks import entry_of
    from advbayes.batches import first_examples
    from advbayes.engine.lifecycle import run
    from advbayes.lab.bench import check_entry
    from advbayes.results import RunResult
    from advbayes.stochastic import as_sampled, is_stochastic, predict
    from advbayes.stochastic.strategy import call_seconds

    protocol = protocol_for(dataset)
    if not 1 <= examples <= protocol.test_examples:
        raise RunError(f"--examples: expected 1 to {protocol.test_examples} (the test split), got {examples}")
    if not 1 <= train_epochs <= MAX_TRAIN_EPOCHS:
        raise RunError(f"--train-epochs: expected 1 to {MAX_TRAIN_EPOCHS}, got {train_epochs}")
    loaded = check_entry(entry, registry)
    registry_changes(protocol, loaded)  # resolves every entry the protocol uses: a broken one fails before training

    def trained_for(defense: str, epochs: int) -> RunResult:
        say(f"estimate {entry}: {epochs} training epoch(s) of {defense}")
        settings = [*overrides, ("defense", defense), ("epochs", epochs), ("until_converged", False)]
        with warnings.catch_warnings():  # one epoch is a timing: its posterior's "not converged" is no finding
            warnings.simplefilter("ignore", EvaluationWarning)
            result = run(protocol.experiment, overrides=settings, registry=registry, device=device, track=False)
        assert isinstance(result, RunResult)
        return result

    trained = trained_for(entry, train_epochs)
    spec, model = trained.spec, as_sampled(trained.model).eval()
    twin = None if spec["defense"].get("use") == TWIN else trained_for(TWIN, 1)
    test = loaded.build("datasets", spec["dataset"]).data("test")
    x, y = first_examples(test, examples, trained.device)
    defense = loaded.build("defenses", spec["defense"])
    prediction = {"inference_samples": defense.inference_samples, "prediction_average": defense.prediction_average}
    stochastic = is_stochastic(model, x)

    def correct(victim: torch.nn.Module) -> int:
        """How many timed examples the victim gets right: the ones an attack spends its budget on."""
        with torch.no_grad():
            probs, _ = predict(victim, x, defense.inference_samples, defense.prediction_average)
        return int((probs.argmax(-1) == y).sum())

    right = correct(model)
    if right == 0:
        raise RunError(
            f"estimate {entry}: the timed network gets all {examples} timed examples wrong, so no attack would spend "
            "any time on them; time a better-trained one (--train-epochs N) or on more examples (--examples N)"
        )
    twin_model = None if twin is None else as_sampled(twin.model).eval()
    twin_right = None if twin_model is None else max(correct(twin_model), 1)
    costs = []
    for threat in protocol.threat_models:
        for attack in protocol.attacks(threat, stochastic, "twin" if twin is not None else None):
            full_eps, largest = min(threat.radii) * FULL_BUDGET_SCALE, max(threat.radii)
            transfer = attack.get("use") == "transfer"  # crafted on the twin (PGD-40); the defense only predicts
            victim, attacked = (twin_model, twin_right) if transfer else (model, right)
            assert victim is not None and attacked is not None
            own = {k: v for k, v in attack.items() if k not in ("extends", "name")}
            seconds = []
            for eps, label in ((full_eps, "with the full budget"), (largest, "at the largest radius")):
                say(f"estimate {entry}: timing {attack['name']} {label} (eps {eps:g}) on {examples} examples")
                call = (
                    entry_of(loaded, attack["attack"]["extends"], eps=eps, norm=threat.norm)
                    if transfer
                    else entry_of(loaded, attack["extends"], **own, eps=eps, **prediction)
                )
                elapsed = call_seconds(lambda: call(victim, x, y), x.device)  # noqa: B023 - called now
                # with nothing broken, the time is spent on the examples the victim gets right: per such example
                seconds.append(elapsed / (attacked if eps == full_eps else examples))
            costs.append(
                AttackCost(
                    threat.name, attack["name"], seconds[0], seconds[1], len(threat.radii), protocol.test_examples
                )
            )
    cap = epochs or int(loaded.resolve_experiment(protocol.experiment, overrides)["epochs"])  # the bench's own cap
    return CostEstimate(
        defense=entry,
        dataset=dataset,
        protocol=protocol.version,
        device=str(torch.device(trained.device)),
        stochastic=stochastic,
        examples=examples,
        trained_epochs=train_epochs,
        clean_accuracy=right / examples,
        epochs=cap,
        defense_epoch=sum(float(h["epoch_seconds"]) for h in trained.history) / len(trained.history),
        twin_epoch=0.0 if twin is None else float(twin.history[-1]["epoch_seconds"]),
        attacks=tuple(costs),
        seeds=len(protocol.seeds if seeds is None else seeds),
        off_protocol=tuple(registry_changes(protocol, loaded, stochastic)),  # timed as changed, as a bench runs them
    )
