#!/usr/bin/env bash
# The GPU check, one command on a CUDA host (well under 10 minutes):
#   1. the repository's GPU tests              pytest -m gpu
#   2. the hidden suite's GPU variant          (train(device=None) must train on CUDA and converge)
#   3. the whole hidden suite with --device cuda (every algebraic check on the GPU)
#   4. the training benchmark on the GPU       benchmarks/run.py --only training --device cuda
# against the reference solution, then one summary. Exit status: 1 if any part failed.
# On a host without CUDA it says so, runs parts 1-2 on the CPU (their GPU tests are skipped,
# which checks the markers), and exits 0.
#
# Usage: bash benchmarks/gpu_check.sh        (from anywhere; logs go to $GPU_CHECK_LOGS or a tmp dir)
set -u
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python}
SUBMISSION=solutions/normalizing_flows
HIDDEN=tests/hidden/normalizing_flows
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d -t gpu-check-XXXXXX)}
summary=()
failed=0

# part NAME SECONDS COMMAND...: run with a time limit, log it, record "ok"/"FAILED" and the time.
part() {
    local name=$1 limit=$2
    shift 2
    local log="$LOGS/${name// /_}.log" start=$SECONDS status
    echo "== $name: $*"
    timeout "$limit" "$@" >"$log" 2>&1
    status=$?
    # pytest exit 5: nothing selected (no GPU test in that tree), which is not a failure.
    if [ "$status" -eq 0 ] || [ "$status" -eq 5 ]; then
        summary+=("ok      $(printf '%4d' $((SECONDS - start))) s  $name")
    else
        [ "$status" -eq 124 ] && echo "   timed out after $limit s"
        summary+=("FAILED  $(printf '%4d' $((SECONDS - start))) s  $name (exit $status; $log)")
        failed=1
    fi
    tail -n 3 "$log" | sed 's/^/   /'
}

if $PYTHON -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    cuda=1
    echo "CUDA: $($PYTHON -c 'import torch; print(torch.cuda.get_device_name(0))')"
else
    cuda=0
    echo "no CUDA device on this host: the GPU tests will be skipped; running the CPU side only"
fi

part "repo gpu tests" 120 $PYTHON -m pytest -q -p no:cacheprovider -m gpu
part "hidden gpu variant" 180 \
    $PYTHON -m pytest -q -p no:cacheprovider --assert=plain $HIDDEN -m gpu --submission=$SUBMISSION
if [ "$cuda" -eq 1 ]; then
    part "hidden suite on cuda" 180 \
        $PYTHON -m pytest -q -p no:cacheprovider --assert=plain $HIDDEN --device cuda \
        --submission=$SUBMISSION
    part "training benchmark on cuda" 300 \
        $PYTHON benchmarks/run.py --only training --device cuda --save "$LOGS/training-cuda.md"
fi

echo
echo "== GPU check summary ($([ "$cuda" -eq 1 ] && echo CUDA || echo 'no CUDA: CPU side only'); logs: $LOGS)"
printf '%s\n' "${summary[@]}"
[ "$cuda" -eq 1 ] && [ -f "$LOGS/training-cuda.md" ] && grep '^|' "$LOGS/training-cuda.md"
exit $failed
