"""Attacks as torchattacks users call them: `PGD(eps=8/255, attack_samples=10)(model, x, y)` is the adversarial batch.

Every attack component a plugin registers is importable here under its class name (`from advbayes.attacks import
PGD, FGSM, APGD, Square`), and every registry entry through `entry("pgd-20", eps=0.3)`. The model may be a plain
`nn.Module` returning [B, k] logits or an advbayes model taking a sample dimension. Inputs must lie in
`value_range` ([0, 1] unless given; normalized inputs need their own range) and an L_inf eps within its width:
anything else is an AttackInputError (a ValueError), as torchattacks raises, instead of a silent clamp. On a
stochastic model the attack warns and refuses exactly as `advbayes run` does, and `inference_samples` (S_I) sets
how many draws each judging prediction averages. The engine's own evaluation uses the same components, so a
number computed here and one from `advbayes run` come from the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from advbayes.errors import AttackInputError, RegistryError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from advbayes.components import Attack, AttackResult
    from advbayes.registry import Registry

API_SOURCE = "advbayes.attacks"
PREDICTION_KEYS = ("inference_samples", "prediction_average")  # how the defense predicts: set by the engine in a run
CALL_KEYS = (*PREDICTION_KEYS, "value_range")  # set per use, not registry keys: the run engine sets them from its parts
RANGE_TOLERANCE = 1e-6  # float noise at the edges of the range (e.g. 1.0000001 after a normalization round trip)


class OneCallAttack:
    """A configured attack called like a torchattacks one: `attack(model, x, y)` is the adversarial batch."""

    component: type[Attack]

    def __init__(self, **params: Any) -> None:
        from advbayes.registry import construct

        own = {key: value for key, value in params.items() if key not in CALL_KEYS}
        attack = construct(self.component, own, file=API_SOURCE, entry=type(self).__name__)
        self.attack: Attack = with_call_settings(attack, params, type(self).__name__)

    @classmethod
    def wrapping(cls, attack: Attack, name: str) -> OneCallAttack:
        """A one-call view of an attack component that is already built (a registry entry)."""
        view: OneCallAttack = object.__new__(type(name, (cls,), {"component": type(attack)}))
        view.attack = attack
        return view

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial examples for (x, y), within eps of x and inside the value range."""
        return self.run(model, x, y).x_adv

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """The full result: adversarial examples, perturbation and the attack's diagnostics."""
        from advbayes.stochastic import as_sampled

        check_inputs(type(self).__name__, self.attack, x)
        sampled = as_sampled(model)
        self.check_model(model, sampled, x)
        return self.bound(x.device)(sampled, x, y)

    def check_model(self, model: nn.Module, sampled: nn.Module, x: torch.Tensor) -> None:
        """On a stochastic model, what the engine checks before a run: refuse an attack that judges single
        evaluations, warn when the attack's gradient follows single draws. Probed once per model (two calls)."""
        import warnings

        from advbayes.checks import randomness_problem
        from advbayes.errors import EvaluationWarning
        from advbayes.stochastic import is_stochastic

        checked: set[int] = self.__dict__.setdefault("_checked_models", set())
        if id(model) in checked:
            return
        checked.add(id(model))
        if not is_stochastic(sampled, x):
            return
        name = type(self).__name__
        sub = self.attack.deterministic_only(_api_context(x.device, self.attack.value_range).build_attack)
        if sub is not None:
            raise AttackInputError(
                f"{API_SOURCE}.{name}: the model is stochastic (identical calls differ) and {sub} judges single "
                "evaluations; use entry('autoattack-rand') for it"
            )
        problem = randomness_problem(self.attack, self.attack.attack_samples)
        if problem is not None:
            warnings.warn(f"{API_SOURCE}.{name}: {problem}", EvaluationWarning, stacklevel=3)
        if self.attack.verdict_repeats > 1 and self.attack.inference_samples == 1:
            warnings.warn(
                f"{API_SOURCE}.{name}: each of its {self.attack.verdict_repeats} judging predictions uses S_I = 1 "
                "draw; pass inference_samples=S_I to judge as the defense predicts",
                EvaluationWarning,
                stacklevel=3,
            )

    def bound(self, device: torch.device) -> Attack:
        """The attack bound as the engine binds it (composite attacks build their parts from the registry, with
        this attack's value range); bound once per device."""
        cache: dict[str, Attack] = self.__dict__.setdefault("_bound", {})
        if str(device) not in cache:
            cache[str(device)] = self.attack.bind(_api_context(device, self.attack.value_range))
        return cache[str(device)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.attack!r})"


def with_call_settings(attack: Attack, params: dict[str, Any], where: str) -> Attack:
    """The attack with the settings a run takes from its defense (S_I, the average) and its data set (the value
    range), when given, each checked before any work."""
    import attrs

    given = {key: params[key] for key in CALL_KEYS if key in params}
    samples = given.get("inference_samples", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise RegistryError(
            f"expected an integer >= 1 (S_I), got {samples!r}", file=API_SOURCE, entry=where, key="inference_samples"
        )
    if given.get("prediction_average", "probs") not in ("probs", "logits"):
        raise RegistryError(
            f"expected 'probs' or 'logits', got {given['prediction_average']!r}",
            file=API_SOURCE,
            entry=where,
            key="prediction_average",
        )
    if "value_range" in given:
        given["value_range"] = checked_range(given["value_range"], where)
    return attrs.evolve(attack, **given) if given else attack


def checked_range(value: Any, where: str) -> tuple[float, float]:
    """value_range as (low, high) floats, or one line saying what was given instead; a bound may be infinite (an
    unbounded feature, as half-moons' coordinates: nothing to clamp), not nan."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    numbers = len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    if not (numbers and pair[0] < pair[1]):  # nan compares False
        raise RegistryError(
            f"expected (low, high): two numbers, low < high, got {value!r}",
            file=API_SOURCE,
            entry=where,
            key="value_range",
        )
    return float(pair[0]), float(pair[1])


def check_inputs(name: str, attack: Attack, x: torch.Tensor) -> None:
    """Inputs outside the attack's value range would be moved by its clamp, and an L_inf eps wider than the range
    is in the wrong units: both are errors before any work, in one line."""
    from advbayes.components import radius_problem

    low, high = attack.value_range
    if x.numel():
        least, most = float(x.min()), float(x.max())
        if least < low - RANGE_TOLERANCE or most > high + RANGE_TOLERANCE:
            raise AttackInputError(
                f"{API_SOURCE}.{name}: inputs lie in [{least:.4g}, {most:.4g}], outside value_range "
                f"[{low:g}, {high:g}] that the attack clamps to; pass value_range=(low, high) of your inputs "
                "(normalized data) or attack unnormalized inputs"
            )
    problem = radius_problem(attack.eps, attack.norm, attack.value_range)
    if problem is not None:
        raise AttackInputError(f"{API_SOURCE}.{name}: {problem}")


def _api_context(device: torch.device, value_range: tuple[float, float]) -> Any:
    """What an attack may bind to outside a run: registry entries and tracked runs' models (no earlier defenses)."""
    from advbayes.components import EvalContext
    from advbayes.engine.building import tracked_model
    from advbayes.plugins import get_plugin_manager
    from advbayes.registry import load_registry

    registry = load_registry()
    where = (API_SOURCE, "attack", "")
    return EvalContext(
        build_attack=lambda entry: registry.build_attack(entry, where=where, value_range=value_range),
        load_tracked_model=lambda run_id: tracked_model(get_plugin_manager(), run_id, None, device),
        device=device,
    )


def _registered() -> dict[str, type[Attack]]:
    from advbayes.plugins import get_plugin_manager

    index = get_plugin_manager().components
    classes = [index.get("attacks", name) for name in index.names("attacks")]
    return {
        registration.cls.__name__: cast("type[Attack]", registration.cls)
        for registration in classes
        if registration is not None
    }


def available() -> list[str]:
    """The class names importable from this module (every registered attack component)."""
    return sorted(_registered())


def __getattr__(name: str) -> type[OneCallAttack]:
    if name.startswith("__"):
        raise AttributeError(name)
    registered = _registered()
    if name not in registered:
        raise AttributeError(
            f"advbayes.attacks has no attack '{name}'; registered: {', '.join(sorted(registered))} "
            "(registry entries such as pgd-20: advbayes.attacks.entry('pgd-20'))"
        )
    api_class = type(name, (OneCallAttack,), {"component": registered[name], "__doc__": registered[name].__doc__})
    globals()[name] = api_class
    return api_class


def entry(name: str, **overrides: Any) -> OneCallAttack:
    """The registry's attack entry `name` (e.g. "pgd-20", "eot-pgd-10", "autoattack-rand") with keys overridden,
    validated as a registry file is."""
    from advbayes.registry import load_registry

    return entry_of(load_registry(), name, **overrides)


def entry_of(registry: Registry, name: str, **overrides: Any) -> OneCallAttack:
    """`entry` from a given registry (one loaded with the caller's --registry files)."""
    where = ("registry", f"attacks.{name}", "")
    resolved = registry.resolve("attacks", name, where=where)
    unknown = sorted(set(overrides) - set(resolved) - set(CALL_KEYS))
    if unknown:
        keys = sorted({*resolved, *CALL_KEYS})
        raise RegistryError(f"unknown key '{unknown[0]}'; keys: {', '.join(keys)}", file=API_SOURCE)
    own = {key: value for key, value in overrides.items() if key not in CALL_KEYS}
    resolved = registry.resolve("attacks", {**resolved, **own}, where=where)
    attack = with_call_settings(registry.build("attacks", resolved), overrides, name)
    return OneCallAttack.wrapping(attack, name)
