"""The built-in half-moons data set: seeded, balanced, and with `test_seed` a test draw that does not depend on
the training size (Carbone et al.'s training-points comparison on one set of test points)."""

from __future__ import annotations

import math

import pytest
import torch

from advbayes.builtins.datasets import HalfMoons, make_half_moons


def split(data: HalfMoons, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load(name).tensors
    return x, y


def test_by_default_the_test_points_are_the_ones_drawn_after_the_training_points() -> None:
    generator = torch.Generator().manual_seed(3)
    train, test = make_half_moons(200, 0.1, generator), make_half_moons(50, 0.1, generator)
    data = HalfMoons(train_size=200, test_size=50, seed=3)
    for (x, y), (ex, ey) in ((split(data, "train"), train), (split(data, "test"), test)):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    # so two training sizes see different test points
    assert not torch.equal(split(HalfMoons(train_size=300, test_size=50, seed=3), "test")[0], test[0])


@pytest.mark.parametrize("test_seed", [0, 3, 7])
def test_a_test_seed_gives_one_test_draw_for_every_training_size_and_leaves_training_alone(test_seed: int) -> None:
    draws = [HalfMoons(train_size=n, test_size=80, seed=3, test_seed=test_seed) for n in (100, 500, 2000)]
    tests = [split(d, "test") for d in draws]
    assert all(torch.equal(x, tests[0][0]) and torch.equal(y, tests[0][1]) for x, y in tests)
    for data in draws:  # the training points are those of the default stream, and never the test points
        x, y = split(data, "train")
        default = split(HalfMoons(train_size=data.train_size, test_size=80, seed=3), "train")
        assert torch.equal(x, default[0]) and torch.equal(y, default[1])
        assert torch.cdist(tests[0][0], x).min() > 0
    # balanced labels, points on the two half circles within the noise
    x, y = tests[0]
    assert int(y.sum()) == 40
    outer = x[y == 0]
    assert float((outer.norm(dim=1) - 1).abs().mean()) < 0.1 * math.sqrt(2) * 2


def test_two_test_seeds_give_two_draws() -> None:
    a = split(HalfMoons(train_size=100, test_size=80, test_seed=0), "test")[0]
    b = split(HalfMoons(train_size=100, test_size=80, test_seed=1), "test")[0]
    assert not torch.equal(a, b)
