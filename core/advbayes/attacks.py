"""Attacks as torchattacks users call them: `PGD(eps=8/255, attack_samples=10)(model, x, y)` is the adversarial batch.

Every attack component a plugin registers is importable here under its class name (`from advbayes.attacks import
PGD, FGSM, APGD, Square`), and every registry entry through `entry("pgd-20", eps=0.3)`. The model may be a plain
`nn.Module` returning [B, k] logits or an advbayes model taking a sample dimension; inputs are clamped to [0, 1]
unless `value_range` says otherwise. The engine's own evaluation uses the same components, so a number computed
here and one from `advbayes run` come from the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from advbayes.errors import RegistryError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from advbayes.components import Attack, AttackResult

API_SOURCE = "advbayes.attacks"


class OneCallAttack:
    """A configured attack called like a torchattacks one: `attack(model, x, y)` is the adversarial batch."""

    component: type[Attack]

    def __init__(self, **params: Any) -> None:
        from advbayes.registry import construct

        self.attack: Attack = construct(self.component, params, file=API_SOURCE, entry=type(self).__name__)

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

        return self.bound(x.device)(as_sampled(model), x, y)

    def bound(self, device: torch.device) -> Attack:
        """The attack bound as the engine binds it (composite attacks build their parts from the registry, with
        this attack's value range); bound once per device."""
        cache: dict[str, Attack] = self.__dict__.setdefault("_bound", {})
        if str(device) not in cache:
            cache[str(device)] = self.attack.bind(_api_context(device, self.attack.value_range))
        return cache[str(device)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.attack!r})"


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

    registry = load_registry()
    where = ("registry", f"attacks.{name}", "")
    resolved = registry.resolve("attacks", name, where=where)
    unknown = sorted(set(overrides) - set(resolved))
    if unknown:
        raise RegistryError(f"unknown key '{unknown[0]}'; keys: {', '.join(sorted(resolved))}", file=API_SOURCE)
    resolved = registry.resolve("attacks", {**resolved, **overrides}, where=where)
    return OneCallAttack.wrapping(registry.build("attacks", resolved), name)
