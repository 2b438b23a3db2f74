"""The papers' networks: mnist-cnn, vgg16, model-a and WideResNet, with input normalization inside."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
import torch
from torch import nn

from advbayes import Model, list_param, param


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the network, so attacks work in the data's [0, 1] range."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize."""
        return (x - self.mean) / self.std


def normalization(mean: Sequence[float], std: Sequence[float], channels: int) -> list[nn.Module]:
    """A Normalize layer when statistics are given (one value, or one per channel), else nothing."""
    if not mean and not std:
        return []
    mean = list(mean) * channels if len(mean) == 1 else list(mean)
    std = list(std) * channels if len(std) == 1 else list(std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need 1 or {channels} values, got {len(mean)} and {len(std)}")
    return [Normalize(mean, std)]


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


@attrs.frozen(kw_only=True)
class NormalizedModel(Model):
    """A model with optional normalization statistics of its input channels."""

    mean: tuple[float, ...] = list_param((), help="per-channel input mean (empty: no normalization)")
    std: tuple[float, ...] = list_param((), gt=0.0, help="per-channel input std")


@attrs.frozen(kw_only=True)
class MnistCNN(NormalizedModel):
    """Three 3x3 conv layers (ReLU, 2x2 max-pool) and two fully connected layers, as in the D3 paper."""

    name: ClassVar[str] = "mnist-cnn"
    channels: tuple[int, ...] = list_param((32, 64, 128), kind=int, ge=1, help="channels of the three conv layers")
    hidden: int = param(256, kind=int, ge=1, help="width of the first fully connected layer")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """conv-relu-pool x 3, flatten, fc-relu, fc."""
        if len(self.channels) != 3:
            raise ValueError(f"mnist-cnn has three conv layers, got channels {list(self.channels)}")
        layers: list[nn.Module] = [*normalization(self.mean, self.std, input_shape[0])]
        width = input_shape[0]
        for out in self.channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            width = out
        features = nn.Sequential(*layers, nn.Flatten())
        flat = _flat_size(features, input_shape)
        return nn.Sequential(*features, nn.Linear(flat, self.hidden), nn.ReLU(), nn.Linear(self.hidden, num_classes))


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@attrs.frozen(kw_only=True)
class VGG16(NormalizedModel):
    """CIFAR-style VGG16 with BatchNorm (13 conv layers, one linear head); adaptive pooling for other sizes."""

    name: ClassVar[str] = "vgg16"
    width: float = param(1.0, gt=0.0, help="channel multiplier (1.0 = the standard 64..512)")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """conv-bn-relu blocks with max-pools, adaptive average pool to 1x1, linear head."""
        layers: list[nn.Module] = [*normalization(self.mean, self.std, input_shape[0])]
        channels = input_shape[0]
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out = max(1, round(int(item) * self.width))
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        return nn.Sequential(*layers)


@attrs.frozen(kw_only=True)
class ModelA(NormalizedModel):
    """The small STL-10 network of Adv-BNN's experiments: four conv-BN-ReLU layers with pooling, one FC head.

    Adv-BNN only names it "Model A" (from a third-party STL-10 repository); advbayes defines it as this
    compact 4-conv network: 32-64-128-256 channels, 2x2 max-pool after layers 2-4, global average pool.
    """

    name: ClassVar[str] = "model-a"
    channels: tuple[int, ...] = list_param((32, 64, 128, 256), kind=int, ge=1, help="channels of the 4 conv layers")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """conv-bn-relu x 4 (pool after 2, 3, 4), global average pool, linear head."""
        if len(self.channels) != 4:
            raise ValueError(f"model-a has four conv layers, got channels {list(self.channels)}")
        layers: list[nn.Module] = [*normalization(self.mean, self.std, input_shape[0])]
        width = input_shape[0]
        for index, out in enumerate(self.channels):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if index > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            width = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
        return nn.Sequential(*layers)


class WideBasicBlock(nn.Module):
    """Pre-activation residual block of a WideResNet: BN-ReLU-conv, dropout, BN-ReLU-conv, plus shortcut."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + residual(x)."""
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + self.shortcut(x)


class WideResNetNetwork(nn.Module):
    """WideResNet-depth-width: three groups of (depth - 4) / 6 wide basic blocks."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        depth: int,
        width: int,
        dropout: float,
        stem: list[nn.Module],
    ) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.stem = nn.Sequential(*stem, nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False))
        groups: list[nn.Module] = []
        channels = widths[0]
        for group, stride in zip(range(3), (1, 2, 2)):
            for index in range(blocks):
                groups.append(WideBasicBlock(channels, widths[group + 1], stride if index == 0 else 1, dropout))
                channels = widths[group + 1]
        self.blocks = nn.Sequential(*groups)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """stem, blocks, head."""
        return self.head(self.blocks(self.stem(x)))


@attrs.frozen(kw_only=True)
class WideResNet(NormalizedModel):
    """WideResNet (Zagoruyko & Komodakis), default 28-10, with an optional dropout rate inside each block."""

    name: ClassVar[str] = "wrn"
    depth: int = param(28, kind=int, ge=10, help="depth, 6n + 4")
    width: int = param(10, kind=int, ge=1, help="widening factor")
    dropout: float = param(0.0, ge=0.0, lt=1.0, help="dropout rate between the convs of each block")

    def __attrs_post_init__(self) -> None:
        if (self.depth - 4) % 6:
            from advbayes import ParamError

            raise ParamError("depth", "6n + 4 (10, 16, 22, 28, ...)", self.depth)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The WideResNet network."""
        stem = normalization(self.mean, self.std, input_shape[0])
        return WideResNetNetwork(input_shape, num_classes, self.depth, self.width, self.dropout, stem)
