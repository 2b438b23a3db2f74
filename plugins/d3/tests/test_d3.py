"""D3's penalties against direct loops over the same draws, the variance identity, and one-backward gradients."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import advbayes
from advbayes import EvalBatch, EvalContext, TrainContext, frozen, kl
from advbayes.testing import create_plugin_manager, draw_network, observed_splits, plugin_registry, run_tiny
from advbayes_d3.defenses import per_draw_input_gradients
from advbayes_d3.metrics import clearly_below
from advbayes_d3.penalties import omega_m, omega_s, omega_v1, omega_v2, omega_v3, unit_directions


def build_defense(spec):
    registry = plugin_registry()
    return registry.build("defenses", registry.resolve("defenses", spec, where=("test", "test", "defense")))


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def loop_directions(original, model, x, y, draws):
    """Per-draw gradients with one autograd call per draw and example, on plain per-draw networks."""
    directions = []
    for k in range(draws):
        net = draw_network(original, model, k)
        per_example = []
        for b in range(x.shape[0]):
            xb = x[b : b + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(net(xb), y[b : b + 1]), xb)
            g = g.flatten()
            per_example.append(g / g.norm())
        directions.append(torch.stack(per_example))
    return torch.stack(directions).double()  # [K, B, D]


def loop_penalties(u: torch.Tensor, temperature: float) -> dict[str, list[float]]:
    """The note's formulas, written with explicit loops over examples, dimensions and draws."""
    draws, batch, dims = u.shape
    out: dict[str, list[float]] = {k: [] for k in ("m", "v1", "v2", "v3", "s")}
    for b in range(batch):
        means = [sum(float(u[k, b, d]) for k in range(draws)) / draws for d in range(dims)]
        variances = [sum((float(u[k, b, d]) - means[d]) ** 2 for k in range(draws)) / draws for d in range(dims)]
        out["m"].append(sum(m * m for m in means))
        out["v1"].append(-min(variances))
        weights = torch.softmax(torch.tensor([-temperature * v for v in variances], dtype=torch.float64), 0)
        out["v2"].append(-sum(float(w) * v for w, v in zip(weights, variances)))
        out["v3"].append(sum((v - 1 / dims) ** 2 for v in variances))
        out["s"].append(-sum(sum(abs(float(u[k, b, d])) for d in range(dims)) for k in range(draws)) / draws)
    return out


def test_penalties_equal_direct_loops_over_the_same_draws() -> None:
    original = tiny_network()
    defense = build_defense({"use": "d3", "bayesian_fraction": 0.7, "init_sigma": 0.3})
    model = defense.prepare(copy.deepcopy(original))
    x, y = torch.rand(4, 1, 2, 3), torch.randint(0, 3, (4,))
    with frozen(model):
        _, gradients = per_draw_input_gradients(model, x, y, 6, "loss", create_graph=False)
        reference_u = loop_directions(original, model, x, y, 6)
    u = unit_directions(gradients).double()
    torch.testing.assert_close(u, reference_u, rtol=1e-4, atol=1e-6)
    expected = loop_penalties(reference_u, temperature=5.0)
    for name, value in (
        ("m", omega_m(u)),
        ("v1", omega_v1(u)),
        ("v2", omega_v2(u, 5.0)),
        ("v3", omega_v3(u)),
        ("s", omega_s(u)),
    ):
        torch.testing.assert_close(value, torch.tensor(expected[name], dtype=torch.float64), rtol=1e-4, atol=1e-7)


def test_mean_penalty_and_total_variance_identity() -> None:
    torch.manual_seed(1)
    u = unit_directions(torch.randn(7, 5, 30))
    total_variance = u.var(dim=0, unbiased=False).sum(-1)
    torch.testing.assert_close(total_variance, 1 - omega_m(u))  # sum_d Var_k = 1 - sum_d E_k^2 for unit vectors


def test_soft_min_variance_approaches_the_min() -> None:
    u = unit_directions(torch.randn(6, 3, 12))
    torch.testing.assert_close(omega_v2(u, 1e6), omega_v1(u), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient_of", ["loss", "true-logit"])
def test_one_backward_gives_the_per_draw_gradients(gradient_of: str) -> None:
    defense = build_defense({"use": "d3", "bayesian_fraction": 0.5, "init_sigma": 0.3})
    model = defense.prepare(tiny_network())
    x, y = torch.rand(5, 1, 2, 3), torch.randint(0, 3, (5,))
    with frozen(model):
        logits, gradients = per_draw_input_gradients(model, x, y, 4, gradient_of, create_graph=True)
        for k in range(4):
            xk = x.clone().requires_grad_(True)
            out = model(xk, samples=4)[k]
            value = (
                F.cross_entropy(out, y, reduction="sum")
                if gradient_of == "loss"
                else out.gather(1, y.view(-1, 1)).sum()
            )
            (expected,) = torch.autograd.grad(value, xk)
            torch.testing.assert_close(gradients[k], expected, rtol=1e-4, atol=1e-6)
    assert gradients.requires_grad  # double backprop: the penalties can be trained


def test_unpenalized_omega_m_comes_from_the_training_backward() -> None:
    """Without a penalty, Omega_M is read off the trainer's own backward: the same value and the same parameter
    gradients as a separate per-draw backward followed by the loss's backward, on the same draws."""
    defense = build_defense({"use": "d3", "bayesian_fraction": 0.5, "init_sigma": 0.3})
    model = defense.prepare(tiny_network())
    x, y = torch.rand(5, 1, 2, 3), torch.randint(0, 3, (5,))
    context = TrainContext(dataset=None, train=None, device=torch.device("cpu"), n_train=50, seed=0, build_attack=None)
    with frozen(model):
        output = defense.loss(model, (x, y), context)
        assert torch.isnan(output.parts["omega_m"])  # filled in by the backward, not before
        output.loss.backward()
        hooked = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        logits, gradients = per_draw_input_gradients(model, x, y, defense.draws, "loss", create_graph=False)
        expected = omega_m(unit_directions(gradients)).mean()
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(defense.draws))
        (ce + defense.alpha / 50 * kl(model, defense.prior_sigma)).backward()
    torch.testing.assert_close(output.parts["omega_m"], expected, rtol=1e-5, atol=0.0)
    assert 0.0 < float(expected) <= 1.0 + 1e-6  # per example, sum_d mean_k(u_d)^2 = |mean_k u|^2 lies in (0, 1]
    for got, reference in zip(hooked, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-9)


def test_the_front_stays_deterministic() -> None:
    defense = build_defense({"use": "d3"})
    registry = plugin_registry()
    network = registry.build("models", registry.resolve("models", "mnist-cnn", where=("t", "t", "t"))).build(
        (1, 28, 28), 10
    )
    model = defense.prepare(network)
    kinds = [type(m).__name__ for m in model.net]
    assert kinds.count("BayesLinear") == 2 and "BayesConv2d" not in kinds  # ceil(0.25 * 5) = 2 weight layers


def test_tfp_initialization_redraws_only_the_bayesian_means() -> None:
    registry = plugin_registry()
    network = registry.build("models", registry.resolve("models", "mnist-cnn", where=("t", "t", "t"))).build(
        (1, 28, 28), 10
    )
    keep = build_defense({"use": "d3", "bayesian_fraction": 0.6}).prepare(network)
    torch.manual_seed(0)
    tfp = build_defense({"use": "d3", "bayesian_fraction": 0.6, "init_mean_std": 0.1, "init_sigma": 0.049})
    model = tfp.prepare(network)
    means = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith(".mu")])
    kept = torch.cat([p.detach().flatten() for n, p in keep.named_parameters() if n.endswith(".mu")])
    assert means.numel() > 100_000 and abs(float(means.mean())) < 1e-3
    assert float(means.std()) == pytest.approx(0.1, rel=0.01)  # N(0, 0.1), as TFP's loc initializer
    assert float(kept.std()) < 0.05  # PyTorch's fan-in initialization of the same layers is much narrower
    sigmas = torch.cat([p.detach().exp().flatten() for n, p in model.named_parameters() if n.endswith("log_sigma")])
    torch.testing.assert_close(sigmas, torch.full_like(sigmas, 0.049))
    front = {n.replace(".module", "").removeprefix("net."): p for n, p in model.named_parameters() if ".module." in n}
    assert sorted(front) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    for name, parameter in network.named_parameters():
        if name in front:
            torch.testing.assert_close(front[name], parameter)  # the deterministic front is the network's own


@pytest.mark.slow
def test_training_with_lambda_m_lowers_omega_m_on_mnist_5k() -> None:
    common = {
        "track": False,
        "pm": create_plugin_manager(),
        "epochs": 2,
        "attacks": ["none"],
        "eps": [0.0],
        "model": {"use": "mlp", "widths": [64, 64]},
        "dataset.n_train": 512,
        "dataset.n_test": 100,
    }
    plain = advbayes.run("quickstart", defense={"use": "d3", "bayesian_fraction": 0.5}, **common)
    penalized = advbayes.run("quickstart", defense={"use": "d3", "bayesian_fraction": 0.5, "lambda_m": 20.0}, **common)
    assert penalized.history[-1]["omega_m"] < plain.history[-1]["omega_m"]
    assert penalized.history[-1]["omega_m"] < penalized.history[0]["omega_m"]


# ------------------------------------------------------------------------------------------- offline training


def test_offline_augmentation_appends_one_adversarial_copy_and_leaves_the_test_split() -> None:
    """Through the real engine: the defense trains on 2N examples (N clean + N FGSM), evaluation sees the test split."""
    defense = {
        "use": "d3",
        "bayesian_fraction": 0.5,
        "draws": 2,
        "offline_attack": {"use": "fgsm", "eps": 0.25},
        "offline_epochs": 1,
    }
    with observed_splits() as seen:
        run_tiny(defense=defense, attacks=["none"], model={"use": "mlp", "widths": [16]})
    dataset = seen["dataset"]
    clean_x, clean_y = dataset.data("train").tensors
    train_x, train_y = seen["train"].tensors
    assert len(train_x) == 2 * len(clean_x)
    torch.testing.assert_close(train_x[: len(clean_x)], clean_x)  # the clean examples first, unchanged
    torch.testing.assert_close(train_y, torch.cat([clean_y, clean_y]))
    shift = (train_x[len(clean_x) :] - clean_x).abs()
    assert shift.max() <= 0.25 + 1e-6 and shift.max() > 0.2  # FGSM moves every coordinate by eps
    test_x, test_y = seen["test"].tensors
    expected_x, expected_y = dataset.data("test").tensors
    torch.testing.assert_close(test_x.cpu(), expected_x)
    torch.testing.assert_close(test_y.cpu(), expected_y)


def test_offline_source_from_an_earlier_defense_and_a_resumed_run_gets_the_same_data() -> None:
    """The -Off data from a peer model are reproducible: the augmentation runs in its own seeded random state."""
    registry = plugin_registry()
    defense = build_defense(
        {"use": "d3", "offline_attack": {"use": "pgd", "eps": 0.2, "steps": 3}, "offline_source": "cnn"}
    )
    torch.manual_seed(0)
    source = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(10, 1, 2, 2), torch.randint(0, 3, (10,))

    def build_attack(entry):
        resolved = registry.resolve("attacks", entry, where=("t", "t", "t"))
        return attrs.evolve(registry.build("attacks", resolved), value_range=(0.0, 1.0))

    def context():
        return TrainContext(
            dataset=None,
            train=TensorDataset(x, y),
            device=torch.device("cpu"),
            n_train=10,
            seed=0,
            build_attack=build_attack,
            models={"cnn": advbayes.stochastic.as_sampled(source)},
        )

    torch.manual_seed(1)
    first = defense.before_training(context()).tensors[0]
    torch.manual_seed(1)
    second = defense.before_training(context()).tensors[0]
    torch.testing.assert_close(first, second)
    assert first.shape == (20, 1, 2, 2) and float((first[10:] - x).abs().max()) <= 0.2 + 1e-6
    with pytest.raises(advbayes.RunError, match="source 'nobody' is not a defense trained earlier"):
        attrs.evolve(defense, offline_source="nobody").before_training(context())


# ------------------------------------------------------------------------------------------- obfuscation metric


class Quantized(nn.Module):
    """A network behind a rounding step: its input gradient is zero everywhere (gradient masking by construction)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 4) / 4 + 0 * x)  # keeps a graph whose gradient is zero


def obfuscation_values(target: nn.Module, source: nn.Module, x, y, eps: float) -> dict[str, float]:
    """The metric bound to `source`, updated with FGSM examples crafted white-box on `target`."""
    registry = plugin_registry()

    def build_attack(entry):
        return registry.build("attacks", registry.resolve("attacks", entry, where=("t", "t", "t")))

    metric = registry.build(
        "metrics",
        registry.resolve(
            "metrics", {"use": "obfuscation", "source": "src", "attack": {"use": "fgsm"}}, where=("t", "t", "t")
        ),
    )
    context = EvalContext(models={"src": source}, build_attack=build_attack, device=torch.device("cpu"))
    state = metric.bind(context).create()
    attack = attrs.evolve(build_attack({"use": "fgsm"}), eps=eps, value_range=(0.0, 1.0))
    sampled = advbayes.stochastic.as_sampled(target)
    result = attack(sampled, x, y)
    probs, _ = advbayes.stochastic.predict(sampled, result.x_adv)
    state.update(
        EvalBatch(
            model=sampled,
            x=x,
            y=y,
            result=result,
            probs=probs,
            attack=attack,
            eps=eps,
            inference_samples=1,
            device=torch.device("cpu"),
        )
    )
    return {k: float(v) for k, v in state.compute().items()}


def test_obfuscation_flags_a_masked_gradient_and_not_an_honest_model() -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 2)
    y = (x[:, 0] > x[:, 1]).long()
    plain = nn.Linear(2, 2)
    with torch.no_grad():
        plain.weight.copy_(torch.tensor([[-5.0, 5.0], [5.0, -5.0]]))
        plain.bias.zero_()
    # the honest model attacked white-box by the same FGSM as the transfer source (itself): no gap, no flag
    honest = obfuscation_values(plain, plain, x, y, 0.2)
    assert honest["obfuscation_gap"] == 0.0 and honest["obfuscation_flag"] == 0.0
    # behind rounding, white-box FGSM sees a zero gradient and fails; transfer from the plain model succeeds
    masked = obfuscation_values(Quantized(plain), plain, x, y, 0.2)
    clean = float((Quantized(plain)(x).argmax(-1) == y).float().mean())
    assert masked["white_box_accuracy"] == pytest.approx(clean)
    assert masked["black_box_accuracy"] < masked["white_box_accuracy"] - 0.1
    assert masked["obfuscation_flag"] == 1.0


def test_clearly_below_needs_the_margin_and_two_standard_errors() -> None:
    assert clearly_below(0.9, 0.5, 200, 0.05)
    assert not clearly_below(0.52, 0.5, 10_000, 0.05)  # significant but below the margin
    assert not clearly_below(0.6, 0.5, 20, 0.05)  # above the margin but within noise (SE ~ 0.16)


def test_d3_predicts_by_averaging_logits() -> None:
    assert build_defense("d3-m").prediction_average == "logits"
    logits = torch.randn(5, 3, 4)
    model = type("Fixed", (nn.Module,), {"takes_samples": True, "forward": lambda self, x, samples=1: logits})()
    probs, _ = advbayes.stochastic.predict(model, torch.zeros(3, 1), 5, "logits")
    torch.testing.assert_close(probs, torch.softmax(logits.mean(0), -1))
    probs, _ = advbayes.stochastic.predict(model, torch.zeros(3, 1), 5, "probs")
    torch.testing.assert_close(probs, torch.softmax(logits, -1).mean(0))


@pytest.mark.slow
@pytest.mark.usefixtures("batched_draws")  # runs end to end: the auto strategy's timing race adds seconds
def test_d3_mnist_5k_experiment_runs_on_a_subset() -> None:
    """The claims experiment resolves and runs end to end (1 epoch, a tiny subset); the findings come from the full run."""
    group = advbayes.run(
        "d3-mnist-5k",
        track=False,
        pm=create_plugin_manager(),
        epochs=1,
        **{"dataset.n_train": 16, "dataset.n_test": 16},  # a D3 step (K = 10, double backprop) ~1 s per 64 images
        attacks=[
            "none",
            "fgsm",
            {"extends": "pgd-40", "name": "pgd-40", "steps": 2},
            {"extends": "eot-pgd-40", "name": "eot-pgd-40", "steps": 2},
            {"extends": "transfer-pgd-40", "name": "transfer-pgd-40", "attack": {"extends": "pgd-40", "steps": 2}},
        ],
        metrics=[
            "accuracy",
            {"extends": "obfuscation", "name": "obfuscation", "attack": {"extends": "pgd-40", "steps": 2}},
        ],
    )
    names = [r.spec["defense"]["name"] for r in group.results]
    assert names == ["standard", "d3-bnn", "d3-m", "d3-m-s", "d3-m-s-off"]
    for result in group.results:
        table = result.table()
        assert set(table) == {"none", "fgsm", "pgd-40", "eot-pgd-40", "transfer-pgd-40"}
        record = next(r for r in result.records if r.attack_label == "pgd-40")
        assert {"white_box_accuracy", "black_box_accuracy", "obfuscation_gap", "obfuscation_flag"} <= set(
            record.metrics
        )
        assert record.metrics["white_box_accuracy"] == record.metrics["accuracy"]
