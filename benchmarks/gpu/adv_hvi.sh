#!/usr/bin/env bash
# Issue 30's adv-hvi seeds of hvi-vs-advbnn-autoattack-mnist-5k (ADV_HVI_SEEDS, default "1 2"): each trained until the
# convergence rule stops it (300-600 epochs; 14-28 s each on one 2-core CPU) and attacked with autoattack-rand, one
# process per seed side by side, each in its own store $OUT/adv-hvi/sSEED/mlflow.db (log.txt beside it). The records
# go to $OUT/adv-hvi/records: copy them into docs/records/hvi-vs-advbnn-autoattack-mnist-5k/ and `make findings`.
# Run by `ONLY=adv_hvi bash benchmarks/gpu/check.sh` (needs PYTHON, DEVICE, OUT); ADV_HVI_SET adds --set options
# (the CPU test of this script shrinks the run with them). A run stopped by the time limit keeps its checkpoint:
# `advbayes run --resume RUN_ID --tracking-uri sqlite:///.../mlflow.db` continues it.
set -uo pipefail
seeds=${ADV_HVI_SEEDS:-1 2}
pids=()
status=0
for seed in $seeds; do
    mkdir -p "$OUT/adv-hvi/s$seed"
    # shellcheck disable=SC2086  # ADV_HVI_SET is a list of options
    "$PYTHON" -m advbayes.cli run hvi-vs-advbnn-autoattack-mnist-5k --device "$DEVICE" --set "seeds=[$seed]" \
        --set defense=adv-hvi ${ADV_HVI_SET:-} --tracking-uri "sqlite:///$OUT/adv-hvi/s$seed/mlflow.db" \
        > "$OUT/adv-hvi/s$seed/log.txt" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
for seed in $seeds; do
    echo "== seed $seed"; tail -n 3 "$OUT/adv-hvi/s$seed/log.txt"
    "$PYTHON" -m advbayes.cli export hvi-vs-advbnn-autoattack-mnist-5k --out "$OUT/adv-hvi/records" \
        --tracking-uri "sqlite:///$OUT/adv-hvi/s$seed/mlflow.db" || status=$?
done
exit "$status"
