# check NAME SECONDS COMMAND...: what benchmarks/gpu/check.sh runs each check with (sourced; tested alone).
# Needs OUT (the folder of the logs and summary.txt) and SCALE (multiplies every limit); honours ONLY.
check() {  # COMMAND under a time limit, its output in $OUT/NAME.log, a line in $OUT/summary.txt
    local name=$1 limit=$(($2 * SCALE)) start=$SECONDS status
    shift 2
    [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && return 0
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    status=$?
    local line="$name: exit $status$([[ $status == 124 ]] && echo " (time limit)") in $((SECONDS - start)) s"
    echo "$line" | tee -a "$OUT/summary.txt"
    tail -n 4 "$OUT/$name.log"
}
