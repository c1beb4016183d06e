#!/bin/sh
# bench/gpu_run.sh: the ONE script a session with an NVIDIA GPU runs. It builds the CPU and GPU
# programs, runs make test_cuda and make bench_cuda, and writes every log under $OUT (or build/gpu_logs):
#   nvidia-smi.txt  build.log  kernels.log  bench_cuda.log  test_cuda.log  summary.txt (also printed)
# Budget: about 5 minutes on an H100/H200 host. The quick, most telling steps go first (the kernel
# tests, then the benchmark), the long golden and command-line tests last; each step has a timeout
# (150 + 60 + 120 + 300 s at most; STEP_TIMEOUT_TESTS overrides the last) so one hang cannot eat the rest.
# Exit status: 0 when the build and the tests passed (the bench never fails on speed).
# Needs: nvcc (PATH or /usr/local/cuda/bin), gcc, make, python3 with numpy (to export the tiny models;
# or carry build/models/*.bin from a machine that has numpy).
set -u
cd "$(dirname "$0")/.."
LOG=${OUT:-build/gpu_logs}
mkdir -p "$LOG" build
export PATH="$PATH:/usr/local/cuda/bin"
status=0
say() { echo "$*" | tee -a "$LOG/summary.txt"; }
: > "$LOG/summary.txt"
t0=$(date +%s)

nvidia-smi > "$LOG/nvidia-smi.txt" 2>&1 || true
say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"
say "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"

# 1. build: ./llava (the CPU reference the tests compare with) and everything CUDA, warnings as errors.
#    sm_90 only here (H100/H200: half the nvcc time of the default fat binary); other cards: CUDA_ARCH=...
ARCH=${CUDA_ARCH:--gencode arch=compute_90,code=sm_90}
if timeout 150 sh -c "make -j8 llava && make -j8 llava_cuda build/test_model_cuda build/bench_cuda build/test_cuda_kernels CUDA_ARCH='$ARCH'" \
        > "$LOG/build.log" 2>&1; then
    say "build: ok ($(grep -c 'warning:' "$LOG/build.log") warnings)"
else
    say "build: FAILED (see build.log)"; tail -n 20 "$LOG/build.log"; exit 1
fi

# 2. the kernels on real-model shapes (a second), 3. the benchmark, 4. make test_cuda (the goldens and
#    GPU vs CPU; it runs the kernel tests again, which costs nothing)
timeout 60 ./build/test_cuda_kernels > "$LOG/kernels.log" 2>&1
rc=$?
say "kernels: $(tail -n 1 "$LOG/kernels.log") (exit $rc)"
grep -E 'FAIL|error' "$LOG/kernels.log" | head -n 20 | tee -a "$LOG/summary.txt"
[ $rc -eq 0 ] || status=1

timeout 120 make bench_cuda CUDA_ARCH="$ARCH" > "$LOG/bench_cuda.log" 2>&1
rc=$?
say "bench_cuda: exit $rc$([ $rc -eq 124 ] && echo ', TIMED OUT')"
grep -E 'bench_cuda|peaks|vision|prefill|attention|first token|decode|gemv|bf16:|q8:|error' "$LOG/bench_cuda.log" | tee -a "$LOG/summary.txt"

timeout ${STEP_TIMEOUT_TESTS:-300} make test_cuda CUDA_ARCH="$ARCH" > "$LOG/test_cuda.log" 2>&1
rc=$?
say "test_cuda: $(tail -n 1 "$LOG/test_cuda.log") (exit $rc$([ $rc -eq 124 ] && echo ', TIMED OUT'))"
grep -E '^== |FAIL|SKIPPED' "$LOG/test_cuda.log" | grep -E 'FAIL|SKIPPED| [1-9][0-9]* failed|: [0-9]+ passed' | head -n 60 | tee -a "$LOG/summary.txt"
[ $rc -eq 0 ] || status=1

say "total: $(( $(date +%s) - t0 )) s; logs in $LOG"
exit $status
