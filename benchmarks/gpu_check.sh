#!/usr/bin/env bash
# One short session on a lent GPU machine: build the CUDA extension, run every CUDA test, then (only
# when they all pass) the GPU benchmarks, each under a time cap. Logs and JSON go to $OUT (default
# build/gpu_out), the files benchmarks/results/ is filled from.
#
#   OUT=/some/dir [CAP_TESTS=240 CAP_OPS=120 CAP_RENDER=90 CAP_MODEL=90 CAP_TRAIN=150 CAP_TRAIN2=120 SKIP_OPS=1 BENCH_ANYWAY=1] \
#       bash benchmarks/gpu_check.sh [all|tests|bench]
#
# The machine has its own torch and no network: the build uses it (--no-build-isolation --no-deps),
# for Hopper only (TORCH_CUDA_ARCH_LIST=9.0) to keep the build short. Wheels of test-only packages
# missing there (expecttest, for opcheck) can travel in .whl/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu_out}
mkdir -p "$OUT"
what=${1:-all}
start=$(date +%s)
stamp() { echo "[gpu_check] $(( $(date +%s) - start ))s: $*"; }
export PYTHONUNBUFFERED=1 STYLESDF_FAST_REQUIRE_KERNELS=1

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

stamp "build (pip install --no-build-isolation --no-deps .)"
if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
        python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; stamp "build FAILED"; exit 1
fi
grep -E "^\[[0-9]+/[0-9]+\]" "$OUT/build.log" | sed -E 's/ .*-c (\S+) .*/ \1/' | tail -12

tests_ok=1
if [ "$what" != "bench" ]; then
    stamp "CUDA tests"
    # from tests/: the source tree's package (no compiled _C) must not shadow the installed one
    (cd tests && timeout "${CAP_TESTS:-240}" python3 -m pytest -q -k cuda -p no:cacheprovider \
        -n "${TEST_WORKERS:-8}" -rfE --timeout 120 test_extension.py test_film_siren.py \
        test_fused_leaky_relu.py test_sdf_volume_render.py test_upfirdn2d.py) > "$OUT/pytest_cuda.log" 2>&1
    rc=$?
    grep -E "^(FAILED|ERROR)" "$OUT/pytest_cuda.log" | head -40
    tail -3 "$OUT/pytest_cuda.log"
    [ $rc -eq 0 ] || tests_ok=0
fi

if [ "$what" = "tests" ] || { [ $tests_ok -eq 0 ] && [ "$what" != "bench" ] && [ -z "${BENCH_ANYWAY:-}" ]; }; then
    stamp "done (benchmarks skipped)"; exit 0
fi
bench() {  # script label cap args...: writes $OUT/<label>_cuda.{json,txt}
    local script=$1 label=$2 cap=$3; shift 3
    stamp "benchmark $label"
    timeout "$cap" python3 "benchmarks/$script.py" --device cuda --json "$OUT/${label}_cuda.json" "$@" \
        > "$OUT/${label}_cuda.txt" 2>&1 || echo "[gpu_check] $label exited $?"
    tail -25 "$OUT/${label}_cuda.txt"
}
[ -n "${SKIP_OPS:-}" ] || bench ops_speed ops_speed "${CAP_OPS:-120}"
bench render_speed render_speed "${CAP_RENDER:-90}"
bench model_speed model_speed "${CAP_MODEL:-90}"
# stage 2 with its R1 and path-length terms last: the reference's depthwise-conv double backward is
# slow on cuDNN (hundreds of ms per call), so it gets few rounds and its own file
bench train_speed train_speed "${CAP_TRAIN:-150}" --cases stage1,stage2_lazy_reg --repeats 5 --max-seconds 5
bench train_speed train_speed_stage2 "${CAP_TRAIN2:-120}" --cases stage2 --repeats 2 --max-seconds 5
stamp "done"
