#!/bin/sh
# make test_cuda: the GPU build (./llava_cuda, build/test_model_cuda) against the same goldens as
# `make test`, and against the CPU build on the same files and prompts. Prints one SKIPPED line and
# exits 0 when there is no GPU (no nvidia-smi, none listed, or cudaGetDeviceCount == 0).
# Last line: "N passed, N failed"; exits non-zero if anything failed.
set -u
PYTHON=${PYTHON:-python3}

skip() { echo "test_cuda: SKIPPED: $1"; echo "0 passed, 0 failed (skipped: no GPU)"; exit 0; }
command -v nvidia-smi >/dev/null 2>&1 || skip "no GPU (nvidia-smi not found)"
nvidia-smi -L 2>/dev/null | grep -q '^GPU' || skip "no GPU (nvidia-smi lists none)"

mkdir -p build/models
for m in tiny_a tiny_b; do  # the exports of test/run_tests.sh, when `make test` has not run yet
    [ -f build/models/${m}_f32.bin ] || $PYTHON export.py test/models/$m build/models/${m}_f32.bin --dtype f32 >/dev/null
    [ -f build/models/${m}_bf16.bin ] || $PYTHON export.py test/models/$m build/models/${m}_bf16.bin --dtype bf16 >/dev/null
    [ -f build/models/${m}_q8.bin ] || $PYTHON export.py test/models/$m build/models/${m}_q8.bin --dtype q8 --group-size 8 >/dev/null
done
# cudaGetDeviceCount == 0 (or a driver too old for this CUDA): llava_cuda says "no GPU found"
probe=$(./llava_cuda build/models/tiny_a_f32.bin -p hi -n 1 -q 2>&1 >/dev/null)
case "$probe" in *"no GPU found"*) skip "$probe" ;; esac

. test/summary.sh  # run NAME CMD...: as in test/run_tests.sh

# 0. The kernels on real-model shapes against double-precision host loops (test/test_cuda_kernels.cu):
#    the vector GEMVs, the decode attention's key chunks and the tensor-core prompt attention, which the
#    tiny goldens (head_dim 8, rows of 32) never reach.
run "kernels (gpu)" build/test_cuda_kernels

# 1. test/test_model.c, compiled with -DLLAVA_CUDA: every stage of every golden case on the GPU, with
#    the CPU's tolerances.
#    f32, 1e-4 of the golden's scale: the GPU path is f32 end to end for f32 weights (f32 cuBLAS with
#    the pedantic compute type, so no TF32; f32 KV cache; accurate expf/erff), so it differs from the
#    CPU only in summation order (~1e-6 relative), far inside the bound the CPU meets.
#    bf16 and q8, --loose --tol 1e-1: as `make test` on the CPU. These random models (weights N(0, 0.2))
#    amplify the 2^-9 bf16 rounding to 1-4% of the logit scale. On the GPU, bf16 weights meet
#    activations rounded to bf16 in the tensor-core GEMM (as the CPU's AVX512-BF16 path); q8 prefill
#    runs the same GEMM on weights dequantized to bf16 (one more 2^-9 rounding instead of the CPU's
#    ~0.4% int8 activation rounding), q8 decode reads int8 with f32 activations. Both stay an order of
#    magnitude inside 1e-1, which catches a broken kernel (errors of order 1).
for dir in test/goldens/tiny_*; do
    case=$(basename "$dir")
    model=$(echo "$case" | cut -d_ -f1-2)
    run "$case f32 (gpu)" build/test_model_cuda build/models/${model}_f32.bin "$dir"
    run "$case bf16 (gpu)" build/test_model_cuda build/models/${model}_bf16.bin "$dir" --loose --tol 1e-1
    run "$case q8 (gpu)" build/test_model_cuda build/models/${model}_q8.bin "$dir" --loose --tol 1e-1
done

# 2. The command line end to end through ./llava_cuda: test/test_cli.py unchanged (ids, streamed text,
#    greedy tokens, --dump files at 1e-4, chat, every error path).
LLAVA=./llava_cuda run "cli (gpu)" $PYTHON test/test_cli.py

# 3. GPU against CPU on the same file and prompt: logits and features (test/test_cuda_vs_cpu.py).
run "gpu vs cpu" $PYTHON test/test_cuda_vs_cpu.py

echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
