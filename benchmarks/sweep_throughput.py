"""Sweep throughput: a grid of 8 small runs as `advbayes sweep` on a local Ray vs one after another in one
`advbayes run` process (what a user without Ray would type); runs per minute, median over repeats."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

DEFAULT_SETS = ["epochs=1", 'attacks=["none", "fgsm"]']


def timed_command(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one command in a fresh directory (a fresh sqlite store); it must succeed."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--runs", type=int, default=8, help="grid size (seeds 0 .. runs-1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", help=f"an override (default: {DEFAULT_SETS})")
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    options.overrides = options.overrides or DEFAULT_SETS  # given --set replaces the defaults
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cli = [sys.executable, "-m", "advbayes.cli"]
    sets = [f"--set={o}" for o in options.overrides]
    seeds = ",".join(str(s) for s in range(options.runs))
    sequential = [*cli, "run", options.experiment, *sets, f"--set=seeds=[{seeds}]"]
    swept = [*cli, "sweep", options.experiment, *sets, f"--grid=seed={seeds}", f"--workers={options.workers}"]
    results = {}
    for name, args in (("one after another", sequential), (f"ray, {options.workers} workers", swept)):
        times = sorted(timed_command(args, env) for _ in range(options.repeats))
        results[name] = times[len(times) // 2]
        print(f"{name}: {[round(t, 1) for t in times]} s", file=sys.stderr)
    base = results["one after another"]
    print(f"{options.runs} runs of {options.experiment} ({', '.join(options.overrides)}), median of {options.repeats}:")
    print(f"{'how':<24} {'seconds':>8} {'runs/min':>9} {'vs sequential':>14}")
    for name, seconds in results.items():
        print(f"{name:<24} {seconds:>8.1f} {options.runs * 60 / seconds:>9.2f} {base / seconds:>13.2f}x")


if __name__ == "__main__":
    main()
