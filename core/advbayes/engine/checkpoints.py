"""A run's checkpoints: every random state in a form torch.load(weights_only=True) admits, and the writer that
keeps the latest resumable state of a run (after each epoch, after training, after each attack)."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import attrs
import numpy as np
import torch

from advbayes.engine.building import RunParts
from advbayes.posterior.optimizers import OptimizerSteps
from advbayes.results import EvalRecord
from advbayes.stochastic.draw_state import draw_states, load_draw_states

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state(net: torch.nn.Module | None = None) -> dict[str, Any]:
    """Every random state in types torch.load(weights_only=True) admits (tensors, tuples, ints, floats, strings):
    the global generators', and those of the network `net` draws from (stochastic/draw_state.py)."""
    name, keys, position, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if net is not None:
        state["draws"] = draw_states(net)
    return state


def set_rng_state(state: Mapping[str, Any], net: torch.nn.Module | None = None) -> None:
    """Restore what rng_state saved (the network's own draws too, given `net`)."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if net is not None and "draws" in state:  # checkpoints written before draws were kept have none
        load_draw_states(net, state["draws"])


class Checkpoints:
    """The run's resumable state: written atomically to its work folder, handed to the checkpoint_saved hook, and
    extended after every attack so that a resumed run skips what finished and continues bit for bit."""

    def __init__(self, parts: RunParts) -> None:
        self.parts = parts
        self.workdir = Path(tempfile.mkdtemp(prefix="advbayes-run-"))
        self.last_state: dict[str, Any] | None = dict(parts.checkpoint) if parts.checkpoint else None

    def finished_evaluations(self) -> dict[str, dict[str, Any]]:
        """label -> {records, rng} of the attacks the resumed checkpoint had finished."""
        return {entry["label"]: entry for entry in (self.parts.checkpoint or {}).get("evaluated", [])}

    def save_epoch(
        self,
        net: torch.nn.Module,
        optimizer: OptimizerSteps,
        generator: torch.Generator,
        epoch: int,
        history: list[dict[str, float]],
        initial_width: float,
    ) -> Path:
        """Write everything needed to resume after `epoch`."""
        state = {
            "epoch": epoch,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(net),
            "generator": generator.get_state(),
            "history": history,
            "initial_width": initial_width,
        }
        return self.write(state)

    def write(self, state: dict[str, Any]) -> Path:
        """Write a state atomically (a crash never leaves half a file) and keep it as the latest."""
        # every state names this run's own settings here, in one place: a run resumed with changed ones (--set)
        # starts from a state that holds the old
        state = {**state, "experiment": self.parts.name, "spec": self.parts.spec}
        path = self.workdir / CHECKPOINT_NAME
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(path)
        self.last_state = state
        return path

    def latest(self, net: torch.nn.Module, history: list[dict[str, float]]) -> dict[str, Any]:
        """A copy of the last state written, or the state of a run that trained no epoch (epochs = 0)."""
        if self.last_state is not None:
            return dict(self.last_state)
        return {
            "epoch": 0,
            "model": net.state_dict(),
            "optimizer": None,
            "rng": rng_state(net),
            "history": history,
        }

    def save_evaluation(
        self, net: torch.nn.Module, label: str, records: list[EvalRecord], history: list[dict[str, float]]
    ) -> None:
        """After an attack: the state gains its records and the random state after it (epochs = 0 runs get a
        checkpoint here too); rank 0 alone writes it."""
        if not self.parts.place.leader:
            return
        state = self.latest(net, history)
        finished = [
            *state.get("evaluated", []),
            {"label": label, "records": [attrs.asdict(r) for r in records], "rng": rng_state(net)},
        ]
        path = self.write({**state, "evaluated": finished})
        self.parts.pm.hook.checkpoint_saved(run=self.parts.info, checkpoint=path)
