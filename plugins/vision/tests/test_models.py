"""The networks: output shapes per data set, known parameter counts, convertible layers, and real training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advbayes
from advbayes.testing import create_plugin_manager, plugin_registry
from advbayes_vision.models import Normalize

CONVERTIBLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def build(spec: dict, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    registry = plugin_registry()
    resolved = registry.resolve("models", spec, where=("test", "test", "model"))
    return registry.build("models", resolved).build(input_shape, classes)


@pytest.mark.parametrize(
    ("spec", "input_shape", "classes"),
    [
        ({"use": "mnist-cnn"}, (1, 28, 28), 10),
        ({"use": "mnist-cnn"}, (1, 8, 8), 10),
        ({"use": "mlp", "widths": [128, 128]}, (1, 28, 28), 10),
        ({"use": "vgg16", "width": 0.125}, (3, 32, 32), 10),
        ({"use": "vgg16", "width": 0.125}, (3, 96, 96), 10),
        ({"use": "vgg16", "width": 0.125}, (3, 64, 64), 143),
        ({"use": "model-a"}, (3, 96, 96), 10),
        ({"use": "wrn", "depth": 10, "width": 1, "dropout": 0.3}, (3, 32, 32), 100),
        ("vgg16-cifar10", (3, 32, 32), 10),
    ],
)
def test_output_shape(spec, input_shape, classes) -> None:
    model = build(spec, input_shape, classes).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *input_shape)).shape == (2, classes)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_standard_architectures() -> None:
    # WRN-28-10 on CIFAR-10 has 36,479,194 parameters; CIFAR VGG16-BN with one linear head 14,728,266.
    assert count(build({"use": "wrn"}, (3, 32, 32), 10)) == 36_479_194
    assert count(build({"use": "vgg16"}, (3, 32, 32), 10)) == 14_728_266


@pytest.mark.parametrize(
    "spec", [{"use": "mnist-cnn"}, {"use": "vgg16"}, {"use": "model-a"}, {"use": "wrn", "depth": 16, "width": 2}]
)
def test_every_parameter_lives_in_a_convertible_layer(spec) -> None:
    model = build(spec, (3, 32, 32) if spec["use"] != "mnist-cnn" else (1, 28, 28), 10)
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, CONVERTIBLE), type(module)


def test_normalization_is_inside_the_model() -> None:
    model = build("vgg16-cifar10", (3, 32, 32), 10)
    normalize = model[0]
    assert isinstance(normalize, Normalize)
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2470, 0.2435, 0.2616]
    ).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x), expected)


def test_wrong_architecture_parameters_are_registry_errors() -> None:
    with pytest.raises(advbayes.RegistryError, match=r"key 'depth': expected 6n \+ 4"):
        build({"use": "wrn", "depth": 27}, (3, 32, 32), 10)


@pytest.mark.slow
def test_mnist_cnn_beats_90_percent_on_mnist_5k_in_two_epochs() -> None:
    result = advbayes.run("quickstart", track=False, pm=create_plugin_manager(), epochs=2, attacks=["none"], eps=[0.0])
    assert result.spec["dataset"]["use"] == "mnist-5k" and result.spec["model"]["use"] == "mnist-cnn"
    assert result.table()["none"][0.0] > 0.90
