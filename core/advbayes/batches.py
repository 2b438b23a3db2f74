"""Batching: in-memory data sets are held as tensors on the run's device and batched by indexing."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import Dataset as TorchDataset


def first_examples(
    dataset: TorchDataset, n: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n examples of a split (all of it when shorter) as float inputs and long labels on `device`; of an
    in-memory split, already float on `device`, the inputs are a view of its tensor (read them, do not write)."""
    if n < 1:
        raise ValueError(f"first_examples: expected n >= 1, got {n}")
    n = min(n, len(dataset))  # type: ignore[arg-type]  # map-style data sets are sized
    if isinstance(dataset, TensorDataset):  # in memory: a slice, not n item lookups
        x, y = dataset.tensors[0][:n], dataset.tensors[1][:n]
    else:
        items = [dataset[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
    return x.to(device).float(), y.to(device).long()


class Batches:
    """Iterates (x, y) batches of a split on a device; tensors are moved once, other data sets use a DataLoader."""

    def __init__(self, dataset: TorchDataset, device: torch.device, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.device = device
        self.num_workers = num_workers
        self.tensors: tuple[torch.Tensor, ...] | None = None
        if isinstance(dataset, TensorDataset):
            self.tensors = tuple(t.to(device) for t in dataset.tensors)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def iterate(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches; with shuffle, a fresh permutation from `generator` each call."""
        if self.tensors is not None:
            n = len(self)
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
            order = order.to(self.device)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                x, y = (t[index] for t in self.tensors[:2])
                yield x, y
            return
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
