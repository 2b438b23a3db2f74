"""Shared pieces of the benchmark scripts: building a registered network and timing a callable."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import advbayes
from advbayes.registry import load_registry
from advbayes.stochastic.strategy import synchronize


def build_network(kind: str) -> torch.nn.Module:
    """A freshly initialized mlp (2 x 128) or mnist-cnn for 1 x 28 x 28 inputs and 10 classes."""
    registry = load_registry()
    spec = {"use": "mlp", "widths": [128, 128]} if kind == "mlp" else {"use": "mnist-cnn"}
    resolved = registry.resolve("models", spec, where=("benchmark", kind, "model"))
    return registry.build("models", resolved).build((1, 28, 28), 10)


def trained_mnist_cnn(batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """mnist-cnn trained 2 epochs on mnist-5k (seconds; a trained network is confident, as a defense would be) and
    the first `batch` test digits: both implementations then have every correctly classified example to attack."""
    result = advbayes.run("quickstart", track=False, attacks=["none"], eps=[0.0], **{"dataset.n_test": batch})
    return (result.model.net.eval(), *mnist_test_digits(batch))


def mnist_test_digits(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` mnist-5k test digits and their labels."""
    dataset = load_registry().build("datasets", {"name": "mnist-5k", "use": "mnist-5k", "n_test": count})
    x, y = dataset.data("test").tensors
    return x, y


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call (synchronizing CUDA around each)."""
    run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def timed_together(runs: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each run over `repeats` rounds, after one warm-up call each; every round times each run
    once, in alternating order, so a spell of load from elsewhere hits all of them alike instead of one."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        for name in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            synchronize(device)
            started = time.perf_counter()
            runs[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


class OneDraw(torch.nn.Module):
    """A stochastic model as torchattacks and the official AutoAttack see it: each call returns one draw's logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, samples=1)[0]


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


@contextmanager
def cpu_hog(processes: int) -> Iterator[None]:
    """`processes` busy-looping processes for the block: the load under which a measured choice must still hold."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=5)
