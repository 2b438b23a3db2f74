"""Time the CLI's quick commands as whole processes, as a shell runs them: --help, list, show, a TAB completion,
and a whole small run.

`list` and `show` are timed twice: uncached (ADVBAYES_NO_CACHE=1: what the first call after an install or a
registry edit costs) and answered from the output cache. The reference is `python -c "import torch"`, the floor
of any command that imports torch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], env: dict[str, str], repeats: int) -> float:
    """Median wall-clock seconds of `command` over `repeats` runs (after one unmeasured run that warms the OS
    file cache and, where the command uses it, the output cache)."""
    subprocess.run(command, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    executable = shutil.which("advbayes") or str(Path(sys.executable).with_name("advbayes"))
    cache = tempfile.mkdtemp(prefix="advbayes-cache-")
    base = {**os.environ, "ADVBAYES_CACHE_DIR": cache}
    base.pop("ADVBAYES_NO_CACHE", None)
    uncached = {**base, "ADVBAYES_NO_CACHE": "1"}
    completion = {**base, "_ADVBAYES_COMPLETE": "bash_complete", "COMP_WORDS": "advbayes show pgd", "COMP_CWORD": "2"}
    torch_floor = timed([sys.executable, "-c", "import torch"], base, args.repeats)
    rows = [
        ("advbayes --help", timed([executable, "--help"], base, args.repeats)),
        ("TAB: advbayes show pgd<TAB>", timed([executable], completion, args.repeats)),
        ("advbayes list (cached)", timed([executable, "list"], base, args.repeats)),
        ("advbayes show pgd-20 (cached)", timed([executable, "show", "pgd-20"], base, args.repeats)),
        ("advbayes list (uncached)", timed([executable, "list"], uncached, args.repeats)),
        ("advbayes show pgd-20 (uncached)", timed([executable, "show", "pgd-20"], uncached, args.repeats)),
        # a whole small run (5 epochs of two moons, untracked): what every run, sweep task and DDP rank pays to start
        ("advbayes run moons --no-track", timed([executable, "run", "moons", "--no-track"], base, args.repeats)),
    ]
    shutil.rmtree(cache, ignore_errors=True)
    print(f"median of {args.repeats} runs each; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'command':34s} {'seconds':>8s} {'vs import torch':>16s}")
    for name, seconds in rows:
        print(f"{name:34s} {seconds:8.3f} {seconds / torch_floor:15.2f}x")
    floor_name = 'python -c "import torch"'
    print(f"{floor_name:34s} {torch_floor:8.3f} {1.0:15.2f}x")


if __name__ == "__main__":
    main()
