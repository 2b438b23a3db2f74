"""Built-in model: a multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
from torch import nn

from advbayes.components import Model
from advbayes.params import list_param, param


@attrs.frozen(kw_only=True)
class MLP(Model):
    """A multilayer perceptron with ReLU activations over the flattened input."""

    name: ClassVar[str] = "mlp"
    widths: tuple[int, ...] = list_param((128, 128), kind=int, ge=1, help="hidden layer widths")
    dropout: float = param(0.0, ge=0.0, lt=1.0, help="dropout rate after each hidden layer (0: none)")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Flatten, then Linear-ReLU(-Dropout) per hidden width, then a Linear head."""
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = math.prod(input_shape)
        for width in self.widths:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        return nn.Sequential(*layers)
