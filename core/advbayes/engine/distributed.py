"""One run on several processes (torchrun, or `advbayes run --nproc N`): DistributedDataParallel training on shards
of every global batch, draws seeded per rank, rank 0 alone tracking and checkpointing, evaluation sharded and
gathered (metric_state.MetricState: compute() reduces the states across ranks)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset, TensorDataset

from advbayes.components import LossOutput
from advbayes.errors import RunError

RANK_SEED_STRIDE = 1_000_003  # rank r draws from seed + r * stride: streams that never coincide across ranks


@attrs.frozen
class Distributed:
    """This process's place in the run: rank 0 of 1 when not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # we created the process group (so we destroy it)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """Rank 0: tracks, writes checkpoints, prints."""
        return self.rank == 0


SINGLE = Distributed()


def launched_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise RunError(f"WORLD_SIZE: expected a number of processes, got {os.environ['WORLD_SIZE']!r}") from None


def join(device: str) -> tuple[Distributed, str]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA): this rank's place and device."""
    world = launched_world()
    if world <= 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RunError(
                f"rank {rank}: local rank {local_rank} but {torch.cuda.device_count()} CUDA device(s); --nproc at "
                "most the GPUs of the machine"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        here = True
    return Distributed(rank=rank, world=world, local_rank=local_rank, initialized_here=here), device


def leave(place: Distributed) -> None:
    """Destroy the process group if this process created it."""
    if place.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def shard(dataset: TorchDataset, place: Distributed) -> TorchDataset:
    """This rank's share of a split for evaluation: every world-th example from its rank."""
    if not place.active:
        return dataset
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[place.rank :: place.world] for t in dataset.tensors))
    return Subset(dataset, range(place.rank, len(dataset), place.world))  # type: ignore[arg-type]


def total(value: float, place: Distributed, op: str = "sum") -> float:
    """A scalar reduced over ranks (sum or max); itself when not distributed."""
    if not place.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(tensor.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class LossModule(nn.Module):
    """The defense's whole loss as one forward, so DistributedDataParallel sees every parameter the loss uses
    (the KL term and a training attack's forwards included) and averages their gradients after backward."""

    def __init__(self, net: nn.Module, loss: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], LossOutput]):
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        output = self.loss(self.net, (x, y))
        return output.loss, dict(output.parts)


def sharded_loss(
    net: nn.Module,
    loss: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], LossOutput],
    place: Distributed,
) -> Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], LossOutput]:
    """The loss of a global batch computed on this rank's shard under DDP. The shard's loss is weighted by
    world x shard / batch, so DDP's average over ranks is the loss of the whole batch even when shards differ."""
    module = nn.parallel.DistributedDataParallel(
        LossModule(net, loss), device_ids=[place.local_rank] if _on_cuda(net) else None
    )

    def compute(_model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> LossOutput:
        x, y = batch
        xs, ys = x.tensor_split(place.world)[place.rank], y.tensor_split(place.world)[place.rank]
        if len(ys) == 0:
            raise RunError(
                f"a batch of {len(y)} example(s) cannot be shared by {place.world} processes; choose batch_size and "
                "the data size so that every batch holds at least one example per process"
            )
        weight = place.world * len(ys) / len(y)
        value, parts = module(xs, ys)
        return LossOutput(loss=value * weight, parts={k: torch.as_tensor(v) * weight for k, v in parts.items()})

    return compute


def _on_cuda(net: nn.Module) -> bool:
    first = next(net.parameters(), None)
    return first is not None and first.is_cuda


def mean_over_ranks(values: dict[str, float], place: Distributed) -> dict[str, float]:
    """Epoch means of the weighted shard losses, averaged over ranks: the means of the whole batches."""
    if not place.active or not values:
        return values
    keys = list(values)  # the same order on every rank: train_epochs builds it the same way
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return {k: float(v) / place.world for k, v in zip(keys, tensor.tolist())}


def seed_draws(seed: int, place: Distributed) -> None:
    """Give each rank its own stream of draws (after the network is built: every rank builds the same one)."""
    if place.active:
        torch.manual_seed(seed + place.rank * RANK_SEED_STRIDE)
