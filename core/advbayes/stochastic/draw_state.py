"""A network's own draw generators as a checkpoint keeps them, so that a resumed run draws on where it stopped.

A stochastic model draws from its own seeded generators, not torch's global one (an attack's extra forward passes
must not shift a prediction's draws). Those generators are not in torch's random state, so a checkpoint saved only
that: a resumed run's rebuilt network drew a new seed and began a new stream of draws, giving other numbers than a
run never interrupted. Any module with draw_state() / load_draw_state(state) is saved and
restored here, by its name in the network (the same names in the resumed run: it is built the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def generator_states(seed: int, generators: Mapping[torch.device, torch.Generator]) -> dict[str, Any]:
    """The seed and each device's generator state, in types torch.load(weights_only=True) admits."""
    return {"seed": int(seed), "generators": {str(device): g.get_state() for device, g in generators.items()}}


def load_generator_states(state: Mapping[str, Any]) -> tuple[int, dict[torch.device, torch.Generator]]:
    """The seed and generators that generator_states saved; a device this machine lacks starts again from the seed
    on first use (its draws were never going to be the same there)."""
    generators = {}
    for name, saved in state["generators"].items():
        device = torch.device(name)
        if device.type == "cuda" and not (
            torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        ):
            continue
        generator = torch.Generator(device=device)
        generator.set_state(saved)
        generators[device] = generator
    return int(state["seed"]), generators


class SeededDraws:
    """A module's own seeded generator per device, and its draw state (for a class that sets `_seed` and an empty
    `_generators` dict in its __init__)."""

    _seed: int
    _generators: dict[torch.device, torch.Generator]

    def seed(self, seed: int) -> None:
        """Restart the draws: the same seed reproduces every draw."""
        self._seed = seed
        self._generators.clear()

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator on `device` (created from the seed on first use)."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def draw_state(self) -> dict[str, Any]:
        """The seed and generator states: what a checkpoint keeps so that a resumed run draws on."""
        return generator_states(self._seed, self._generators)

    def load_draw_state(self, state: Mapping[str, Any]) -> None:
        """Continue the draws that draw_state saved."""
        self._seed, self._generators = load_generator_states(state)


def draw_states(net: nn.Module) -> dict[str, Any]:
    """Every module's draw state by its name in `net` (empty for a network that draws from torch's generator)."""
    return {name: module.draw_state() for name, module in net.named_modules() if hasattr(module, "draw_state")}


def load_draw_states(net: nn.Module, states: Mapping[str, Any]) -> None:
    """Restore what draw_states saved; a module it names must exist in `net` (the run's network, built again)."""
    modules = dict(net.named_modules())
    for name, state in states.items():
        module = modules.get(name)
        if module is None or not hasattr(module, "load_draw_state"):
            raise ValueError(f"the checkpoint has draws of module {name!r}, which this network lacks")
        module.load_draw_state(state)
