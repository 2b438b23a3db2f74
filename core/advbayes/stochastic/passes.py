"""How a StochasticModel splits S draws into passes: the pass size that measures fastest for a forward, and the
expected-loss gradient by passes of fewer draws with one backward each (the model calls these; nothing else does)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from advbayes.stochastic.layers import StochasticLayer
from advbayes.stochastic.strategy import race

if TYPE_CHECKING:
    from advbayes.stochastic.model import StochasticModel

CHUNK_TARGET = 256  # besides all draws and one draw per pass, auto tries passes of about this many examples
MAX_PASSES = 64  # and never more passes than this (1,000 draws are not timed as 1,000 passes)


def pass_sizes(samples: int, batch: int) -> set[int]:
    """Candidate draws per pass: all S in one, about CHUNK_TARGET examples per pass, and the most passes allowed."""
    fewest = math.ceil(samples / MAX_PASSES)  # never more than MAX_PASSES passes (1,000 draws are not 1,000 passes)
    per_target = max(1, min(samples, CHUNK_TARGET // max(batch, 1)))
    return {samples, max(per_target, fewest), max(1, fewest)}


def measure_pass_size(
    model: StochasticModel, inputs: torch.Tensor, layers: Sequence[StochasticLayer], samples: int
) -> int:
    """Time whole passes (forward and backward: the model measures this way only under autograd) for a few chunk
    sizes; no side effects.

    One pass over S x B examples can be slower than S passes over B on a CPU (cache); a GPU favours one.
    """
    batch = inputs.shape[1]
    candidates = sorted(pass_sizes(samples, batch), reverse=True)
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    probe = inputs.detach().requires_grad_(inputs.requires_grad)
    weights = [p for p in model.parameters() if p.requires_grad]
    targets = [probe] if probe.requires_grad else weights  # an attack differentiates the input; training, weights
    runs: dict[int, Callable[[], object]] = {}
    for chunk in candidates:

        def run(chunk: int = chunk) -> None:
            out = model.run_in_passes(probe, layers, samples, chunk)
            if targets:
                torch.autograd.grad(out.float().sum(), targets, allow_unused=True)

        runs[chunk] = run
    timings: dict[int, float] = {}
    winner = samples
    try:
        while runs and not timings:
            try:  # interleaved rounds; the most passes (closest to the per-draw loop) wins a near tie
                winner, timings = race(runs, inputs.device, reference=min(runs))
            except torch.OutOfMemoryError:  # the largest chunk does not fit: not a candidate
                if inputs.device.type == "cuda":
                    torch.cuda.empty_cache()
                runs.pop(max(runs))
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
    if not timings:
        raise torch.OutOfMemoryError(f"no chunk of {samples} draws x batch {batch} fits in memory")
    model.chunk_timings[(samples, tuple(inputs.shape))] = timings
    return int(winner)


def loss_gradient_in_passes(
    model: StochasticModel,
    inputs: torch.Tensor,
    layers: Sequence[StochasticLayer],
    samples: int,
    size: int,
    draw_losses: Callable[[torch.Tensor], torch.Tensor],
    draw: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean loss over S draws, its gradient and logits, by passes of `size` draws with one backward each."""
    if size >= samples:  # one call (drawing, chunking and BatchNorm statistics as forward does them)
        probe = inputs.clone().requires_grad_(True)
        with torch.enable_grad():
            if draw:
                logits = model(probe[0], samples)
            else:  # the draws made by the caller, in one pass (the other candidates are the smaller passes)
                chunk = samples if model.max_batch is None else model._chunk_size(probe, layers, samples)
                logits = model.run_in_passes(probe, layers, samples, chunk)
            losses = draw_losses(logits)
            (gradient,) = torch.autograd.grad(losses.sum(), probe)
        return losses.detach(), gradient[0], logits.detach()
    total_loss, total_gradient, parts = None, None, []
    for start in range(0, samples, size):
        stop = min(samples, start + size)
        probe = inputs.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_draws(probe, layers, start, stop)
            losses = draw_losses(logits) * ((stop - start) / samples)  # weighted: the parts add to the mean
            (gradient,) = torch.autograd.grad(losses.sum(), probe)
        total_loss = losses.detach() if total_loss is None else total_loss + losses.detach()
        total_gradient = gradient if total_gradient is None else total_gradient + gradient
        parts.append(logits.detach())
    assert total_loss is not None and total_gradient is not None
    return total_loss, total_gradient[0], torch.cat(parts)
