"""Every training-points posterior of Carbone et al.'s half-moons rows, measured on several test draws.

hmc-moons-32-5k, -10k and -15k are measured on one draw (half-moons test_seed 0); their earlier runs drew the test
points after the training points, so each training size was measured on a different draw. This script measures
every tracked posterior of those experiments (the newest run per seed) on each of those earlier draws and on test
draw 0, with the same gradient-limit metric and settings the experiments use (250 test points, S = 250, 3 repeats).

Usage: python docs/scripts/moons_test_draws.py [--store sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from advbayes.builtins.datasets import HalfMoons
from advbayes.components import EvalBatch
from advbayes.engine.building import tracked_model
from advbayes.lab.sources import latest_per_defense
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.tracking import tracked_runs

EXPERIMENTS = {"hmc-moons-32-5k": 5000, "hmc-moons-32-10k": 10000, "hmc-moons-32-15k": 15000}
METRIC = "expected_gradient_abs/s250_mean"


def main() -> None:
    """Print a table: rows the posteriors (training points), columns the test draws, mean +- sd over seeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model read hides the table
    pm = create_plugin_manager()
    registry = load_registry(pm=pm)
    spec = registry.resolve("metrics", {"use": "gradient-limit", "examples": 250, "repeats": 3}, where=("script",) * 3)
    metric = registry.build("metrics", spec)
    draws = {f"drawn after {n:,}": HalfMoons(train_size=n, test_size=500) for n in EXPERIMENTS.values()}
    draws["test_seed 0"] = HalfMoons(train_size=5000, test_size=500, test_seed=0)
    points = {name: moons.load("test").tensors for name, moons in draws.items()}
    print(f"{METRIC} of each posterior (rows) on each test draw (columns), mean +- sd over seeds")
    print(f"{'posterior':22s}" + "".join(f"{name:>24s}" for name in points))
    for experiment, n_train in EXPERIMENTS.items():
        runs = latest_per_defense(tracked_runs(args.store, [experiment]))
        values: dict[str, list[float]] = {name: [] for name in points}
        for run in runs:
            model = tracked_model(pm, run.info.run_id, args.store, torch.device("cpu"))
            torch.manual_seed(int(run.data.tags.get("advbayes.seed", "0")))
            for name, (x, y) in points.items():
                state = metric.create()
                # the metric reads the model and the clean test points only; no attack ran
                batch = EvalBatch(
                    model=model,
                    x=x,
                    y=y,
                    result=None,  # type: ignore[arg-type]
                    probs=torch.empty(0),
                    attack=None,  # type: ignore[arg-type]
                    eps=0.0,
                    inference_samples=1,
                    device=torch.device("cpu"),
                )
                state.update(batch)
                values[name].append(float(state.compute()[METRIC]))
        cells = [f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0:.4f}" for v in values.values()]
        print(f"{f'{n_train:,} points ({len(runs)} runs)':22s}" + "".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
