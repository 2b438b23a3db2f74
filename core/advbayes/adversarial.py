"""Adversarial examples for defenses that train on them (the training attack is a registry entry)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from advbayes.components import TrainContext


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block: attacks crafted during training neither use nor update BatchNorm statistics."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def adversarial_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext, entry: Any
) -> torch.Tensor:
    """The training attack's examples for the batch (the attack is a registry entry, built once per run)."""
    attack = context.build_attack(entry)
    with evaluation_mode(model):
        return attack(model, x, y).x_adv.detach()
