"""How a stochastic layer evaluates S draws: per-draw dense kernels ("loop") or one batched kernel ("batched").

The choice is made by measurement, per layer signature and device, the first time a signature is seen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

STRATEGIES = ("auto", "loop", "batched")
STRATEGY_ENV = "ADVBAYES_STRATEGY"
MAX_LOOP = 64
_CHOSEN: dict[tuple[Any, ...], str] = {}
_TIMINGS: dict[tuple[Any, ...], dict[str, float]] = {}


def default_strategy() -> str:
    """ADVBAYES_STRATEGY if set (auto, loop or batched), else auto."""
    value = os.environ.get(STRATEGY_ENV, "auto")
    if value not in STRATEGIES:
        raise ValueError(f"{STRATEGY_ENV}: expected one of {', '.join(STRATEGIES)}, got {value!r}")
    return value


def size_bucket(size: int) -> int:
    """The power of two at or above `size`: timings are keyed by it, so an attack that shrinks its batch to the
    still-robust examples (APGD, AutoAttack's worst case) reuses the measurement of a nearby size instead of
    measuring every new size again (seconds each on a CPU)."""
    return 1 << max(size - 1, 0).bit_length()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_candidate(run: Callable[[], torch.Tensor], inputs: list[torch.Tensor], device: torch.device) -> float:
    """Median seconds of forward (and backward, when gradients are on) over a few repetitions."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    times = []
    for repeat in range(4):
        synchronize(device)
        started = time.perf_counter()
        out = run()
        if grad:
            torch.autograd.grad(out.sum(), [t for t in inputs if t.requires_grad], allow_unused=True)
        synchronize(device)
        if repeat:  # the first call warms up caches and kernels
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


CHUNK_CHOICES: dict[tuple[Any, ...], int] = {}  # draws per pass, by model architecture and call signature


def choose(
    key: tuple[Any, ...],
    candidates: dict[str, Callable[[], torch.Tensor]],
    inputs: list[torch.Tensor],
    device: torch.device,
) -> str:
    """The faster candidate for this signature, measured once (on detached copies) and remembered."""
    if key in _CHOSEN:
        return _CHOSEN[key]
    timings = {name: _time_candidate(run, inputs, device) for name, run in candidates.items()}
    _TIMINGS[key] = timings
    _CHOSEN[key] = min(timings, key=timings.__getitem__)
    return _CHOSEN[key]


def cached(key: tuple[Any, ...]) -> str | None:
    """The strategy already measured for this signature, if any."""
    return _CHOSEN.get(key)


def chosen_strategies() -> dict[tuple[Any, ...], tuple[str, dict[str, float]]]:
    """Every signature measured so far with its winner and timings (for benchmarks and diagnostics)."""
    return {key: (name, _TIMINGS.get(key, {})) for key, name in _CHOSEN.items()}


def forget_choices() -> None:
    """Forget measured choices (the next call of each signature measures again)."""
    _CHOSEN.clear()
    _TIMINGS.clear()
    CHUNK_CHOICES.clear()
