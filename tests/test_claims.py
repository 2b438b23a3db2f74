"""Each claims experiment resolves and runs end to end with one epoch and one seed on a subset; these tests check
that the experiments run, never that a claim holds (the findings come from the full runs, docs/findings.md).

d3-mnist-5k and sampling-fashion-style have the same check, with more, in their plugins' tests.
"""

from __future__ import annotations

import pytest

import advbayes
from advbayes.plugins import create_plugin_manager

pytestmark = pytest.mark.usefixtures("batched_draws")  # end-to-end runs: no timing race per model

SUBSET = {"epochs": 1, "dataset.n_train": 64, "dataset.n_test": 8, "eps": [0.1], "seeds": [0]}
SMALL_AUTOATTACK = {
    "extends": "autoattack-rand",
    "name": "autoattack-rand",
    "attack_samples": 2,
    "verdict_repeats": 2,
    "attacks": [  # autoattack-rand's two sub-attacks, 5 steps each instead of 100
        {"extends": "apgd-ce", "name": "apgd-ce", "keep": "last", "steps": 5},
        {"extends": "apgd-dlr", "name": "apgd-dlr", "keep": "last", "steps": 5},
    ],
}
# The experiments' own attack entries, at 2 steps: a step of EOT-PGD-30 with 10 draws samples every weight 10 times,
# and at 8 test images that, not the images, is the cost (hvi-vs-advbnn-mnist-5k: 12 s with all 30 steps, 3 s here).
SHORT_ATTACKS = {
    "advbnn-mnist-5k": ["pgd-20", "eot-pgd-10"],
    "hvi-vs-advbnn-mnist-5k": ["pgd-30", "eot-pgd-30-10"],
    "hvi-vs-advbnn-autoattack-mnist-5k": ["eot-pgd-30-10"],
    "gradient-limit-mnist-5k": ["pgd-15-posterior"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "defenses", "model_metric"),
    [
        ("advbnn-mnist-5k", ["standard", "adversarial-training", "bnn", "adv-bnn"], "weight_mean_sigma2"),
        ("hvi-vs-advbnn-mnist-5k", ["adv-bnn", "adv-hvi"], "weight_mean_sigma2"),
        ("hvi-vs-advbnn-autoattack-mnist-5k", ["adv-bnn", "adv-hvi"], "weight_mean_sigma2"),
        ("gradient-limit-mnist-5k", ["bnn-full-elbo"], "expected_gradient_abs/s40_repeat_sd"),
    ],
)
def test_claims_experiment_runs_on_a_subset(experiment: str, defenses: list[str], model_metric: str) -> None:
    overrides = dict(SUBSET) | {f"attacks.{name}.steps": 2 for name in SHORT_ATTACKS[experiment]}
    if experiment == "gradient-limit-mnist-5k":
        # 40 draws at most (the experiment: 250): the 250-draw gradients were 7 of the test's 11 s
        overrides["metrics"] = ["accuracy", {"use": "gradient-limit", "sample_counts": [1, 10, 40], "examples": 4}]
    if experiment == "hvi-vs-advbnn-autoattack-mnist-5k":  # its own attack list, with fewer draws
        overrides["attacks"] = ["none", SMALL_AUTOATTACK]
    outcome = advbayes.run(experiment, track=False, pm=create_plugin_manager(), **overrides)
    results = getattr(outcome, "results", [outcome])
    assert [r.spec["defense"]["name"] for r in results] == defenses
    for result in results:
        attacks = {a["name"] for a in result.spec["attacks"]}
        assert {r.attack_label for r in result.records} == attacks
        for record in result.records:  # a count of examples right (in all R verdicts) out of n, inside its interval
            m = record.metrics
            assert m["accuracy"] * m["accuracy_n"] == pytest.approx(round(m["accuracy"] * m["accuracy_n"]), abs=1e-6)
            assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    bayesian = [r for r in results if r.spec["defense"]["use"] in ("bnn", "adv-bnn", "hvi")]
    assert bayesian and all(model_metric in r.model_metrics for r in bayesian)


D3_SUBSET = {**SUBSET, "dataset.n_train": 16}  # a D3 step (K = 10 draws, double backprop) costs ~1 s per 64 images
D3_COLLAPSE = ["d3-bnn", "d3-m", "d3-m-full-elbo", "d3-m-true-logit", "d3-m-init-0.05", "d3-m-lambda-2"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "names"),
    [("d3-collapse-mnist-5k", D3_COLLAPSE), ("d3-paper-init-mnist-5k", ["d3-bnn-tfp", "d3-m-tfp"])],
)
def test_d3_experiments_run_every_variant_on_a_subset(experiment: str, names: list[str]) -> None:
    outcome = advbayes.run(experiment, track=False, pm=create_plugin_manager(), **D3_SUBSET)
    results = getattr(outcome, "results", [outcome])
    assert [r.spec["defense"]["name"] for r in results] == names
    changed = {r.spec["defense"]["name"]: r.spec["defense"] for r in results}
    if experiment == "d3-collapse-mnist-5k":
        assert changed["d3-m-full-elbo"]["alpha"] == 1.0 and changed["d3-m-true-logit"]["gradient_of"] == "true-logit"
    else:  # TensorFlow Probability's initialization and prior on both
        assert all(d["init_mean_std"] == 0.1 and d["prior_sigma"] == 1.0 for d in changed.values())
    for result in results:
        (record,) = result.records
        assert record.attack_label == "none" and 0.0 <= record.metrics["accuracy"] <= 1.0
