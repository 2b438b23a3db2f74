"""Building a run's parts: its components from the resolved experiment, networks, attacks, tracked models."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from advbayes.components import Attack, Dataset, Defense, EvalContext
from advbayes.engine.distributed import SINGLE, Distributed
from advbayes.errors import RunError
from advbayes.experiment import Experiment
from advbayes.registry import Registry

if TYPE_CHECKING:
    from advbayes.results import RunInfo


def tracked_model(pm: Any, run_id: str, tracking_uri: str | None, device: torch.device) -> torch.nn.Module:
    """A tracked run's model through the load_model hook, on `device`, in eval mode."""
    model = pm.hook.load_model(run_id=run_id, tracking_uri=tracking_uri)
    if model is None:
        raise RunError(f"no plugin can load tracked run {run_id} (is tracking disabled?)")
    return model.to(device).eval()


class RunParts:
    """The components of one run, built from its resolved experiment, and what builds more of them on demand.
    Read-only for the trainer and the evaluator, which hold the state that changes as the run goes."""

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        registry: Registry,
        device: torch.device,
        info: RunInfo,
        progress: bool,
        checkpoint: Mapping[str, Any] | None = None,  # the state a resumed run starts from
        peers: Mapping[str, torch.nn.Module] | None = None,
        place: Distributed = SINGLE,
    ) -> None:
        self.name = name
        self.place = place  # this process's rank in a distributed run
        self.peers = dict(peers or {})
        self.spec = spec
        self.registry = registry
        self.pm = registry.pm
        self.device = device
        self.info = info
        self.progress = progress
        self.checkpoint = checkpoint
        self.experiment: Experiment = registry.build("experiments", spec)
        self.dataset: Dataset = registry.build("datasets", spec["dataset"])
        self.model_builder = registry.build("models", spec["model"])
        self.defense: Defense = registry.build("defenses", spec["defense"])
        self.attacks: list[tuple[str, Attack]] = [(a["name"], registry.build("attacks", a)) for a in spec["attacks"]]
        self.metrics: list[tuple[str, Any]] = [(m["name"], registry.build("metrics", m)) for m in spec["metrics"]]
        self._attack_cache: dict[str, Attack] = {}
        # How progress bars and epoch lines name this run: the lines of a multi-defense (or multi-seed) run differ.
        self.label = f"{name}/{spec['defense']['name']} seed {self.experiment.seed}"

    def build_attack(self, entry: Any) -> Attack:
        """Build an attack entry (name or table) bound to this run's data range; built once per entry."""
        key = json.dumps(entry, sort_keys=True)
        if key not in self._attack_cache:
            where = ("run", f"experiments.{self.name}", "attack")
            self._attack_cache[key] = self.registry.build_attack(
                entry, where=where, value_range=self.dataset.value_range
            )
        return self._attack_cache[key]

    def load_tracked_model(self, run_id: str) -> torch.nn.Module:
        """A tracked run's model, on this run's device, in eval mode."""
        return tracked_model(self.pm, run_id, self.info.tracking_uri, self.device)

    def build_network(self) -> torch.nn.Module:
        """A fresh network of the experiment's architecture for its data set."""
        return self.model_builder.build(tuple(self.dataset.input_shape), self.dataset.num_classes)

    def eval_context(self, net: torch.nn.Module, status: Callable[[str], None] | None = None) -> EvalContext:
        """What attacks and metrics may bind to: this run's model, earlier defenses of the experiment, tracked runs;
        `status` shows what an attack is doing inside a batch."""
        return EvalContext(
            models={**self.peers, self.spec["defense"]["name"]: net},
            load_tracked_model=self.load_tracked_model,
            build_attack=self.build_attack,
            device=self.device,
            prediction_average=self.defense.prediction_average,
            status=status,
        )
