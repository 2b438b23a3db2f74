"""The run engine: seed, build, train with a progress bar and checkpoints, attack x eps evaluation, hooks."""

from __future__ import annotations

import json
import math
import pickle
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from tqdm.auto import tqdm

from advbayes.checks import Finding, evaluation_findings, warn
from advbayes.components import Attack, Dataset, Defense, EvalBatch, EvalContext, TrainContext
from advbayes.data import Batches
from advbayes.errors import RunError
from advbayes.experiment import Experiment
from advbayes.losses import mean_cross_entropy
from advbayes.plugins import PluginManager, get_plugin_manager
from advbayes.preflight import preflight, resolve_device
from advbayes.registry import Registry, apply_override, load_registry
from advbayes.results import EvalRecord, RunGroup, RunResult, eps_label
from advbayes.stochastic import as_sampled, is_stochastic, predict, predict_repeated

CHECKPOINT_NAME = "checkpoint.pt"


@attrs.define(kw_only=True)
class RunInfo:
    """A run as the lifecycle hooks see it; the tracking plugin sets `run_id` and `store`, plugins keep their own
    state in `tracking`."""

    experiment: str
    spec: dict[str, Any]
    seed: int
    device: str
    plugins: dict[str, str]
    track: bool = True
    tracking_uri: str | None = None
    resume_run_id: str | None = None
    resumed_from: str | None = None  # a resumed run whose settings were changed (--set) is tracked as a new run
    run_id: str | None = None  # set by the tracking plugin when it opens the tracked run
    store: str | None = None  # where the tracking plugin records the run (shown to the user)
    tracking: dict[str, Any] = attrs.field(factory=dict)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every random state in types torch.load(weights_only=True) admits (tensors, tuples, ints, floats, strings)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(experiment: Experiment, defense: Defense, parameters: Any) -> torch.optim.Optimizer:
    """The experiment's optimizer, falling back to the defense's defaults."""
    name = experiment.optimizer or defense.default_optimizer
    lr = experiment.lr if experiment.lr is not None else defense.default_lr
    params = [p for p in parameters if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=experiment.momentum, weight_decay=experiment.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=experiment.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=experiment.weight_decay)


def plugin_versions(pm: PluginManager) -> dict[str, str]:
    """name -> version of every loaded plugin."""
    return {name: info.version for name, info in sorted(pm.info.items())}


class Run:
    """One experiment run: built components, training and evaluation, reported through the lifecycle hooks."""

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        registry: Registry,
        device: torch.device,
        info: RunInfo,
        progress: bool,
        checkpoint: Mapping[str, Any] | None = None,
        peers: Mapping[str, torch.nn.Module] | None = None,
    ) -> None:
        self.name = name
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
        self.history: list[dict[str, float]] = list(checkpoint["history"]) if checkpoint else []
        self.workdir = Path(tempfile.mkdtemp(prefix="advbayes-run-"))
        self._attack_cache: dict[str, Attack] = {}
        self.stochastic = False  # probed on the first test batch before evaluation
        self.findings: list[Finding] = []

    def build_attack(self, entry: Any) -> Attack:
        """Build an attack entry (name or table) bound to this run's data range; built once per entry."""
        key = json.dumps(entry, sort_keys=True)
        if key not in self._attack_cache:
            where = ("run", f"experiments.{self.name}", "attack")
            resolved = (
                entry
                if isinstance(entry, dict) and "use" in entry
                else self.registry.resolve("attacks", entry, where=where)
            )
            attack = self.registry.build("attacks", resolved)
            self._attack_cache[key] = attrs.evolve(attack, value_range=self.dataset.value_range)
        return self._attack_cache[key]

    def load_tracked_model(self, run_id: str) -> torch.nn.Module:
        """A tracked run's model, on this run's device, in eval mode."""
        model = self.pm.hook.load_model(run_id=run_id, tracking_uri=self.info.tracking_uri)
        if model is None:
            raise RunError(f"no plugin can load tracked run {run_id} (is tracking disabled?)")
        return model.to(self.device).eval()

    # ------------------------------------------------------------------------------------------- training

    def train(self, net: torch.nn.Module, train: Batches, context: TrainContext) -> None:
        """Epochs of defense.loss; checkpoint and epoch_finished after each."""
        experiment = self.experiment
        optimizer = make_optimizer(experiment, self.defense, net.parameters())
        start_epoch = 0
        if self.checkpoint is not None:
            optimizer.load_state_dict(self.checkpoint["optimizer"])
            start_epoch = int(self.checkpoint["epoch"])
            _set_rng_state(self.checkpoint["rng"])
        generator = torch.Generator().manual_seed(experiment.seed)
        if self.checkpoint is not None and "generator" in self.checkpoint:
            generator.set_state(self.checkpoint["generator"])
        for epoch in range(start_epoch, experiment.epochs):
            context.epoch = epoch + 1
            net.train()
            sums: dict[str, torch.Tensor] = {}
            seen = 0
            started = time.perf_counter()
            bar = tqdm(
                total=len(train),
                unit="img",
                desc=f"{self.name} epoch {epoch + 1}/{experiment.epochs}",
                disable=not self.progress,
                leave=True,
                dynamic_ncols=True,
            )
            for step, (x, y) in enumerate(train.iterate(experiment.batch_size, shuffle=True, generator=generator)):
                context.step += 1
                output = self.defense.loss(net, (x, y), context)
                optimizer.zero_grad(set_to_none=True)
                output.loss.backward()
                optimizer.step()
                batch = len(y)
                seen += batch
                for key, value in {"loss": output.loss, **output.parts}.items():
                    value = torch.as_tensor(value).detach().float()
                    sums[key] = sums.get(key, 0.0) + value * batch
                bar.update(batch)
                if step % 10 == 0:
                    loss_now = float(output.loss.detach())
                    if not math.isfinite(loss_now):
                        raise RunError(f"training diverged: loss is {loss_now} at epoch {epoch + 1}, step {step + 1}")
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix({k: f"{float(v) / seen:.4g}" for k, v in sums.items()} | {"img/s": f"{rate:.0f}"})
            elapsed = time.perf_counter() - started
            metrics = {k: float(v) / max(seen, 1) for k, v in sums.items()}
            if not math.isfinite(metrics.get("loss", 0.0)):
                raise RunError(f"training diverged: mean loss is {metrics['loss']} in epoch {epoch + 1}")
            metrics["images_per_s"] = seen / max(elapsed, 1e-9)
            metrics["epoch_seconds"] = elapsed
            bar.close()
            if not self.progress:
                parts = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                print(f"{self.name} epoch {epoch + 1}/{experiment.epochs}: {parts}", file=sys.stderr)
            self.history.append({"epoch": epoch + 1, **metrics})
            path = self.save_checkpoint(net, optimizer, generator, epoch + 1)
            self.pm.hook.epoch_finished(run=self.info, epoch=epoch + 1, metrics=metrics, checkpoint=path)

    def save_checkpoint(
        self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, epoch: int
    ) -> Path:
        """Write everything needed to resume after `epoch` (atomically: a crash never leaves half a file)."""
        path = self.workdir / CHECKPOINT_NAME
        partial = path.with_suffix(".partial")
        state = {
            "experiment": self.name,
            "spec": self.spec,
            "epoch": epoch,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "generator": generator.get_state(),
            "history": self.history,
        }
        torch.save(state, partial)
        partial.replace(path)
        return path

    def build_network(self) -> torch.nn.Module:
        """A fresh network of the experiment's architecture for its data set."""
        return self.model_builder.build(tuple(self.dataset.input_shape), self.dataset.num_classes)

    def fit(self, model: torch.nn.Module, train: Batches, epochs: int) -> torch.nn.Module:
        """Train a deterministic `model` with plain cross-entropy (Adam, lr 1e-3, the experiment's batch size)."""
        model = as_sampled(model).to(self.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(self.experiment.seed)
        batch_size = self.experiment.batch_size
        for epoch in range(epochs):
            bar = tqdm(
                total=len(train),
                unit="img",
                desc=f"{self.name} source model epoch {epoch + 1}/{epochs}",
                disable=not self.progress,
                dynamic_ncols=True,
            )
            for x, y in train.iterate(batch_size, shuffle=True, generator=generator):
                loss = mean_cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(len(y))
            bar.close()
        return model.eval()

    # ------------------------------------------------------------------------------------------- evaluation

    def eval_context(self, net: torch.nn.Module) -> EvalContext:
        """What attacks and metrics may bind to: this run's model, earlier defenses of the experiment, tracked runs."""
        return EvalContext(
            models={**self.peers, self.spec["defense"]["name"]: net},
            load_tracked_model=self.load_tracked_model,
            build_attack=self.build_attack,
            device=self.device,
            prediction_average=self.defense.prediction_average,
        )

    def sample_sweep(self, attack: Attack) -> list[tuple[int, int]]:
        """(S_A, S_I) combinations: the experiment's sweeps, or the attack's and the defense's own counts."""
        attack_samples = list(self.experiment.attack_samples) or [attack.samples]
        inference_samples = list(self.experiment.inference_samples) or [self.defense.inference_samples]
        return [(a, i) for a in attack_samples for i in inference_samples]

    def evaluate(self, net: torch.nn.Module, test: Batches) -> list[EvalRecord]:
        """Every attack (x every S_A, S_I of a sweep) at every eps of the experiment; metrics on S_I fresh draws.

        Afterwards the randomness and masking checks run on the records; their findings are warned and kept.
        """
        net.eval()
        records: list[EvalRecord] = []
        context = self.eval_context(net)
        self.stochastic = self.is_stochastic(net, test)
        metrics = [(name, metric.bind(context)) for name, metric in self.metrics if metric.per_attack]
        evaluated: dict[str, Attack] = {}
        for attack_name, unbound in self.attacks:
            attack_bound = unbound.bind(context)
            combinations = self.sample_sweep(attack_bound)
            for samples_a, samples_i in combinations:
                label = (
                    attack_name if len(combinations) == 1 else f"{attack_name}:sa{samples_a}:si{samples_i}"
                )  # MLflow-safe
                attack_base = attrs.evolve(attack_bound, samples=samples_a)
                evaluated[label] = attack_base
                attack_records, figures = self.evaluate_attack(net, test, label, attack_base, samples_i, metrics)
                attack_records = [attrs.evolve(r, entry=attack_name) for r in attack_records]
                records.extend(attack_records)
                self.pm.hook.evaluation_finished(run=self.info, attack=label, records=attack_records, figures=figures)
        self.findings = evaluation_findings(self.spec["defense"]["name"], records, evaluated, self.stochastic)
        warn(self.findings)
        return records

    def evaluate_attack(
        self,
        net: torch.nn.Module,
        test: Batches,
        label: str,
        attack_base: Attack,
        samples_i: int,
        metrics: list[tuple[str, Any]],
    ) -> tuple[list[EvalRecord], dict[str, Any]]:
        """One attack at one (S_A, S_I): records for every eps and the metrics' figures."""
        eps_values = list(self.experiment.eps) or [attack_base.eps]
        figures: dict[str, Any] = {}
        attack_records: list[EvalRecord] = []
        measured = eps_values if attack_base.uses_eps else eps_values[:1]
        bar = tqdm(
            total=len(test) * len(measured),
            unit="img",
            desc=f"{self.name} attack {label}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for eps in measured:
            attack = attrs.evolve(
                attack_base,
                eps=eps,
                value_range=self.dataset.value_range,
                inference_samples=samples_i,
                prediction_average=self.defense.prediction_average,
            )
            states = {name: metric.create().to(self.device) for name, metric in metrics}
            values, metric_figures, (l2_sum, linf_max, count, zero_share) = self.measure(
                net, test, attack, eps, states, bar, samples_i
            )
            figures.update({f"{metric}/{eps_label(eps)}/{file}": f for (metric, file), f in metric_figures.items()})
            for reported in [eps] if attack_base.uses_eps else eps_values:
                attack_records.append(
                    EvalRecord(
                        attack=label,
                        eps=reported,
                        metrics=values,
                        attack_samples=attack.samples,
                        inference_samples=samples_i,
                        mean_l2=l2_sum / max(count, 1),
                        max_linf=linf_max,
                        examples=count,
                        diagnostics={"zero_grad_share": zero_share},
                    )
                )
        bar.close()
        return attack_records, figures

    def evaluate_model(self, net: torch.nn.Module, test: Batches) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics of the model itself (per_attack = False), once on the clean test split."""
        context = self.eval_context(net)
        states = {
            name: metric.bind(context).create().to(self.device)
            for name, metric in self.metrics
            if not metric.per_attack
        }
        if not states:
            return {}, {}
        clean = self.registry.build("attacks", {"name": "none", "use": "none"})  # the built-in clean "attack"
        values, metric_figures, _ = self.measure(net, test, clean, 0.0, states)
        return values, {f"{metric}/{file}": figure for (metric, file), figure in metric_figures.items()}

    def measure(
        self,
        net: torch.nn.Module,
        test: Batches,
        attack: Attack,
        eps: float,
        states: dict[str, Any],
        bar: Any = None,
        samples_i: int | None = None,
    ) -> tuple[dict[str, float], dict[tuple[str, str], Any], tuple[float, float, int, float]]:
        """Attack the test split, predict on S_I fresh draws (R times when the attack asks), update the metric states.

        Returns the metric values, their figures by (metric, file), the applied perturbation (sum of L2 lengths,
        max L_inf, examples) and the share of exactly-zero input-gradient components the attack reported.
        """
        samples_i = samples_i or self.defense.inference_samples
        average = self.defense.prediction_average
        repeats = attack.verdict_repeats if self.stochastic else 1
        l2_sum, linf_max, count, zero_sum = 0.0, 0.0, 0, 0.0
        for x, y in test.iterate(self.experiment.eval_batch_size, shuffle=False):
            result = attack(net, x, y)
            repeated = None
            with torch.no_grad():  # fresh draws, independent of the attack's
                if repeats > 1:
                    repeated = predict_repeated(net, result.x_adv, samples_i, repeats, average)
                    probs = repeated[0]
                else:
                    probs, _ = predict(net, result.x_adv, samples_i, average)
            batch = EvalBatch(
                model=net,
                x=x,
                y=y,
                result=result,
                probs=probs,
                attack=attack,
                eps=eps,
                inference_samples=samples_i,
                device=self.device,
                prediction_average=average,
                repeated_probs=repeated,
            )
            for state in states.values():
                state.update(batch)
            flat = result.delta.detach().flatten(1)
            l2_sum += float(flat.norm(dim=1).sum())
            linf_max = max(linf_max, float(flat.abs().amax())) if flat.numel() else linf_max
            count += len(y)
            zero_sum += float(result.diagnostics.get("zero_grad_share", 0.0)) * len(y)
            if bar is not None:
                bar.update(len(y))
        values: dict[str, float] = {}
        figures: dict[tuple[str, str], Any] = {}
        for metric_name, state in states.items():
            values.update({key: float(value) for key, value in state.compute().items()})
            figures.update({(metric_name, file): figure for file, figure in state.figures().items()})
        return values, figures, (l2_sum, linf_max, count, zero_sum / max(count, 1))

    # ------------------------------------------------------------------------------------------- whole run

    def is_stochastic(self, net: torch.nn.Module, test: Batches) -> bool:
        """Whether two identical calls of the network on the first test batch differ."""
        first = next(iter(test.iterate(self.experiment.eval_batch_size, shuffle=False)), None)
        return first is not None and is_stochastic(net, first[0])

    def check_attacks_fit(self, net: torch.nn.Module, test: Batches) -> None:
        """Before training: an attack that can only judge a deterministic model must not meet a stochastic one."""
        needs = [(name, attack.deterministic_only(self.build_attack)) for name, attack in self.attacks]
        needs = [(name, sub) for name, sub in needs if sub is not None]
        if not needs:
            return
        if self.is_stochastic(net.eval(), test):
            name, sub = needs[0]
            raise RunError(
                f"experiments.{self.name}: attack '{name}' ({sub}) judges single evaluations, but defense "
                f"'{self.spec['defense']['name']}' gives a stochastic model; use autoattack-rand for it"
            )

    def execute(self) -> RunResult:
        """Build data and network, train, evaluate; returns the result (hooks report it)."""
        train_split = self.dataset.data("train")
        test_split = self.dataset.data("test")
        train = Batches(train_split, self.device)
        test = Batches(test_split, self.device)
        network = self.build_network()
        net = as_sampled(self.defense.prepare(network)).to(self.device)
        if self.checkpoint is not None:
            net.load_state_dict(self.checkpoint["model"])
        self.check_attacks_fit(net, test)
        context = TrainContext(
            dataset=self.dataset,
            train=train_split,
            device=self.device,
            n_train=len(train),
            seed=self.experiment.seed,
            build_attack=self.build_attack,
            models=self.peers,
            load_tracked_model=self.load_tracked_model,
            build_network=lambda: self.build_network().to(self.device),
            fit=lambda model, epochs: self.fit(model, train, epochs),
            progress=self.progress,
        )
        # Its own seeded random state: the main training's stream is the same with or without it, and a resumed
        # run recomputes exactly the same data.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.experiment.seed)
            replacement = self.defense.before_training(context)
        if replacement is not None:
            train_split = replacement
            train = Batches(train_split, self.device)
            context.train, context.n_train = train_split, len(train)
        self.train(net, train, context)
        records = self.evaluate(net, test)
        model_metrics, figures = self.evaluate_model(net, test)
        return RunResult(
            model_metrics=model_metrics,
            figures=figures,
            experiment=self.name,
            spec=self.spec,
            records=records,
            history=self.history,
            model=net,
            run_id=self.info.run_id,
            seed=self.experiment.seed,
            device=str(self.device),
            findings=list(self.findings),
        )


def run(
    name: str | None = None,
    *,
    registry: Sequence[str | Path] = (),
    device: str = "auto",
    tracking_uri: str | None = None,
    track: bool = True,
    resume: str | None = None,
    progress: bool = False,
    overrides: Sequence[tuple[str, Any]] = (),
    pm: PluginManager | None = None,
    **kwargs: Any,
) -> RunResult | RunGroup:
    """Run the experiment `name` (or resume tracked run `resume`); keyword arguments are dotted-key overrides.

    An experiment with `defenses` or `seeds` runs each defense (x each seed) as its own run and returns a RunGroup.
    """
    pm = pm or get_plugin_manager()
    loaded = load_registry(registry, pm=pm)
    all_overrides = [*overrides, *kwargs.items()]
    torch_device = resolve_device(device)
    checkpoint = None
    resumed_from = None
    if resume is not None:
        if not track:
            raise RunError("--resume needs tracking: the checkpoint is read from the tracked run")
        checkpoint = _fetch_checkpoint(pm, resume, tracking_uri)
        stored_name = checkpoint["experiment"]
        if name is not None and name != stored_name:
            raise RunError(f"--resume {resume}: that run is of experiment '{stored_name}', not '{name}'")
        name = stored_name
        spec = dict(checkpoint["spec"])
        for key, value in all_overrides:
            apply_override(spec, key, value)
        spec = loaded.resolve_inline_experiment(spec, source=f"run {resume}")
        if spec != loaded.resolve_inline_experiment(dict(checkpoint["spec"]), source=f"run {resume}"):
            resumed_from, resume = resume, None  # changed settings: a new tracked run that records them
    else:
        if name is None:
            raise RunError("name an experiment to run (advbayes list experiments shows them)")
        spec = loaded.resolve_experiment(name, all_overrides)
    variants = expand_variants(spec)
    preflight(name, [v for v in variants if v["seed"] == variants[0]["seed"]], loaded, torch_device)
    if len(variants) > 1 or spec.get("defenses") or spec.get("seeds"):
        results: list[RunResult] = []
        for variant in variants:
            peers = {  # sources for transfer attacks: the defenses of the same seed trained before this one
                r.spec["defense"]["name"]: r.model for r in results if r.spec["seed"] == variant["seed"]
            }
            results.append(
                _run_one(name, variant, loaded, pm, torch_device, track, tracking_uri, progress, None, None, peers)
            )
        return RunGroup(experiment=name, results=results)
    return _run_one(
        name, spec, loaded, pm, torch_device, track, tracking_uri, progress, resume, checkpoint, None, resumed_from
    )


def expand_variants(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One spec per (seed, defense), seeds outermost: what an experiment with `defenses` or `seeds` runs."""
    if not (spec.get("defenses") or spec.get("seeds")):
        return [dict(spec)]
    variants = []
    for seed in spec.get("seeds") or [spec["seed"]]:
        for defense in spec.get("defenses") or [spec["defense"]]:
            variant = {k: v for k, v in spec.items() if k not in ("defenses", "seeds")}
            variant.update(defense=defense, seed=seed, seeds=[])
            variants.append(variant)
    return variants


def _run_one(
    name: str,
    spec: dict[str, Any],
    registry: Registry,
    pm: PluginManager,
    device: torch.device,
    track: bool,
    tracking_uri: str | None,
    progress: bool,
    resume: str | None,
    checkpoint: Mapping[str, Any] | None,
    peers: Mapping[str, torch.nn.Module] | None = None,
    resumed_from: str | None = None,
) -> RunResult:
    """Train and evaluate one defense, reporting through the lifecycle hooks."""
    seed = int(spec["seed"])
    seed_everything(seed)
    if checkpoint is not None:
        _set_rng_state(checkpoint["rng"])
    info = RunInfo(
        experiment=name,
        spec=spec,
        seed=seed,
        device=str(device),
        plugins=plugin_versions(pm),
        track=track,
        tracking_uri=tracking_uri,
        resume_run_id=resume,
        resumed_from=resumed_from,
    )
    engine = Run(
        name, spec, registry=registry, device=device, info=info, progress=progress, checkpoint=checkpoint, peers=peers
    )
    try:  # a run_started that fails half-way (the run created, its artifacts not) still ends the run FAILED
        pm.hook.run_started(run=info)
        result = engine.execute()
    except KeyboardInterrupt as exc:
        pm.hook.run_finished(run=info, result=None, status="KILLED", error=exc)
        exc.advbayes_run_id = info.run_id  # type: ignore[attr-defined]  # for the CLI's message
        raise
    except BaseException as exc:
        pm.hook.run_finished(run=info, result=None, status="FAILED", error=exc)
        raise
    finally:
        shutil.rmtree(engine.workdir, ignore_errors=True)
    result.run_id, result.store = info.run_id, info.store
    for figures in pm.hook.run_figures(run=info, result=result):  # plugins' run-level figures, logged by tracking
        result.figures.update(figures or {})
    pm.hook.run_finished(run=info, result=result, status="FINISHED", error=None)
    return result


def _fetch_checkpoint(pm: PluginManager, run_id: str, tracking_uri: str | None) -> dict[str, Any]:
    destination = Path(tempfile.mkdtemp(prefix="advbayes-resume-"))
    try:
        path = pm.hook.load_checkpoint(run_id=run_id, tracking_uri=tracking_uri, destination=destination)
        if path is None:
            raise RunError(f"--resume {run_id}: no plugin could fetch a checkpoint (is tracking disabled?)")
        try:  # weights_only: tensors and plain containers only, so a tampered checkpoint cannot run code
            return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(
                f"--resume {run_id}: the checkpoint is not one advbayes wrote (only tensors and plain values are "
                f"loaded; {reason[:160]})"
            ) from None
    finally:
        shutil.rmtree(destination, ignore_errors=True)
