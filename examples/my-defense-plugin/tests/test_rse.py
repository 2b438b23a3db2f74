"""The example plugin through the real plugin manager: discovered by entry point, usable by name in an experiment."""

from __future__ import annotations

import torch
from torch import nn

import advbayes
from advbayes.testing import create_plugin_manager, plugin_registry
from advbayes_rse.defense import NoiseLayer, with_noise_layers


def test_the_installed_plugin_is_discovered_with_its_defense_and_entries() -> None:
    pm = create_plugin_manager()
    assert "advbayes-rse" in pm.info
    registry = plugin_registry(pm=pm)
    assert "rse-mnist" in registry.entries["defenses"] and "rse-mnist-5k" in registry.entries["experiments"]


def test_its_defense_runs_through_the_registry() -> None:
    result = advbayes.run(
        "moons",
        track=False,
        pm=create_plugin_manager(),
        defense={"use": "rse", "init_noise": 0.05, "inner_noise": 0.05},
        attacks=["none", "fgsm"],
        eps=[0.1],
        model={"use": "mlp", "widths": [16]},
    )
    assert result.spec["defense"]["use"] == "rse"
    assert result.table()["none"][0.1] > 0.7  # half-moons stays learnable under small noise


def test_noise_is_on_at_prediction_and_zero_noise_is_the_plain_network() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    noisy = with_noise_layers(nn.Sequential(*[m for m in net]), 0.5, 0.5).eval()
    assert sum(isinstance(m, NoiseLayer) for m in noisy.modules()) == 2
    x = torch.randn(5, 3)
    assert not torch.equal(noisy(x), noisy(x))
    plain = with_noise_layers(nn.Sequential(*[m for m in net]), 0.0, 0.0)
    torch.testing.assert_close(plain(x), net(x))
