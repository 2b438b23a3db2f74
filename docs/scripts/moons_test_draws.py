"""Does the test draw decide Carbone et al.'s training-points rows? Each half-moons experiment draws its test points
after its training points, so hmc-moons-32, -32-10k and -32-15k measure on three different draws. This script
measures every tracked posterior of those experiments on every experiment's draw, with the same gradient-limit
metric and settings the experiments use (250 test points, S = 250, 3 repeats).

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
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.tracking import tracked_runs

EXPERIMENTS = {"hmc-moons-32": 5000, "hmc-moons-32-10k": 10000, "hmc-moons-32-15k": 15000}
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
    draws = {n: HalfMoons(train_size=n, test_size=500).load("test").tensors for n in EXPERIMENTS.values()}
    print(f"{METRIC} of each posterior (rows) on each experiment's test draw (columns), mean +- sd over seeds")
    print(f"{'posterior':22s}" + "".join(f"{f'test draw of {n:,}':>24s}" for n in draws))
    for experiment, n_train in EXPERIMENTS.items():
        runs = [r for r in tracked_runs(args.store, [experiment]) if r.info.status == "FINISHED"]
        values: dict[int, list[float]] = {n: [] for n in draws}
        for run in runs:
            model = tracked_model(pm, run.info.run_id, args.store, torch.device("cpu"))
            torch.manual_seed(int(run.data.tags.get("advbayes.seed", "0")))
            for n, (x, y) in draws.items():
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
                values[n].append(float(state.compute()[METRIC]))
        cells = [f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0:.4f}" for v in values.values()]
        print(f"{f'{n_train:,} points ({len(runs)} runs)':22s}" + "".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
