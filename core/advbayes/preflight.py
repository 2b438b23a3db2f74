"""Checks a run passes before any work: the device, the network on a dummy batch, memory for S x B, model sources.

Everything here is cheap (the network is first built on the meta device, which allocates nothing) and raises a
one-line RunError, so a run that cannot work fails before it trains, downloads or opens a tracking store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from advbayes.components import prepared_model
from advbayes.errors import AdvbayesError, RunError, error_text
from advbayes.posterior.optimizers import optimizer_problem

DEVICE_TYPES = ("cpu", "cuda")
TRAINING_COPIES = 4  # weights, gradients and two Adam moments per parameter


def resolve_device(requested: str) -> torch.device:
    """'auto' picks CUDA when available; anything but cpu, cuda or an existing cuda:N is an error before any work."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise RunError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type not in DEVICE_TYPES:
        raise RunError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RunError(f"--device {requested}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes free for the run: the GPU's free memory, or the least of the machine's available RAM, what the
    process's cgroups still allow (a container's memory.max) and its address-space limit (ulimit -v); None when
    none is known."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    limits = [limit for limit in (machine_memory(), cgroup_memory(), address_space_memory()) if limit is not None]
    return min(limits) if limits else None


def machine_memory() -> int | None:
    """MemAvailable of /proc/meminfo (else the free pages), in bytes."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) or unreadable: no limit here


def cgroup_memory(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes the process's memory cgroups still allow (limit - usage, the least over the cgroup and its parents),
    cgroup v2 (memory.max) or v1 (memory.limit_in_bytes); None without a limit."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    free: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":  # v2: one unified hierarchy
            base, limit_file, usage_file = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit_file, usage_file = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        folder = base / path.strip("/")
        while True:  # the cgroup and every parent up to the mount point: the tightest limit wins
            limit, usage = _read_bytes(folder / limit_file), _read_bytes(folder / usage_file)
            if limit is not None and limit < 2**60 and usage is not None:  # v1 writes "no limit" as ~2**63
                free.append(max(0, limit - usage))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(free) if free else None


def address_space_memory() -> int | None:
    """Bytes left under the process's address-space limit (RLIMIT_AS, ulimit -v): the limit minus its VmSize."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    try:
        with open("/proc/self/status") as handle:
            size = next((int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:")), 0)
    except OSError:
        size = 0
    return max(0, soft - size)


def gib(size: float) -> str:
    """Bytes as GiB text."""
    return f"{size / 2**30:.1f} GiB"


@contextmanager
def counting_outputs(model: nn.Module) -> Iterator[list[int]]:
    """Sum the bytes of every leaf module's tensor outputs in the block: the activations backward keeps, roughly.

    Output sizes depend on shapes only, so the count does not change with caches or the allocator's state.
    """
    total = [0]

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total[0] += sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(record) for m in model.modules() if not any(True for _ in m.children())]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


@attrs.frozen
class MemoryModel:
    """What one forward at S draws x B examples keeps for backward: the leaf modules' outputs, c0 + c_b B + c_s S +
    c_sb S B (fitted exactly on four tiny probes), plus one weight-sized draw per sample when the network is
    stochastic (an upper bound: Bayesian layers draw weight noise, dropout draws none)."""

    parameter_bytes: int
    coefficients: tuple[float, float, float, float]
    stochastic: bool

    def activations(self, samples: int, batch: int) -> float:
        """Estimated bytes one forward at (samples, batch) keeps."""
        c0, cb, cs, csb = self.coefficients
        noise = samples * self.parameter_bytes if self.stochastic else 0
        return max(0.0, c0 + cb * batch + cs * samples + csb * samples * batch) + noise


def probe_network(name: str, spec: Mapping[str, Any], registry: Any, device: torch.device) -> MemoryModel:
    """Build the experiment's network for its data set and run it on zeros: a network that cannot be built or does
    not answer [S, B, k] is an error naming model and data set; returns what the run's memory estimate needs."""
    dataset = registry.build("datasets", spec["dataset"])
    builder = registry.build("models", spec["model"])
    defense = registry.build("defenses", spec["defense"])
    shape, classes = tuple(dataset.input_shape), int(dataset.num_classes)
    where = (
        f"experiments.{name}: model '{spec['model']['name']}' with defense '{spec['defense']['name']}' on data set "
        f"'{spec['dataset']['name']}' (inputs {list(shape)}, {classes} classes)"
    )
    available = available_memory(device)
    try:  # on the meta device nothing is allocated: a network of 10**12 weights is refused, not built
        with torch.device("meta"):
            meta = prepared_model(dataset, builder, defense)
        weights = sum(t.numel() * t.element_size() for t in (*meta.parameters(), *meta.buffers()))
    except Exception:  # noqa: BLE001 - a builder that computes on tensors (.item()) cannot run on meta; the real build below reports any real error
        weights = None
    if weights is not None and available is not None and weights * TRAINING_COPIES > available:
        raise RunError(
            f"{where}: its {gib(weights)} of weights need {gib(weights * TRAINING_COPIES)} to train "
            "(weights, gradients, "
            f"optimizer state) but {device} has {gib(available)} free"
        )
    try:
        net = prepared_model(dataset, builder, defense).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - whatever the builder raises is the user's model not fitting the data
        raise RunError(f"{where}: the network cannot be built ({error_text(exc)})") from exc
    problem = optimizer_problem(registry.build("experiments", spec), defense, net)
    if problem:
        raise RunError(f"experiments.{name}: key 'optimizer': {problem}")
    sizes: dict[tuple[int, int], int] = {}
    stochastic = False
    for samples, batch in ((1, 1), (2, 1), (1, 2), (2, 2)):
        x = torch.zeros(batch, *shape, device=device)
        try:
            with torch.no_grad():
                net(x, samples=samples)  # a stochastic layer's first call at a size times its strategies: not counted
                with counting_outputs(net) as total:
                    logits = net(x, samples=samples)
        except Exception as exc:  # noqa: BLE001 - as above: the network does not run on this data set's inputs
            raise RunError(f"{where}: the network does not run on the data set's inputs ({error_text(exc)})") from exc
        if logits.dim() != 3 or logits.shape[1:] != (batch, classes) or logits.shape[0] not in (1, samples):
            raise RunError(
                f"{where}: forward(x, samples={samples}) on {batch} example(s) returned shape {list(logits.shape)}, "
                f"expected [{samples}, {batch}, {classes}] ([1, ...] for a deterministic network)"
            )
        stochastic = stochastic or logits.shape[0] > 1
        sizes[samples, batch] = total[0]
    # solve the bilinear model exactly on the four corners
    csb = sizes[2, 2] - sizes[1, 2] - sizes[2, 1] + sizes[1, 1]
    cs = sizes[2, 1] - sizes[1, 1] - csb
    cb = sizes[1, 2] - sizes[1, 1] - csb
    c0 = sizes[1, 1] - cs - cb - csb
    parameter_bytes = sum(t.numel() * t.element_size() for t in net.parameters())
    return MemoryModel(parameter_bytes, (float(c0), float(cb), float(cs), float(csb)), stochastic)


def check_memory(name: str, spec: Mapping[str, Any], registry: Any, memory: MemoryModel, device: torch.device) -> None:
    """Training (train_samples x batch_size) and each attack (S_A x eval_batch_size) must fit the free memory."""
    available = available_memory(device)
    if available is None:
        return
    defense = registry.build("defenses", spec["defense"])
    phases = [
        ("training", int(getattr(defense, "train_samples", 1)), int(spec["batch_size"]), "batch_size or train_samples")
    ]
    for attack in spec["attacks"]:
        for samples in spec.get("attack_samples") or [int(attack.get("samples", 1))]:
            phases.append(
                (f"attack '{attack['name']}'", int(samples), int(spec["eval_batch_size"]), "eval_batch_size or samples")
            )
    for phase, samples, batch, knob in phases:
        activations = memory.activations(samples, batch)
        need = activations + memory.parameter_bytes * TRAINING_COPIES
        if need > available:
            raise RunError(
                f"experiments.{name}: {phase} at {samples} draw(s) x {batch} examples needs an estimated {gib(need)} "
                f"({gib(activations)} of activations) but {device} has {gib(available)} free; lower {knob}"
            )


def check_model_sources(
    name: str,
    spec: Mapping[str, Any],
    registry: Any,
    trained_before: Sequence[str],
    load_run: Callable[[str], Any] | None = None,
) -> None:
    """Every model source a component names (transfer attacks, black-box metrics, offline defenses) is a defense
    trained earlier in the experiment, or run:<RUN_ID> of a tracked run whose model `load_run` loads (so an
    unknown id or a tampered model/entry.toml fails now, not after training)."""
    defense_name = spec["defense"]["name"]
    parts = [("defense", spec["defense"], "defenses")]
    parts += [("attack", entry, "attacks") for entry in spec["attacks"]]
    parts += [("metric", entry, "metrics") for entry in spec["metrics"]]
    for what, entry, kind in parts:
        available = (
            [*trained_before] if kind == "defenses" else [*trained_before, defense_name]
        )  # evaluation sees itself
        for source in registry.build(kind, entry).model_sources():
            if source.startswith("run:"):
                if load_run is not None:
                    try:
                        load_run(source[len("run:") :])
                    except AdvbayesError as exc:
                        raise RunError(f"experiments.{name}: {what} '{entry['name']}' uses source '{source}': {exc}")
                continue
            if source in available:
                continue
            listed = ", ".join(trained_before) or "none"
            raise RunError(
                f"experiments.{name}: {what} '{entry['name']}' uses source '{source}', which is not a defense trained "
                f"before '{defense_name}' (trained before it: {listed}); "
                "list it earlier in `defenses`, or give run:<RUN_ID>"
            )


def check_eps(name: str, spec: Mapping[str, Any], registry: Any) -> None:
    """Every L_inf radius an attack will use fits the data set's value range (eps=[8] meant 8/255)."""
    from advbayes.components import radius_problem

    value_range = registry.build("datasets", spec["dataset"]).value_range
    for entry in spec["attacks"]:
        attack = registry.build("attacks", entry)
        if not attack.uses_eps:
            continue
        for eps in spec["eps"] or [attack.eps]:
            problem = radius_problem(float(eps), attack.norm, value_range)
            if problem is not None:
                raise RunError(
                    f"experiments.{name}: attack '{entry['name']}' on data set '{spec['dataset']['name']}': {problem}; "
                    "TOML has no arithmetic, so write the decimal"
                )


def check_attack_inputs(name: str, spec: Mapping[str, Any], registry: Any) -> None:
    """Every attack can run on the data set's inputs (their shape for image-only attacks, their value range) and
    number of classes."""
    dataset = registry.build("datasets", spec["dataset"])
    value_range = tuple(float(v) for v in dataset.value_range)

    def build_attack(entry: Any) -> Any:
        return registry.build_attack(entry, where=("run", f"experiments.{name}", "attack"), value_range=value_range)

    for entry in spec["attacks"]:
        attack = build_attack(entry)
        problem = attack.input_problem(tuple(dataset.input_shape), value_range, build_attack)
        problem = problem or attack.classes_problem(int(dataset.num_classes), build_attack)
        if problem is not None:
            raise RunError(
                f"experiments.{name}: attack '{entry['name']}' cannot run on data set '{spec['dataset']['name']}': "
                f"{problem}"
            )


def preflight(
    name: str,
    variants: Sequence[Mapping[str, Any]],
    registry: Any,
    device: torch.device,
    load_run: Callable[[str], Any] | None = None,
) -> None:
    """Every check above for each defense of the run (in the order they train), before any work; `load_run`
    loads a tracked run's model (run:<RUN_ID> sources)."""
    probed: dict[str, MemoryModel] = {}
    trained: list[str] = []
    loaded: set[str] = set()

    def load_once(run_id: str) -> None:  # the variants of a run share their sources: each is loaded once
        if load_run is not None and run_id not in loaded:
            load_run(run_id)
            loaded.add(run_id)

    if variants:  # the variants differ in defense and seed only: one check of eps and inputs serves them all
        check_eps(name, variants[0], registry)
        check_attack_inputs(name, variants[0], registry)
    for spec in variants:
        defense = spec["defense"]["name"]
        check_model_sources(name, spec, registry, trained, load_once)
        if defense not in probed:
            probed[defense] = probe_network(name, spec, registry, device)
        check_memory(name, spec, registry, probed[defense], device)
        trained.append(defense)
