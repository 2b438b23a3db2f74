"""How a stochastic layer evaluates S draws: per-draw dense kernels ("loop") or one batched kernel ("batched").

The choice is made by measurement, per layer signature and device, the first time a signature is seen.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

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


MARGIN = 0.05  # a candidate beats the reference (the per-draw loop) only when faster by more than this
ROUNDS = 3  # interleaved timing rounds after one warm-up call of each candidate
# A warm-up call this long gets one timed round: timer noise is small against it, and each round repeats the
# caller's work (races on a Bayesian mnist-cnn with 20 draws took 203 of a 218 s evaluation on a 2-core CPU).
LONG_CALL = 0.5
OUT_OF_RUNNING = 2.0  # an online candidate this many times slower than another is measured no more
RECHECK_AT = frozenset({64, 1024, 16384})  # calls of a signature after which its choice is measured again
_CALLS: dict[tuple[Any, ...], int] = {}


def race(
    candidates: dict[Any, Callable[[], object]], device: torch.device, *, reference: Any
) -> tuple[Any, dict[Any, float]]:
    """The fastest candidate and every candidate's best time, measured in interleaved rounds.

    Each round times every candidate once, in alternating order, and each candidate keeps its best round: a burst
    of load from another process slows whichever candidate it hits in one round, not the verdict (timing one
    candidate after the other let a busy spell decide: an mlp ran at 0.27x the loop that way). One round only when
    a warm-up call took LONG_CALL or more. Anything but `reference` must beat it by MARGIN, so a near tie keeps the
    reference, the naive loop it replaces.
    """
    names = list(candidates)
    # warm-up: caches, kernels, and nested measurements of the layers
    slowest = max(call_seconds(candidates[name], device) for name in names)
    best = dict.fromkeys(names, math.inf)
    for round_ in range(ROUNDS if slowest < LONG_CALL else 1):
        for name in names if round_ % 2 == 0 else names[::-1]:
            best[name] = min(best[name], call_seconds(candidates[name], device))
    return pick(best, reference), best


def call_seconds(call: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - started


def pick(best: dict[Any, float], reference: Any) -> Any:
    """The fastest candidate, unless it beats `reference` by less than MARGIN (then the reference)."""
    winner = min(best, key=best.__getitem__)
    if reference in best and winner != reference and best[winner] > best[reference] * (1 - MARGIN):
        winner = reference
    return winner


class OnlineChoice:
    """A choice among candidates that compute the same result, measured on the caller's real calls.

    Until it has decided, each call runs the candidate still in the running that was timed least so far (in
    alternating order) and keeps the time; after one warm-up and ROUNDS timed calls of each (when a call takes
    LONG_CALL or more: one call each, the first counted as timed), the fastest by `pick` serves every call. A
    candidate whose best timed call is over OUT_OF_RUNNING times another's leaves the running at once: its calls
    are the measurement's whole cost. It measures again after RECHECK_AT calls. No call is spent on measurement
    alone.
    """

    def __init__(self, candidates: list[Any], reference: Any) -> None:
        self.candidates, self.reference = candidates, reference
        self.calls = 0
        self._restart()

    def _restart(self) -> None:
        self.times: dict[Any, list[float]] = {c: [] for c in self.candidates}
        self.running = list(self.candidates)
        self.rounds = ROUNDS
        self.winner: Any = None

    def next(self) -> Any:
        """The candidate the next call should run."""
        self.calls += 1
        if self.winner is not None and self.calls in RECHECK_AT:
            self._restart()
        if self.winner is not None:
            return self.winner
        fewest = min(len(self.times[c]) for c in self.running)
        order = self.running if fewest % 2 == 0 else self.running[::-1]
        return next(c for c in order if len(self.times[c]) == fewest)

    def record(self, candidate: Any, seconds: float, work: int = 1) -> None:
        """Keep a measured call's time per unit of `work` (warm-up calls are dropped); decide once every candidate
        in the running has its rounds."""
        if self.winner is not None or candidate not in self.running:
            return
        per_work = seconds / max(work, 1)
        self.times[candidate].append(per_work)
        if seconds >= LONG_CALL:  # timer noise and one-time costs are small against a call this long:
            self.rounds = 1  # one timed call each decides,
            if len(self.times[candidate]) == 1:  # and a first call is its own timed call (no warm-up to discard)
                self.times[candidate].append(per_work)
        best = self.timings()
        fastest = min(best.values(), default=math.inf)
        self.running = [c for c in self.running if best.get(c, 0.0) <= OUT_OF_RUNNING * fastest]
        if all(len(self.times[c]) > self.rounds for c in self.running):
            self.winner = pick({c: best[c] for c in self.running}, self.reference)

    def drop(self, candidate: Any) -> None:
        """Take a candidate out (it failed, e.g. out of memory) and measure the rest again."""
        self.candidates = [c for c in self.candidates if c != candidate]
        self._restart()

    def timings(self) -> dict[Any, float]:
        """Each candidate's best measured time so far (warm-up excluded)."""
        return {c: min(t[1:]) for c, t in self.times.items() if len(t) > 1}


def run_chosen(choice: OnlineChoice, device: torch.device, call: Callable[[Any], T], work: int = 1) -> T:
    """`call(candidate)` for the choice's next candidate, timed into the choice: the measurement is the real call.
    Times are per unit of `work` (e.g. examples), so calls on a bucket's smaller last batch compare fairly. A
    candidate other than the reference that runs out of CUDA memory is dropped and the call made again."""
    while True:
        candidate = choice.next()
        if choice.winner is not None:  # decided: no timing, and no synchronization stalling a GPU's queue
            return call(candidate)
        synchronize(device)
        started = time.perf_counter()
        try:
            result = call(candidate)
        except torch.OutOfMemoryError:
            if candidate == choice.reference or device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            choice.drop(candidate)  # this candidate does not fit: no longer one
            continue
        synchronize(device)
        choice.record(candidate, time.perf_counter() - started, work)
        return result


def due(key: tuple[Any, ...], chosen: dict[tuple[Any, ...], Any]) -> bool:
    """Count a call of this signature; True when it has no choice yet or its choice is due to be measured again
    (after RECHECK_AT calls: a choice made while the machine was busy does not stick for the whole run)."""
    calls = _CALLS[key] = _CALLS.get(key, 0) + 1
    return key not in chosen or calls in RECHECK_AT


def _with_backward(run: Callable[[], torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], object]:
    """The candidate's forward, and its backward when gradients are on (what the caller will pay)."""
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        return run
    targets = [t for t in inputs if t.requires_grad]
    return lambda: torch.autograd.grad(run().sum(), targets, allow_unused=True)


CHUNK_CHOICES: dict[tuple[Any, ...], int] = {}  # draws per pass of a forward under autograd, by signature
FORWARD_CHOICES: dict[tuple[Any, ...], OnlineChoice] = {}  # draws per pass of a forward without autograd
LAYER_CHOICES: dict[tuple[Any, ...], OnlineChoice] = {}  # a layer's loop or batched kernels, without autograd


def layer_choice(key: tuple[Any, ...]) -> OnlineChoice:
    """The loop-or-batched choice of a layer signature called without autograd, measured on its real calls (no
    backward follows, so the call is the whole cost; a race cost 8 calls per signature: 4 of a 9.5 s evaluation)."""
    if key not in LAYER_CHOICES:
        LAYER_CHOICES[key] = OnlineChoice(["loop", "batched"], reference="loop")
    return LAYER_CHOICES[key]


GRADIENT_CHOICES: dict[tuple[Any, ...], OnlineChoice] = {}  # draws per forward-backward pass of an expected loss


def choose(
    key: tuple[Any, ...],
    candidates: dict[str, Callable[[], torch.Tensor]],
    inputs: list[torch.Tensor],
    device: torch.device,
) -> str:
    """The faster candidate for this signature, measured (on detached copies) and remembered until a re-check."""
    timed = {name: _with_backward(run, inputs) for name, run in candidates.items()}
    _CHOSEN[key], _TIMINGS[key] = race(timed, device, reference="loop")
    return _CHOSEN[key]


def cached(key: tuple[Any, ...]) -> str | None:
    """The strategy measured for this signature, or None when it has none or is due to be measured again."""
    return None if due(key, _CHOSEN) else _CHOSEN[key]


def chosen_strategies() -> dict[tuple[Any, ...], tuple[str, dict[str, float]]]:
    """Every signature measured so far with its winner and timings (for benchmarks and diagnostics)."""
    chosen = {key: (name, _TIMINGS.get(key, {})) for key, name in _CHOSEN.items()}
    for key, choice in LAYER_CHOICES.items():
        if choice.winner is not None:
            chosen[key + ("no autograd",)] = (choice.winner, choice.timings())
    return chosen


def forget_choices() -> None:
    """Forget measured choices (the next call of each signature measures again)."""
    _CHOSEN.clear()
    _TIMINGS.clear()
    _CALLS.clear()
    CHUNK_CHOICES.clear()
    FORWARD_CHOICES.clear()
    LAYER_CHOICES.clear()
    GRADIENT_CHOICES.clear()
