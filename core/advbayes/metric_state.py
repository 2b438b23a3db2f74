"""The state a metric accumulates over evaluation batches, with torchmetrics' add_state interface, reduced over
processes when the evaluation is sharded.

Written here instead of subclassing torchmetrics.Metric: importing torchmetrics imports every one of its domains
(audio through scipy.signal, images through torchvision and torch._dynamo), 3.4 s of a 7 s `advbayes run moons
--no-track` on 2 cores, in every process a run or a sweep starts; advbayes used add_state, update without
gradients, compute after a sync and .to(device), which this module gives in under a hundred lines.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

REDUCTIONS = ("sum", "max", "min", "mean", "cat")


class MetricState(nn.Module):
    """Accumulated state of a metric over evaluation batches; compute() gives named scalars.

    States are declared with add_state(name, default, dist_reduce_fx): a tensor (a buffer, so .to(device) moves it)
    reduced over processes by "sum", "max", "min" or "mean", or a list of tensors concatenated by "cat" (one tensor
    after a sync, as torchmetrics does). update() runs without gradients (a metric that needs them enables them
    itself); compute() first reduces every state over the processes of a sharded evaluation, then restores the
    process's own states after it has run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._reductions: dict[str, str] = {}
        self._defaults: dict[str, Any] = {}
        self.update = self._without_gradients(self.update)  # type: ignore[method-assign]
        self.compute = self._after_sync(self.compute)  # type: ignore[method-assign]

    def add_state(self, name: str, default: torch.Tensor | list[Any], dist_reduce_fx: str = "sum") -> None:
        """Declare a state: a tensor, or an empty list of tensors (dist_reduce_fx "cat")."""
        if dist_reduce_fx not in REDUCTIONS:
            raise ValueError(
                f"state {name!r}: dist_reduce_fx must be one of {', '.join(REDUCTIONS)}, got {dist_reduce_fx!r}"
            )
        if isinstance(default, list):
            if default or dist_reduce_fx != "cat":
                raise ValueError(f"state {name!r}: a list state starts empty and is reduced by 'cat'")
            setattr(self, name, [])
        elif isinstance(default, torch.Tensor):
            self.register_buffer(name, default.clone(), persistent=False)
        else:
            raise ValueError(f"state {name!r}: the default must be a tensor or [], got {type(default).__name__}")
        self._reductions[name] = dist_reduce_fx
        self._defaults[name] = default

    def reset(self) -> None:
        """Every state back to its default."""
        for name, default in self._defaults.items():
            setattr(self, name, [] if isinstance(default, list) else default.clone().to(self._device()))

    def update(self, batch: Any) -> None:
        """Accumulate one attacked batch."""
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        """Named scalar results."""
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        """Optional matplotlib figures to log, by file name."""
        return {}

    def per_example(self) -> dict[str, torch.Tensor]:
        """Optional per-example outcomes (0/1, in the test split's order) of named results, for paired tests."""
        return {}

    def _device(self) -> torch.device:
        return next((b.device for b in self.buffers()), torch.device("cpu"))

    @staticmethod
    def _without_gradients(update: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(update)
        def wrapped(*args: Any, **kwargs: Any) -> None:
            with torch.no_grad():
                update(*args, **kwargs)

        return wrapped

    def _after_sync(self, compute: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], dict[str, torch.Tensor]]:
        @functools.wraps(compute)
        def wrapped() -> dict[str, torch.Tensor]:
            if not sharded():
                return compute()
            own = {name: getattr(self, name) for name in self._reductions}
            for name, reduction in self._reductions.items():
                setattr(self, name, reduced(own[name], reduction))
            try:
                return compute()
            finally:
                for name, value in own.items():
                    setattr(self, name, value)

        return wrapped


def sharded() -> bool:
    """Whether this process is one of several of a distributed evaluation."""
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


def reduced(value: torch.Tensor | list[torch.Tensor], reduction: str) -> torch.Tensor:
    """A state reduced over every process: summed, maxed, ... or the processes' lists concatenated in rank order."""
    distributed = torch.distributed
    if reduction == "cat":
        local = torch.cat([v.reshape(v.shape or (1,)) for v in value]) if isinstance(value, list) and value else value
        if isinstance(local, list):  # nothing gathered on this process
            local = torch.zeros(0)
        sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(distributed.get_world_size())]
        distributed.all_gather(sizes, torch.tensor([len(local)], device=local.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: len(local)] = local
        parts = [torch.zeros_like(padded) for _ in sizes]
        distributed.all_gather(parts, padded)
        return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes, strict=True)])
    assert isinstance(value, torch.Tensor)
    result = value.clone()
    if reduction == "mean":
        distributed.all_reduce(result, op=distributed.ReduceOp.SUM)
        return result / distributed.get_world_size()
    op = {"sum": distributed.ReduceOp.SUM, "max": distributed.ReduceOp.MAX, "min": distributed.ReduceOp.MIN}
    distributed.all_reduce(result, op=op[reduction])
    return result
