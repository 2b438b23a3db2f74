"""Why D3's mean penalty collapses mnist-cnn here: its gradient against the cross-entropy's at initialization, and
what the collapsed networks of `advbayes run d3-collapse-mnist-5k` compute.

Usage: python docs/scripts/d3_penalty_scale.py [--store sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse

import torch

from advbayes.engine.building import tracked_model
from advbayes.losses import mean_cross_entropy
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.tracking import tracked_runs
from advbayes_d3.defenses import per_draw_input_gradients
from advbayes_d3.penalties import omega_m, unit_directions
from advbayes_vision.datasets import mnist_5k_arrays

VARIANTS = {
    "d3-m": "d3-m",
    "d3-m-true-logit": {"extends": "d3-m", "gradient_of": "true-logit"},
    "d3-m-init-0.05": {"extends": "d3-m", "init_sigma": 0.05},
}


def gradient_norm(gradients: tuple[torch.Tensor | None, ...]) -> float:
    """The L2 norm of a list of parameter gradients."""
    return float(torch.sqrt(sum((g**2).sum() for g in gradients if g is not None)))


def main() -> None:
    """Print the penalty / cross-entropy gradient ratio at init, then each tracked run's logit spread."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    pm = create_plugin_manager()
    registry = load_registry(pm=pm)

    def build(kind: str, spec: object) -> object:
        return registry.build(kind, registry.resolve(kind, spec, where=("script", "script", kind)))

    images, labels = mnist_5k_arrays()
    x = torch.tensor(images[:64], dtype=torch.float32).reshape(-1, 1, 28, 28)
    x, y = x / x.max(), torch.tensor(labels[:64]).long()
    print("at initialization, one batch of 64, K = 10 draws")
    for seed in (0, 1, 2):
        for name, spec in VARIANTS.items():
            torch.manual_seed(seed)
            defense = build("defenses", spec)
            model = defense.prepare(build("models", "mnist-cnn").build((1, 28, 28), 10))  # type: ignore[attr-defined]
            params = [p for p in model.parameters() if p.requires_grad]
            logits, g = per_draw_input_gradients(model, x, y, 10, defense.gradient_of, create_graph=True)  # type: ignore[attr-defined]
            penalty, ce = omega_m(unit_directions(g)).mean(), mean_cross_entropy(logits, y)
            ratio = gradient_norm(torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True))
            ratio /= gradient_norm(torch.autograd.grad(ce, params, allow_unused=True))
            print(f"  seed {seed} {name:16s} Omega_M {float(penalty):.3f}  |grad Omega_M| / |grad CE| {ratio:.2f}")
    print(f"trained runs of d3-collapse-mnist-5k in {args.store}")
    for run in tracked_runs(args.store, ["d3-collapse-mnist-5k"]):
        if run.info.status != "FINISHED":
            continue
        model = tracked_model(pm, run.info.run_id, args.store, torch.device("cpu"))
        logits, g = per_draw_input_gradients(model, x, y, 10, "loss", create_graph=False)
        print(
            f"  {run.data.tags.get('advbayes.defense'):16s} logit sd over the batch {float(logits.std(1).mean()):.4f}"
            f"  median input-gradient norm {float(g.flatten(2).norm(dim=-1).median()):.4f}"
        )


if __name__ == "__main__":
    main()
