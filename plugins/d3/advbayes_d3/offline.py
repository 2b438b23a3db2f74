"""Offline adversarial training ("-Off"): a deterministic model's adversarial examples, appended to the train set."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import ConcatDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from advbayes import Batches, TrainContext, as_sampled

CRAFT_BATCH = 256


def source_model(context: TrainContext, source: str, epochs: int) -> torch.nn.Module:
    """The named source (a defense trained earlier in the experiment, run:<id>), or a fresh one trained here."""
    if source:
        return as_sampled(context.source_model(source)).eval()
    if context.build_network is None or context.fit is None:
        raise RuntimeError("offline adversarial training needs the run engine's build_network and fit")
    return context.fit(context.build_network(), epochs)


def adversarial_split(
    context: TrainContext, model: torch.nn.Module, attack_entry: Any, description: str = "offline examples"
) -> TorchDataset:
    """The training split with `attack_entry`'s examples against `model` appended (labels kept)."""
    attack = context.build_attack(attack_entry)  # the engine's build_attack binds the data's value range
    data = Batches(context.train, context.device)
    crafted: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with tqdm(total=len(data), unit="img", desc=description, disable=not context.progress, dynamic_ncols=True) as bar:
        for x, y in data.iterate(CRAFT_BATCH, shuffle=False):
            crafted.append(attack(model, x, y).x_adv.detach().cpu())
            labels.append(y.cpu())
            bar.update(len(y))
    extra = TensorDataset(torch.cat(crafted), torch.cat(labels))
    if isinstance(context.train, TensorDataset):
        x_all, y_all = context.train.tensors[:2]
        return TensorDataset(
            torch.cat([x_all, extra.tensors[0].to(x_all.device)]), torch.cat([y_all, extra.tensors[1].to(y_all.device)])
        )
    return ConcatDataset([context.train, extra])
