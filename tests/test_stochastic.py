"""The sample dimension against independent references: per-draw plain torch networks with the same draws."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from advbayes.stochastic import (
    BayesConv2d,
    BayesLinear,
    Folded,
    frozen,
    kl,
    predict,
    to_bayesian,
)
from advbayes.stochastic import model as stochastic_model
from advbayes.stochastic import strategy as strategies
from advbayes.stochastic.layers import shared_widths
from helpers import draw_network


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
    )


class Residual(nn.Module):
    """A deterministic stem, then a block whose conv is Bayesian and whose shortcut is the identity."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(h + self.conv(h))


def assert_matches_per_draw_networks(
    original: nn.Module, model: nn.Module, x: torch.Tensor, samples: int, train: bool
) -> None:
    model.train(train)
    with torch.no_grad():
        out = model(x, samples=samples)
        assert out.shape == (samples, x.shape[0], out.shape[-1])
        for s in range(samples):
            reference = draw_network(original, model, s).train(train)
            torch.testing.assert_close(out[s], reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["loop", "batched", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_mlp_draws_equal_per_draw_networks(strategy: str, train: bool) -> None:
    original = mlp()
    model = to_bayesian(copy.deepcopy(original), init_sigma=0.1, strategy=strategy, seed=1)
    assert_matches_per_draw_networks(original, model, torch.randn(7, 3, 4), samples=5, train=train)


@pytest.mark.parametrize("strategy", ["loop", "batched", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_cnn_with_batchnorm_draws_equal_per_draw_networks(strategy: str, train: bool) -> None:
    original = cnn()
    model = to_bayesian(copy.deepcopy(original), init_sigma=0.1, strategy=strategy, seed=1)
    if not train:  # give the running statistics non-trivial values first
        model.train()
        model(torch.randn(16, 2, 8, 8), samples=3)
    assert_matches_per_draw_networks(original, model, torch.randn(6, 2, 8, 8), samples=4, train=train)


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_shared_trunk_with_residual_equals_full_expansion_and_runs_once(strategy: str) -> None:
    original = Residual()
    model = to_bayesian(copy.deepcopy(original), which=["conv", "head.1"], init_sigma=0.1, strategy=strategy, seed=2)
    calls = []
    model.net.stem.module.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    x = torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        out = model(x, samples=6)
    assert calls == [torch.Size([5, 2, 8, 8])]  # the deterministic stem ran once, on the batch alone
    for s in range(6):
        torch.testing.assert_close(out[s], draw_network(original, model, s)(x), rtol=1e-4, atol=1e-5)


def test_last_fraction_makes_only_the_back_bayesian() -> None:
    model = to_bayesian(cnn(), which=0.34, seed=0)  # 3 weight layers: the last one (ceil(0.34 * 3) = 2 -> conv2 + fc)
    kinds = {name: type(m).__name__ for name, m in model.net.named_children()}
    assert kinds["0"] == "Folded" and kinds["4"] == "BayesConv2d" and kinds["5"] == "BayesBatchNorm2d"
    assert kinds["8"] == "BayesLinear"


@pytest.mark.parametrize("grad", [True, False])
def test_every_strategy_gives_the_same_numbers(grad: bool) -> None:
    # without autograd, auto measures on the real calls: each of the repeated calls may run another candidate
    strategies.forget_choices()
    x = torch.randn(9, 2, 8, 8)
    outputs: dict[str, list[torch.Tensor]] = {}
    for strategy in ("loop", "batched", "auto"):
        model = to_bayesian(cnn(), init_sigma=0.2, strategy=strategy, seed=5)
        with torch.set_grad_enabled(grad):
            outputs[strategy] = [model(x, samples=7) for _ in range(3 * (1 + strategies.ROUNDS))]
    for strategy in ("batched", "auto"):
        for got, expected in zip(outputs[strategy], outputs["loop"]):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert bool(strategies.LAYER_CHOICES) == (not grad)  # auto's layers measured on the real calls only without
    strategies.forget_choices()


def test_auto_measurement_has_no_side_effects_on_draws_or_running_statistics() -> None:
    x = torch.randn(40, 2, 8, 8)
    auto = to_bayesian(cnn(), init_sigma=0.2, strategy="auto", seed=5).train()
    loop = to_bayesian(cnn(), init_sigma=0.2, strategy="loop", seed=5).train()
    for _ in range(2):
        torch.testing.assert_close(auto(x, samples=8), loop(x, samples=8), rtol=1e-4, atol=1e-5)
    assert auto.chunk_timings  # auto measured the draws-per-pass candidates
    for (name, a), (_, b) in zip(auto.named_buffers(), loop.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_draws_equal_unchunked() -> None:
    x = torch.randn(8, 2, 8, 8)
    whole = to_bayesian(cnn(), init_sigma=0.2, seed=3).eval()(x, samples=10)
    chunked_model = to_bayesian(cnn(), init_sigma=0.2, seed=3, max_batch=24).eval()
    chunked = chunked_model(x, samples=10)
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_running_statistics_do_not_depend_on_how_draws_are_chunked() -> None:
    # one momentum update per forward pass with the mean statistics of all draws, however many chunks ran
    x = torch.randn(8, 2, 8, 8)
    whole = to_bayesian(cnn(), init_sigma=0.2, seed=3).train()
    chunked = to_bayesian(cnn(), init_sigma=0.2, seed=3, max_batch=16).train()  # 10 draws x 8 -> chunks of 2
    for _ in range(3):
        torch.testing.assert_close(whole(x, samples=10), chunked(x, samples=10), rtol=1e-5, atol=1e-6)
    buffers = dict(chunked.named_buffers())
    assert any("running_mean" in name for name in buffers)
    for name, value in whole.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=1e-5, atol=1e-6, msg=name)


def test_tiny_sigma_keeps_the_converted_models_outputs() -> None:
    original = cnn().eval()
    x = torch.randn(4, 2, 8, 8)
    model = to_bayesian(copy.deepcopy(original), init_sigma=1e-8).eval()
    out = model(x, samples=3)
    for s in range(3):
        torch.testing.assert_close(out[s], original(x), rtol=1e-4, atol=1e-5)


def test_gradients_reach_means_and_log_stds() -> None:
    model = to_bayesian(cnn(), init_sigma=0.1, seed=0)
    loss = model(torch.randn(4, 2, 8, 8), samples=3).logsumexp(-1).mean() + kl(model, 0.1) * 1e-3
    loss.backward()
    for parameter in model.gaussian_parameters():
        assert parameter.mu.grad is not None and parameter.mu.grad.abs().sum() > 0
        assert parameter.log_sigma.grad is not None and parameter.log_sigma.grad.abs().sum() > 0


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    x = torch.randn(3, 2, 8, 8)
    first = to_bayesian(cnn(), seed=11)(x, samples=4)
    second = to_bayesian(cnn(), seed=11)(x, samples=4)
    other = to_bayesian(cnn(), seed=12)(x, samples=4)
    assert torch.equal(first, second) and not torch.equal(first, other)
    model = to_bayesian(cnn(), seed=11)
    model.seed(11)
    assert torch.equal(model(x, samples=4), first)


def test_frozen_draws_repeat_and_fresh_draws_differ() -> None:
    model = to_bayesian(mlp(), init_sigma=0.5, seed=0)
    x = torch.randn(2, 3, 4)
    with frozen(model):
        first = model(x, samples=3)
        assert torch.equal(model(x, samples=3), first)
        with pytest.raises(ValueError, match="frozen at samples=3"):
            model(x, samples=4)
    assert not torch.equal(model(x, samples=3), first)


def test_kl_equals_torch_distributions() -> None:
    model = to_bayesian(cnn(), init_sigma=0.07, seed=0)
    with torch.no_grad():
        for parameter in model.gaussian_parameters():
            parameter.log_sigma.uniform_(-4, -1)
    expected = sum(
        kl_divergence(Normal(p.mu, p.sigma), Normal(torch.zeros_like(p.mu), 0.15)).sum()
        for p in model.gaussian_parameters()
    )
    torch.testing.assert_close(kl(model, 0.15), expected, rtol=1e-5, atol=1e-4)


def test_deterministic_networks_answer_with_one_draw() -> None:
    model = to_bayesian(mlp(), which=[], seed=0)
    out = model(torch.randn(5, 3, 4), samples=10)
    assert out.shape == (1, 5, 3)
    probs, logits = predict(mlp(), torch.randn(5, 3, 4), samples=10)
    assert logits.shape == (1, 5, 3) and torch.allclose(probs.sum(-1), torch.ones(5))


def test_sampled_input_gives_per_draw_input_gradients_in_one_backward() -> None:
    model = to_bayesian(mlp(), init_sigma=0.3, seed=4)
    x = torch.randn(2, 3, 4)
    replicated = x.unsqueeze(0).repeat(5, 1, 1, 1).requires_grad_(True)
    with frozen(model):
        out = model(replicated, samples=5, sampled_input=True)
        (grad,) = torch.autograd.grad(out[..., 0].sum(), replicated)
        for s in range(5):
            single = x.clone().requires_grad_(True)
            (expected,) = torch.autograd.grad(model(single, samples=5)[s, :, 0].sum(), single)
            torch.testing.assert_close(grad[s], expected, rtol=1e-4, atol=1e-6)


def test_unconvertible_parametrized_modules_are_listed_in_a_warning() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"left these modules deterministic: 2 \(LayerNorm\)"):
        model = to_bayesian(net)
    assert isinstance(model.net[1], BayesLinear) and model(torch.randn(3, 3, 4), samples=2).shape == (2, 3, 2)
    with pytest.warns(UserWarning, match=r"left these modules deterministic: 1 \(GroupNorm\)"):
        conv = to_bayesian(nn.Sequential(nn.Conv2d(2, 3, 3), nn.GroupNorm(1, 3), nn.Flatten(), nn.Linear(12, 2)))
    assert isinstance(conv.net[0], BayesConv2d)  # converted; the GroupNorm runs per draw, deterministic
    assert isinstance(conv.net[1], Folded) and isinstance(conv.net[1].module, nn.GroupNorm)


def test_means_start_uniform_within_one_over_sqrt_fan_in_and_log_sigma_at_log_init_sigma() -> None:
    torch.manual_seed(0)
    model = to_bayesian(nn.Sequential(nn.Flatten(), nn.Linear(400, 300)), init_sigma=0.08, seed=0)
    layer = model.net[1]
    bound = 1 / 400**0.5
    mu = layer.weight.mu.detach()
    assert float(mu.abs().max()) <= bound
    assert float(mu.std()) == pytest.approx(bound / 3**0.5, rel=0.02)  # the std of U(-b, b) is b / sqrt(3)
    assert torch.allclose(layer.weight.log_sigma, torch.full_like(mu, math.log(0.08)))


def test_race_keeps_the_loop_on_a_near_tie_and_lets_a_burst_of_load_not_decide() -> None:
    def sleeper(*seconds: float) -> Callable[[], None]:
        calls = iter([*seconds, *[seconds[-1]] * 20])
        return lambda: time.sleep(next(calls))

    # batched is faster but for one round that a burst of load hit (measured one after the other, the burst decided)
    winner, best = strategies.race(
        {"loop": sleeper(0.004), "batched": sleeper(0.001, 0.030, 0.001)}, torch.device("cpu"), reference="loop"
    )
    assert winner == "batched" and best["batched"] < 0.004
    # within MARGIN of the reference: the reference stays
    winner, _ = strategies.race(
        {"loop": sleeper(0.0100), "batched": sleeper(0.0099)}, torch.device("cpu"), reference="loop"
    )
    assert winner == "loop"


def test_a_race_of_long_calls_times_one_round_after_the_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strategies, "LONG_CALL", 0.02)
    calls: dict[str, int] = {"loop": 0, "batched": 0}

    def sleeper(name: str, seconds: float) -> Callable[[], None]:
        def call() -> None:
            calls[name] += 1
            time.sleep(seconds)

        return call

    winner, _ = strategies.race(
        {"loop": sleeper("loop", 0.03), "batched": sleeper("batched", 0.01)}, torch.device("cpu"), reference="loop"
    )
    assert winner == "batched" and calls == {"loop": 2, "batched": 2}  # warm-up and one timed call each
    calls.update(loop=0, batched=0)
    strategies.race(
        {"loop": sleeper("loop", 0.002), "batched": sleeper("batched", 0.001)}, torch.device("cpu"), reference="loop"
    )
    assert calls == {"loop": 1 + strategies.ROUNDS, "batched": 1 + strategies.ROUNDS}  # short calls: every round


def test_a_measured_choice_is_measured_again_after_its_recheck_counts() -> None:
    strategies.forget_choices()
    key = ("test-signature",)
    chosen: dict = {}
    assert strategies.due(key, chosen)  # nothing chosen yet
    chosen[key] = "batched"
    due_at = [calls for calls in range(2, 20_000) if strategies.due(key, chosen)]
    assert due_at == sorted(strategies.RECHECK_AT)
    strategies.forget_choices()


@pytest.mark.parametrize("size", [1, 3, 7])
def test_an_expected_loss_gradient_by_passes_equals_the_per_draw_networks(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # whatever pass size the race picks, the loss, gradient and logits are those of the S per-draw networks
    strategies.forget_choices()
    monkeypatch.setattr(strategies.OnlineChoice, "next", lambda self: size)  # the pass size is forced
    original = cnn().eval()
    model = to_bayesian(original, init_sigma=0.2, seed=11).eval()
    x, y = torch.randn(80, 2, 8, 8), torch.arange(80) % 5  # batch 80: passes of 1, 3 (256 // 80) or all 7 draws

    def draw_losses(logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([nn.functional.cross_entropy(z, y, reduction="none") for z in logits]).mean(dim=0)

    losses, gradient, logits = model.mean_loss_gradient(x, 7, draw_losses)
    (choice,) = strategies.GRADIENT_CHOICES.values()
    assert choice.candidates == [1, 3, 7] and len(choice.times[size]) == 1  # the call was the measurement
    probe = x.clone().requires_grad_(True)
    per_draw = [draw_network(original, model, s).eval()(probe) for s in range(7)]
    expected = draw_losses(torch.stack(per_draw))
    (expected_gradient,) = torch.autograd.grad(expected.sum(), probe)
    torch.testing.assert_close(logits, torch.stack(per_draw).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-4, atol=1e-6)
    strategies.forget_choices()


def test_a_forward_without_autograd_measures_its_pass_size_on_its_real_calls_and_keeps_the_per_draw_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every call runs the S draws exactly once, in whatever passes it is measuring, and gives the per-draw networks
    strategies.forget_choices()
    original = cnn().eval()
    model = to_bayesian(original, init_sigma=0.2, seed=4).eval()
    x = torch.randn(80, 2, 8, 8)  # batch 80: candidate passes of 1, 3 (256 // 80) and all 7 draws
    passes: list[list[int]] = []
    forward_draws = model.forward_draws

    def counted(inputs: torch.Tensor, layers: list, start: int, stop: int) -> torch.Tensor:
        passes[-1].append(stop - start)
        return forward_draws(inputs, layers, start, stop)

    monkeypatch.setattr(model, "forward_draws", counted)
    for _ in range(3 * (1 + strategies.ROUNDS) + 2):
        passes.append([])
        model.seed(9)
        with torch.no_grad():
            out = model(x, samples=7)
        assert sum(passes[-1]) == 7  # one pass per chunk of the real call: nothing run for the measurement alone
    (choice,) = strategies.FORWARD_CHOICES.values()
    assert choice.candidates == [1, 3, 7] and choice.winner in (1, 3, 7)
    assert sorted(len(p) for p in passes[:3]) == [1, 3, 7]  # the first calls: all 7 draws in 1, 3 and 7 passes
    assert all(len(times) >= 2 for times in choice.times.values())  # a warm-up and at least one timed call each
    model.seed(9)
    with torch.no_grad():
        draws = model(x, samples=7)
    for s in range(7):
        torch.testing.assert_close(draws[s], draw_network(original, model, s)(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, draws)
    strategies.forget_choices()


def test_an_expected_loss_gradient_draws_as_one_call_does() -> None:
    # the per-draw passes consume the model's generator exactly as one call with S draws: same seed, same draws
    x = torch.randn(5, 12)
    passes = to_bayesian(mlp(), init_sigma=0.3, seed=2).eval()
    call = to_bayesian(mlp(), init_sigma=0.3, seed=2).eval()
    _, _, logits = passes.mean_loss_gradient(x, 4, lambda z: z.logsumexp(dim=-1).mean(dim=0))
    torch.testing.assert_close(logits, call(x, samples=4).detach())
    torch.testing.assert_close(passes(x, samples=4), call(x, samples=4))


def measure(choice: strategies.OnlineChoice, seconds: dict[str, float], work: int = 1) -> list[str]:
    """Drive an online choice with calls of known durations until it decides; the candidates it ran, in order."""
    ran = []
    while choice.winner is None:
        ran.append(choice.next())
        choice.record(ran[-1], seconds[ran[-1]] * work, work)
    return ran


def test_an_online_candidate_more_than_twice_as_slow_as_another_is_not_run_again() -> None:
    choice = strategies.OnlineChoice(["loop", "slow", "fast"], reference="loop")
    ran = measure(choice, {"loop": 0.010, "slow": 0.025, "fast": 0.004})
    # one warm-up call each, then a timed call each: "slow" (6x "fast") and then "loop" (2.5x) leave the running
    assert ran.count("slow") == 2 and ran.count("loop") == 2 and ran.count("fast") == 1 + strategies.ROUNDS
    assert choice.winner == "fast" and choice.running == ["fast"]


def test_an_online_choice_of_long_calls_decides_on_one_call_each_per_unit_of_work() -> None:
    choice = strategies.OnlineChoice(["loop", "batched"], reference="loop")
    ran = measure(choice, {"loop": 0.006, "batched": 0.004}, work=128)  # 0.77 s and 0.51 s per call of 128
    assert sorted(ran) == ["batched", "loop"] and choice.winner == "batched"  # a long first call is its own timing
    assert choice.timings() == pytest.approx({"loop": 0.006, "batched": 0.004})


def test_an_online_choice_measures_on_real_calls_keeps_the_loop_on_a_near_tie_and_measures_again() -> None:
    seconds = {"loop": 0.010, "fast": 0.006, "tie": 0.0097}  # short calls: ROUNDS timed calls each
    for rival, expected in (("fast", "fast"), ("tie", "loop")):
        choice = strategies.OnlineChoice(["loop", rival], reference="loop")
        ran = []
        while choice.winner is None:
            candidate = choice.next()
            ran.append(candidate)
            choice.record(candidate, seconds[candidate] * (20 if len(ran) <= 2 else 1))  # slow warm-up calls
        assert sorted(ran) == sorted(["loop", rival] * (strategies.ROUNDS + 1)) and choice.winner == expected
        assert choice.timings() == {"loop": 0.010, rival: seconds[rival]}  # the warm-up calls were dropped
        while choice.calls + 1 < min(strategies.RECHECK_AT):
            assert choice.next() == expected
        choice.next()  # the recheck count: measuring again
        assert choice.winner is None and not any(choice.times.values())


def test_a_saved_draw_state_makes_another_model_continue_the_same_draws() -> None:
    """What a checkpoint keeps (draw_state.py): a model built again, with another seed, draws on where it stopped."""
    from advbayes.engine.checkpoints import rng_state, set_rng_state
    from advbayes.stochastic import SampleEnsemble

    x = torch.randn(5, 12)
    model = to_bayesian(mlp(), init_sigma=0.3, seed=3)
    model(x, samples=4)  # the draws have moved on from the seed
    saved = rng_state(model)
    expected = model(x, samples=4)
    rebuilt = to_bayesian(mlp(), init_sigma=0.3, seed=99)
    rebuilt.load_state_dict(model.state_dict())
    assert not torch.equal(rebuilt(x, samples=4), expected)
    set_rng_state(saved, rebuilt)
    assert torch.equal(rebuilt(x, samples=4), expected)
    ensemble = SampleEnsemble(mlp(), capacity=6, seed=1)
    ensemble.store(torch.randn(6, sum(p.numel() for p in ensemble.net.parameters())))
    ensemble(x, samples=3)
    state = rng_state(ensemble)["draws"]
    expected = ensemble(x, samples=3)
    other = SampleEnsemble(mlp(), capacity=6, seed=2)
    other.load_state_dict(ensemble.state_dict())
    other.load_draw_state(state[""])
    assert torch.equal(other(x, samples=3), expected)
    with pytest.raises(ValueError, match="the checkpoint has draws of module 'gone', which this network lacks"):
        set_rng_state({**saved, "draws": {"gone": state[""]}}, rebuilt)


def test_passes_of_one_call_share_one_sigma_per_parameter_and_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an input gradient by per-draw passes, and a forward without autograd, compose every pass's weights from one
    # exp(log_sigma) per parameter (not one per pass), bit for bit what computing it in each pass gives
    strategies.forget_choices()
    monkeypatch.setattr(strategies.OnlineChoice, "next", lambda self: 1)  # 7 passes of one draw
    model = to_bayesian(cnn(), init_sigma=0.2, seed=3).eval()
    x = torch.randn(8, 2, 8, 8)
    seen: dict[int, list[torch.Tensor]] = {}  # the tensors themselves, alive: their ids stay distinct
    draw_sigma = type(model.gaussian_parameters()[0]).draw_sigma

    def recorded(parameter: nn.Module) -> torch.Tensor:
        sigma = draw_sigma(parameter)
        seen.setdefault(id(parameter), []).append(sigma)
        return sigma

    def losses_of(logits: torch.Tensor) -> torch.Tensor:
        return logits.double().logsumexp(dim=-1).mean(dim=0)

    def both() -> tuple[torch.Tensor, ...]:
        model.seed(5)
        losses, gradient, logits = model.mean_loss_gradient(x, 7, losses_of)
        with torch.no_grad():
            return losses, gradient, logits, model(x, samples=7)

    monkeypatch.setattr(type(model.gaussian_parameters()[0]), "draw_sigma", recorded)
    shared = both()
    assert len(seen) == len(model.gaussian_parameters())
    # 7 passes of the gradient and 7 of the forward each asked for sigma: one tensor served the first 7, one the rest
    assert all(len(s) == 14 and len({id(t) for t in s[:7]}) == len({id(t) for t in s[7:]}) == 1 for s in seen.values())
    assert all(s[0] is not s[7] for s in seen.values())
    assert all(p.shared_sigma is None for p in model.gaussian_parameters())  # nothing lingers after the calls
    monkeypatch.setattr(stochastic_model, "shared_widths", lambda parameters: contextlib.nullcontext())
    for ours, computed_per_pass in zip(shared, both(), strict=True):
        assert torch.equal(ours, computed_per_pass)
    strategies.forget_choices()


def test_a_forward_under_autograd_after_shared_widths_still_trains_the_widths() -> None:
    # the shared sigma is computed without autograd: it must never reach a forward whose backward trains sigma
    model = to_bayesian(mlp(), init_sigma=0.3, seed=2).train()
    x = torch.randn(5, 12)
    parameters = model.gaussian_parameters()
    with shared_widths(parameters):
        outer = [p.shared_sigma for p in parameters]
        assert all(s is not None and not s.requires_grad for s in outer)
        with shared_widths(parameters):  # a nested block uses the outer block's sigma and leaves it in place
            assert all(p.shared_sigma is s for p, s in zip(parameters, outer, strict=True))
        assert all(p.shared_sigma is s for p, s in zip(parameters, outer, strict=True))
    assert all(p.shared_sigma is None for p in model.gaussian_parameters())
    model(x, samples=3).sum().backward()
    assert all(p.log_sigma.grad is not None and p.log_sigma.grad.abs().sum() > 0 for p in parameters)
