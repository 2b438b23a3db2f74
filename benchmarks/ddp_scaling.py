"""DDP scaling on CPU: training images/s of one run on 1 process vs `--nproc 2` (gloo), from the tracked
per-epoch images_per_s of the last epoch (the first one pays for warm-up), median over repeats."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from mlflow import MlflowClient

DEFAULT_SETS = ["epochs=2", 'attacks=["none"]']


def images_per_second(experiment: str, overrides: list[str], nproc: int, threads: int) -> float:
    """The last epoch's training images/s of one tracked run in a fresh store."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MLFLOW_DISABLE_TELEMETRY": "true"}
    args = [sys.executable, "-m", "advbayes.cli", "run", experiment, *[f"--set={o}" for o in overrides]]
    args += ["--nproc", str(nproc)] if nproc > 1 else []
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        (run,) = client.search_runs([experiment_id], filter_string="tags.`advbayes.role` = 'parent'")
        history = client.get_metric_history(run.info.run_id, "train/images_per_s")
        return max(history, key=lambda m: m.step).value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--set", dest="overrides", action="append", help=f"an override (default: {DEFAULT_SETS})")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    options.overrides = options.overrides or DEFAULT_SETS  # given --set replaces the defaults
    cores = os.cpu_count() or 1
    setups = [
        ("1 process, 1 thread", 1, 1),
        (f"1 process, {cores} threads", 1, cores),
        (f"{cores} processes (DDP), 1 thread each", cores, 1),
    ]
    rates = {}
    for name, nproc, threads in setups:
        values = sorted(
            images_per_second(options.experiment, options.overrides, nproc, threads) for _ in range(options.repeats)
        )
        rates[name] = values[len(values) // 2]
        print(f"{name}: {[round(v) for v in values]} images/s", file=sys.stderr)
    base = rates[setups[0][0]]
    print(f"{options.experiment} ({', '.join(options.overrides)}) on {cores} CPU cores, median of {options.repeats}:")
    print(f"{'setup':<36} {'images/s':>9} {'vs 1 process, 1 thread':>23}")
    for name, rate in rates.items():
        print(f"{name:<36} {rate:>9.0f} {rate / base:>22.2f}x")


if __name__ == "__main__":
    main()
