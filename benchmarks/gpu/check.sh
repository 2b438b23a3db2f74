#!/usr/bin/env bash
# The GPU checks of a session lent a device machine, as one prepared script (benchmarks/README.md, "On a GPU").
# Here first: bash benchmarks/gpu/wheels.sh. Then the device tool's run, from the repository root:
#   command "bash benchmarks/gpu/check.sh", carry [".whl"], timeout_s 480
# It installs advbayes, its plugins and the example plugin on the image's Python (no network there: the wheels
# travel in .whl), then runs each check under its own time limit, so one that hangs cannot eat the others'
# time (at most 7.8 minutes in all, leaving a lease of 15 minutes room for one rerun). Each check's output is a file
# in $OUT; summary.txt has one line per check with its exit status and seconds.
# ONLY="tests bench_cost" runs those checks alone (a rerun of what failed). DEVICE=cpu SKIP_INSTALL=1
# PYTHON=.venv/bin/python bash benchmarks/gpu/check.sh runs the same steps here (how the script is tested).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
[[ $PYTHON == */* ]] && PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # the checks cd away
SCALE=${SCALE:-1}  # multiplies every time limit (a slower machine)
mkdir -p "$OUT"
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"

source benchmarks/gpu/lib.sh

if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
    editable=(-e .)
    for plugin in plugins/*/ examples/my-defense-plugin/; do editable+=(-e "$plugin"); done
    check install 90 bash -c "$PYTHON -m pip install -q --no-index --no-deps --no-compile .whl/*.whl && \
        $PYTHON -m pip install -q --no-index --no-deps --no-build-isolation ${editable[*]}" || true
fi
check environment 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
    $PYTHON -c 'import sys, torch, mlflow, advbayes; print(sys.version.split()[0], torch.__version__, \
    torch.cuda.is_available() and torch.cuda.get_device_name(0), mlflow.__version__)'; \
    $PYTHON -m advbayes.cli list defenses 2>&1 | head -40"
# The suite without the slow tests: every run in it picks CUDA by itself (--device auto) where there is one,
# and the CUDA-only test (tests/test_run.py::test_quickstart_on_cuda) runs instead of being skipped.
check tests 150 "$PYTHON" -m pytest -q -n 8 -m "not slow" -p no:cacheprovider --maxfail 20
check quickstart 45 bash -c "cd \$(mktemp -d) && $PYTHON -m advbayes.cli run moons --device $DEVICE && \
    $PYTHON -m advbayes.cli runs"
check bench_cost 60 "$PYTHON" benchmarks/bench_cost.py bnn --dataset mnist-5k --device "$DEVICE" --examples 64
check sample_dimension 40 "$PYTHON" benchmarks/sample_dimension.py --device "$DEVICE" --repeats 3
check autoattack_rand 50 "$PYTHON" benchmarks/autoattack_rand.py --device "$DEVICE" --repeats 1 --steps 10
# Only when asked (ONLY="autoattack hmc d3_step"): the default checks' limits already fill a 480 s call.
[[ " ${ONLY:-} " == *" autoattack "* ]] && check autoattack 120 "$PYTHON" benchmarks/autoattack.py --device "$DEVICE" --examples 64
# hmc: the MNIST MLP's chains at the prior's scale on the device (hmc-mlp-mnist-5k-prior-scale: identity mass,
# pi/2-long trajectories of ~8,000 leapfrog steps once there; ~4 minutes per iteration on one CPU core,
# docs/posteriors.md): one chain of 3 warm-up + 4 kept iterations, clean accuracy only. What to read: the seconds of
# the check over posterior/hmc_leapfrog_steps x 7 (leapfrog steps per second), hmc_step_size, and
# hmc_prior_only_variance_ratio (1 +- 0.044 once at the prior's scale).
[[ " ${ONLY:-} " == *" hmc "* ]] && check hmc 180 bash -c "cd \$(mktemp -d) && $PYTHON -m advbayes.cli run \
    hmc-mlp-mnist-5k-prior-scale --no-track --device $DEVICE --set 'seeds=[0]' --set defense.chains=1 \
    --set defense.warmup=3 --set defense.num_samples=4 --set 'attacks=[\"none\"]'"
[[ " ${ONLY:-} " == *" d3_step "* ]] && check d3_step 60 "$PYTHON" benchmarks/d3_step.py --device "$DEVICE" --repeats 5
# eot_pgd: EOT-PGD against the per-draw loop on the device (the fully Bayesian mnist-cnn reads 0.95-1.12x on 2 CPU
# cores, benchmarks/README.md): whether a GPU, where one pass of all draws is the candidate to beat, keeps it above 1.
[[ " ${ONLY:-} " == *" eot_pgd "* ]] && check eot_pgd 90 "$PYTHON" benchmarks/eot_pgd.py --device "$DEVICE" --repeats 3
# adv_hvi: issue 30's adv-hvi seeds of hvi-vs-advbnn-autoattack-mnist-5k trained until converged and attacked with
# autoattack-rand, the records into $OUT/adv-hvi/records (benchmarks/gpu/adv_hvi.sh says how).
[[ " ${ONLY:-} " == *" adv_hvi "* ]] && check adv_hvi 420 env PYTHON="$PYTHON" DEVICE="$DEVICE" OUT="$OUT" \
    bash benchmarks/gpu/adv_hvi.sh
echo "== summary"; cat "$OUT/summary.txt"
