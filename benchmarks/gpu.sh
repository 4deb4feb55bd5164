#!/usr/bin/env bash
# Every GPU figure the README quotes, and the CUDA tests, in one go on a machine with a CUDA GPU
# whose python3 already has a CUDA build of torch (a cluster's image, say) and no package index.
#
#   here:   make gpu-wheels              # .whl/: what such a Python lacks (smp, plotly, ipywidgets)
#   there:  bash benchmarks/gpu.sh [--cpu] [STEP ...]
#
# --cpu runs every step on the CPU instead, the zoo as --quick (data/zoo-quick) and the
# benchmarks on it: a dry run, to check a Python like the GPU machine's before a GPU is lent.
# Steps, in this order by default: zoo (build the default zoo on the GPU, timed), tests
# (pytest -m cuda), merge, widgets (with and without CUDA graphs), analysis (the 11 x 11 sweep).
# The wheels go into a folder of their own and the checkout onto PYTHONPATH, so the machine's
# torch stays as it is (the package pins another). Each step's output is also written to
# $OUT/STEP.log (OUT defaults to artifacts/gpu); the script goes on past a failed step and exits
# with the number of steps that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-artifacts/gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        .whl/*.whl || exit 1
    export PYTHONPATH=$site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=cuda zoo=() quick=()
if [ "${1:-}" = --cpu ]; then
    device=cpu zoo=(--zoo data/zoo-quick) quick=(--quick)
    shift
    python3 -c "import torch; print(torch.__version__, 'on the CPU (a dry run)')"
else
    python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
        { echo "gpu.sh: no CUDA device for this python3's torch (--cpu: a dry run)" >&2; exit 1; }
    python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
fi

failed=0
step() {  # step NAME COMMAND...: run it, show and keep its output, count a failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=$?
    [ "$rc" = 0 ] || { echo "== $name failed (exit $rc)"; failed=$((failed + 1)); }
}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(zoo tests merge widgets analysis)
for name in "${steps[@]}"; do
    case $name in
        zoo) step zoo bash -c "time python3 -m lwmm_lab.cli zoo build --device $device ${quick[*]}" ;;
        # The notebooks' tests import Jupyter's packages at collection, which a GPU image lacks
        # (none of them is a CUDA test); collecting them would stop the whole run.
        tests) step tests python3 -m pytest -q -m cuda -p no:cacheprovider \
            --ignore=tests/test_notebooks.py ;;
        # M = 5 three times, each in a process of its own: the target's figure, the re-merge
        # alone against the floor, varies from run to run (0.41 and 0.48 ms on one H100).
        merge) step merge python3 benchmarks/merge.py --device $device --models 2 5 10 5 5 \
            "${zoo[@]}" ;;
        widgets) step widgets bash -c "python3 benchmarks/widgets.py --profile ${zoo[*]} &&
            python3 benchmarks/widgets.py --eager ${zoo[*]}" ;;
        analysis) step analysis python3 benchmarks/analysis.py --device $device "${zoo[@]}" ;;
        *) echo "gpu.sh: no step '$name' (zoo, tests, merge, widgets, analysis)" >&2; exit 2 ;;
    esac
done
exit "$failed"
