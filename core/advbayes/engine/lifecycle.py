"""A run's lifecycle: checks before any work, the variants of an experiment (defenses x seeds), the hooks that
report each run (started, finished, killed, failed), resuming from a tracked checkpoint."""

from __future__ import annotations

import pickle
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from advbayes.batches import Batches
from advbayes.checks import warn
from advbayes.components import TrainContext, prepared_model
from advbayes.engine.building import RunParts, tracked_model
from advbayes.engine.checkpoints import Checkpoints, set_rng_state
from advbayes.engine.distributed import SINGLE, Distributed, join, leave, seed_draws, shard
from advbayes.engine.evaluation import Evaluator, check_attacks_fit
from advbayes.engine.training import Trainer
from advbayes.errors import RunError
from advbayes.plugins import PluginManager, get_plugin_manager
from advbayes.posterior import convergence_findings, sampler_finding
from advbayes.preflight import preflight, resolve_device
from advbayes.registry import Registry, load_registry
from advbayes.results import RunGroup, RunInfo, RunResult
from advbayes.stochastic.draw_state import load_draw_states


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plugin_versions(pm: PluginManager) -> dict[str, str]:
    """name -> version of every loaded plugin."""
    return {name: info.version for name, info in sorted(pm.info.items())}


class Run:
    """One experiment run: its parts (building.py), a trainer (training.py) and an evaluator (evaluation.py) that
    share its checkpoints (checkpoints.py), put together by execute()."""

    def __init__(self, parts: RunParts) -> None:
        self.parts = parts
        self.checkpoints = Checkpoints(self.parts)
        self.trainer = Trainer(self.parts, self.checkpoints)
        self.evaluator = Evaluator(self.parts, self.checkpoints, self.trainer.history)

    def execute(self) -> RunResult:
        """Build data and network, train, evaluate; returns the result (hooks report it)."""
        parts, trainer, evaluator = self.parts, self.trainer, self.evaluator
        train_split = parts.dataset.data("train")
        test_split = parts.dataset.data("test")
        train = Batches(train_split, parts.device)
        test = Batches(shard(test_split, parts.place), parts.device)  # each rank evaluates its share
        net = prepared_model(parts.dataset, parts.model_builder, parts.defense).to(parts.device)
        if parts.checkpoint is not None:
            net.load_state_dict(parts.checkpoint["model"])
            load_draw_states(net, parts.checkpoint["rng"].get("draws", {}))  # its draws go on where they stopped
        seed_draws(parts.experiment.seed, parts.place)
        check_attacks_fit(self.parts, net, test)
        context = TrainContext(
            dataset=parts.dataset,
            train=train_split,
            device=parts.device,
            n_train=len(train),
            seed=parts.experiment.seed,
            build_attack=parts.build_attack,
            models=parts.peers,
            load_tracked_model=parts.load_tracked_model,
            build_network=lambda: parts.build_network().to(parts.device),
            fit=lambda model, epochs: trainer.fit(model, train, epochs),
            progress=parts.progress,
        )
        # Its own seeded random state: the main training's stream is the same with or without it, and a resumed
        # run recomputes exactly the same data.
        with torch.random.fork_rng(devices=[parts.device] if parts.device.type == "cuda" else []):
            torch.manual_seed(parts.experiment.seed)
            replacement = parts.defense.before_training(context)
        if replacement is not None:
            train_split = replacement
            train = Batches(train_split, parts.device)
            context.train, context.n_train = train_split, len(train)
        trainer.train(net, train, context)
        trained_metrics = trainer.finish_training(net, context)
        verdict = trainer.verdict()
        posterior_findings = [] if verdict is None else convergence_findings(parts.label, verdict)
        if trained_metrics.get("posterior/converged") == 0.0:  # the defense's own verdict (a sampler's R-hat)
            posterior_findings.append(sampler_finding(parts.label, parts.spec["defense"]["name"], trained_metrics))
        if parts.place.leader:  # said once, before the evaluation's own checks
            warn(posterior_findings)
        records = evaluator.evaluate(net, test)
        model_metrics, figures = evaluator.evaluate_model(net, test)
        model_metrics.update(trained_metrics)
        if verdict is not None:
            model_metrics.update(verdict.metrics())
        return RunResult(
            model_metrics=model_metrics,
            figures=figures,
            experiment=parts.name,
            spec=parts.spec,
            records=records,
            history=trainer.history,
            model=net,
            run_id=parts.info.run_id,
            seed=parts.experiment.seed,
            device=str(parts.device),
            findings=[*posterior_findings, *evaluator.findings],
        )


@attrs.frozen
class PreparedRun:
    """An experiment resolved, expanded and checked before any work: what `run` executes and `--dry-run` shows."""

    name: str
    spec: dict[str, Any]
    variants: list[dict[str, Any]]
    registry: Registry
    device: torch.device
    resume: str | None = None
    checkpoint: dict[str, Any] | None = None
    resumed_from: str | None = None


def prepare_run(
    name: str | None = None,
    *,
    registry: Sequence[str | Path] = (),
    device: str = "auto",
    tracking_uri: str | None = None,
    track: bool = True,
    resume: str | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    pm: PluginManager | None = None,
    spec: Mapping[str, Any] | None = None,
) -> PreparedRun:
    """Resolve the experiment (or the tracked run to resume, or the resolved table `spec` of experiment `name`),
    expand its variants and run every pre-run check (network probes, memory, model sources); nothing is trained or
    written."""
    pm = pm or get_plugin_manager()
    loaded = load_registry(registry, pm=pm)
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
        spec = loaded.with_overrides(dict(checkpoint["spec"]), overrides, source=f"run {resume}")
        spec = loaded.resolve_inline_experiment(spec, source=f"run {resume}")
        if spec != loaded.resolve_inline_experiment(dict(checkpoint["spec"]), source=f"run {resume}"):
            resumed_from, resume = resume, None  # changed settings: a new tracked run that records them
            checkpoint = {k: v for k, v in checkpoint.items() if k != "evaluated"}  # evaluations of other settings
    elif spec is not None:  # a sweep's worker: the driver resolved it, the worker needs no registry file
        if name is None:
            raise RunError("a resolved experiment table needs the experiment's name")
        spec = loaded.with_overrides(dict(spec), overrides, source=f"experiment {name}")
        spec = loaded.resolve_inline_experiment(spec, source=f"experiment {name}")
    else:
        if name is None:
            raise RunError("name an experiment to run (advbayes list experiments shows them)")
        spec = loaded.resolve_experiment(name, overrides)
    variants = expand_variants(spec)
    preflight(
        name,
        [v for v in variants if v["seed"] == variants[0]["seed"]],
        loaded,
        torch_device,
        load_run=lambda run_id: tracked_model(pm, run_id, tracking_uri, torch.device("cpu")),
    )
    return PreparedRun(name, spec, variants, loaded, torch_device, resume, checkpoint, resumed_from)


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
    spec: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    finished_runs: Mapping[str, str] | None = None,
    continued_runs: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> RunResult | RunGroup:
    """Run the experiment `name` (or resume tracked run `resume`, or run the resolved table `spec`); keyword
    arguments are dotted-key overrides; `tags` are added to every tracked run.

    An experiment with `defenses` or `seeds` runs each defense (x each seed) as its own run and returns a RunGroup.
    A sweep's --resume gives, per defense name, the tracked run that FINISHED earlier (`finished_runs`: read back,
    not run again) or the one to continue from its checkpoint (`continued_runs`).
    """
    pm = pm or get_plugin_manager()
    place, device = join(device)  # launched by torchrun: this rank's place, its device
    try:
        prepared = prepare_run(
            name,
            registry=registry,
            device=device,
            tracking_uri=tracking_uri,
            track=track,
            resume=resume,
            overrides=[*overrides, *kwargs.items()],
            pm=pm,
            spec=spec,
        )
        extra_tags = dict(tags or {})
        if place.active:
            extra_tags["advbayes.processes"] = str(place.world)
        progress = progress and place.leader
        track_here = track and place.leader  # rank 0 alone tracks
        name, spec, loaded, torch_device = prepared.name, prepared.spec, prepared.registry, prepared.device

        def one(
            variant: dict[str, Any],
            resume_id: str | None,
            checkpoint: Mapping[str, Any] | None,
            peers: Mapping[str, torch.nn.Module] | None,
            resumed_from: str | None,
        ) -> RunResult:
            return _run_one(
                name,
                variant,
                loaded,
                pm,
                torch_device,
                track_here,
                tracking_uri,
                progress,
                resume_id,
                checkpoint,
                peers,
                resumed_from,
                tags=extra_tags,
                place=place,
            )

        finished, continued = dict(finished_runs or {}), dict(continued_runs or {})

        def earlier_or_new(variant: dict[str, Any], peers: Mapping[str, torch.nn.Module] | None) -> RunResult:
            defense = variant["defense"]["name"]
            if defense in finished:  # read back from its checkpoint: its model is a peer of the defenses after it
                return replay(
                    finished[defense], registry=registry, device=str(torch_device), tracking_uri=tracking_uri, pm=pm
                )
            if defense in continued:
                checkpoint = continued_checkpoint(pm, continued[defense], tracking_uri, variant)
                return one(variant, continued[defense], checkpoint, peers, None)
            return one(variant, None, None, peers, None)

        if len(prepared.variants) > 1 or spec.get("defenses") or spec.get("seeds"):
            results: list[RunResult] = []
            for index, variant in enumerate(prepared.variants):
                peers = {  # sources for transfer attacks: the defenses of the same seed trained before this one
                    r.spec["defense"]["name"]: r.model for r in results if r.spec["seed"] == variant["seed"]
                }
                try:
                    results.append(earlier_or_new(variant, peers))
                except BaseException as exc:  # the CLI says how to run the variants that did not start
                    later = prepared.variants[index + 1 :]
                    exc.advbayes_not_started = [(v["seed"], v["defense"]["name"]) for v in later]  # type: ignore[attr-defined]
                    exc.advbayes_seed = variant["seed"]  # type: ignore[attr-defined]
                    raise
            return RunGroup(experiment=name, results=results)
        if prepared.resume is None and prepared.resumed_from is None:
            return earlier_or_new(spec, None)
        return one(spec, prepared.resume, prepared.checkpoint, None, prepared.resumed_from)
    finally:
        leave(place)


def replay(
    run_id: str,
    *,
    registry: Sequence[str | Path] = (),
    device: str = "auto",
    tracking_uri: str | None = None,
    pm: PluginManager | None = None,
) -> RunResult:
    """The result of the tracked run `run_id`, finished earlier, rebuilt from its last checkpoint: nothing is trained,
    attacked or written (its defense's before_training and the model's own metrics are computed again)."""
    pm = pm or get_plugin_manager()
    prepared = prepare_run(resume=run_id, registry=registry, device=device, tracking_uri=tracking_uri, pm=pm)
    checkpoint = prepared.checkpoint
    assert checkpoint is not None and prepared.name is not None
    info = RunInfo(
        experiment=prepared.name,
        spec=prepared.spec,
        seed=int(prepared.spec["seed"]),
        device=str(prepared.device),
        plugins=plugin_versions(pm),
        track=False,  # and no lifecycle hook is called: the run keeps what it recorded when it finished
        tracking_uri=tracking_uri,
    )
    engine = _seeded_engine(info, prepared.registry, prepared.device, False, checkpoint)
    try:
        result = engine.execute()
    finally:
        shutil.rmtree(engine.checkpoints.workdir, ignore_errors=True)
    finished = {entry["label"] for entry in checkpoint.get("evaluated", [])}
    if len(result.history) != len(checkpoint["history"]) or {r.attack_label for r in result.records} - finished:
        raise RunError(  # the checkpoint of a run that finished holds every epoch and attack; this one did not
            f"run {run_id}: its checkpoint is not the state it finished in ({len(checkpoint['history'])} epochs, "
            f"attacks {sorted(finished)}): it cannot be read back without training or attacking again"
        )
    result.run_id = run_id
    return result


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
    *,
    tags: Mapping[str, str] | None = None,
    place: Distributed = SINGLE,
) -> RunResult:
    """Train and evaluate one defense, reporting through the lifecycle hooks."""
    info = RunInfo(
        experiment=name,
        spec=spec,
        seed=int(spec["seed"]),
        device=str(device),
        plugins=plugin_versions(pm),
        track=track,
        tracking_uri=tracking_uri,
        resume_run_id=resume,
        resumed_from=resumed_from,
        tags=dict(tags or {}),
    )
    engine = _seeded_engine(info, registry, device, progress, checkpoint, peers, place)
    try:  # a run_started that fails half-way (the run created, its artifacts not) still ends the run FAILED
        pm.hook.run_started(run=info)
        result = engine.execute()
    except KeyboardInterrupt as exc:
        pm.hook.run_finished(run=info, result=None, status="KILLED", error=exc)
        exc.advbayes_run_id = info.run_id  # type: ignore[attr-defined]  # for the CLI's message
        exc.advbayes_checkpointed = engine.checkpoints.last_state is not None  # type: ignore[attr-defined]
        exc.advbayes_records = list(engine.evaluator.records_so_far)  # type: ignore[attr-defined]  # what finished
        raise
    except BaseException as exc:
        pm.hook.run_finished(run=info, result=None, status="FAILED", error=exc)
        exc.advbayes_run_id = info.run_id  # type: ignore[attr-defined]  # a sweep lists the failed run's id
        raise
    finally:
        shutil.rmtree(engine.checkpoints.workdir, ignore_errors=True)
    result.run_id, result.store = info.run_id, info.store
    for figures in pm.hook.run_figures(run=info, result=result):  # plugins' run-level figures, logged by tracking
        result.figures.update(figures or {})
    pm.hook.run_finished(run=info, result=result, status="FINISHED", error=None)
    return result


def _seeded_engine(
    info: RunInfo,
    registry: Registry,
    device: torch.device,
    progress: bool,
    checkpoint: Mapping[str, Any] | None,
    peers: Mapping[str, torch.nn.Module] | None = None,
    place: Distributed = SINGLE,
) -> Run:
    """The engine of the run `info`, with the global random state seeded, or restored from `checkpoint`, as a run
    starts (the network is built after this, from that state)."""
    seed_everything(info.seed)
    if checkpoint is not None:
        set_rng_state(checkpoint["rng"])
    parts = RunParts(
        info.experiment, info.spec, registry=registry, device=device, info=info, progress=progress,
        checkpoint=checkpoint, peers=peers, place=place,
    )  # fmt: skip
    return Run(parts)


def continued_checkpoint(
    pm: PluginManager, run_id: str, tracking_uri: str | None, variant: Mapping[str, Any]
) -> dict[str, Any]:
    """The checkpoint of the tracked run `run_id`, which a sweep's --resume continues as the run of `variant`: it must
    have been written with the same settings (a sweep reruns its own plan)."""
    checkpoint = _fetch_checkpoint(pm, run_id, tracking_uri)
    stored = checkpoint["spec"]
    differ = sorted(k for k in {*stored, *variant} if stored.get(k) != variant.get(k))
    if differ:
        raise RunError(
            f"run {run_id}: its checkpoint was written with other settings than this run's (keys {', '.join(differ)}); "
            "it cannot be continued as this run (a sweep run again without --resume starts it over)"
        )
    return checkpoint


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
