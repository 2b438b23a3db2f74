"""advbayes-vision: the papers' image data sets and networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbayes import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_datasets(register: Any) -> None:
    """mnist-5k, digits, mnist, fashion-mnist, cifar10, cifar100, stl10, tiny-imagenet, image-folder."""
    from advbayes_vision.datasets import (
        Cifar10,
        Cifar100,
        Digits,
        FashionMnist,
        ImageFolder,
        Mnist,
        Mnist5k,
        Stl10,
        TinyImageNet,
    )

    for dataset in (Mnist5k, Digits, Mnist, FashionMnist, Cifar10, Cifar100, Stl10, TinyImageNet, ImageFolder):
        register(dataset)


@hookimpl
def register_models(register: Any) -> None:
    """mnist-cnn, vgg16, model-a, wrn (mlp is the core's)."""
    from advbayes_vision.models import VGG16, MnistCNN, ModelA, WideResNet

    for model in (MnistCNN, VGG16, ModelA, WideResNet):
        register(model)


@hookimpl
def registry_files() -> Path:
    """Named entries: normalized networks per data set, small subsets."""
    return Path(__file__).with_name("registry.toml")
