#!/bin/sh
# make test: exports the tiny models with export.py, runs every test program, sums their
# "N passed, N failed" lines and exits non-zero if anything failed.
set -u
PYTHON=${PYTHON:-python3}
# For other machines (make test-aarch64): BIN = where the test programs are, RUN = a prefix that
# starts them (e.g. "qemu-aarch64 -cpu max"), LLAVA = how test_cli.py starts ./llava. The models are
# exported by the host's python either way (the .bin files are the same on every CPU).
BIN=${BIN:-build}
RUN=${RUN:-}
export LLAVA="${LLAVA:-./llava}"
mkdir -p build/models
. test/summary.sh  # run NAME CMD...: runs a test program and adds up its summary line

export_model() {  # export_model NAME DTYPE [extra args]
    name=$1 dtype=$2
    shift 2
    $PYTHON export.py test/models/$name build/models/${name}_$dtype.bin --dtype $dtype "$@" >/dev/null ||
        { echo "== export of $name ($dtype) failed"; total_fail=$((total_fail + 1)); }
}

# q4: the language model in 4 bits (tiny_a with group 32, tiny_b with 16: two of the allowed sizes),
# the vision tower and projector in q8 with group 8 (tiny_b's vision width is 24); each beside its
# f32 twin holding the same dequantized weights (test/export_dequantized.py, see q4_twin below)
Q4_GROUP_tiny_a=32
Q4_GROUP_tiny_b=16
for m in tiny_a tiny_b; do
    export_model $m f32
    export_model $m bf16
    export_model $m q8 --group-size 8
    eval g=\$Q4_GROUP_$m
    export_model $m q4 --group-size $g --vision-group-size 8
    $PYTHON test/export_dequantized.py test/models/$m build/models/${m}_q4twin.bin --dtype q4 --group-size $g \
        --vision-group-size 8 >/dev/null || { echo "== f32 twin of $m q4 failed"; total_fail=$((total_fail + 1)); }
done

# The same models in format 1 (rows, re-packed by llava.c at every load), for formats_agree below
for m in tiny_a tiny_b; do
    eval g=\$Q4_GROUP_$m
    for args in "f32" "bf16" "q8 --group-size 8" "q4 --group-size $g --vision-group-size 8"; do
        set -- $args
        $PYTHON export.py test/models/$m build/models/${m}_${1}_format1.bin --dtype "$@" --format 1 >/dev/null ||
            { echo "== format 1 export of $m ($1) failed"; total_fail=$((total_fail + 1)); }
    done
done

# The leaves of the unity build depend on base.c and libc alone: each compiles by itself, and names no
# other file of the project. And llava.c holds no machine-specific code.
standalone() {
    p=0 f=0
    for src in tokenizer.c video.c; do
        other=$(grep -o '#include "[^"]*"' $src | grep -v '"base.c"')
        if [ -z "$other" ] && ${CC:-cc} -std=gnu11 -O1 -Wall -Wextra -Werror -Wno-unused-function -c $src -o /dev/null; then
            echo "  ok   $src compiles alone with base.c"
            p=$((p + 1))
        else
            echo "  FAIL $src does not compile alone with base.c (${other:-compile error})"
            f=$((f + 1))
        fi
    done
    # the model chapter stays plain C: every machine-specific line lives in matmul.c and kernels.c
    isa=$(grep -nE '__AVX|__SSE|__ARM_NEON|__aarch64__|vector_size|immintrin|arm_neon|_mm(256|512)?_' llava.c)
    if [ -z "$isa" ]; then
        echo "  ok   llava.c has no intrinsics, vector types or instruction-set #if"
        p=$((p + 1))
    else
        echo "  FAIL llava.c has machine-specific lines: $isa"
        f=$((f + 1))
    fi
    echo "$p passed, $f failed"
    [ "$f" -eq 0 ]
}

run standalone standalone
run tokenizer $RUN $BIN/test_tokenizer
run video $RUN $BIN/test_video
run matmul $RUN $BIN/test_matmul
run blocks $RUN $BIN/test_blocks
# on AVX-512 machines, the AVX2 build of kernels.c too (the Makefile builds it there)
if [ -x $BIN/test_blocks_avx2 ]; then run "blocks (AVX2 build)" $RUN $BIN/test_blocks_avx2; fi
# The fuzz harnesses (test/fuzz/) on their seed corpora and on every input that ever crashed one: each
# file must run without a crash or a sanitizer report (fatal() on bad input is fine). make fuzz fuzzes.
# (host builds only: make test-aarch64 runs the rest under qemu)
if [ "$BIN" = build ]; then
    for h in media tokenizer model; do
        run "fuzz replay $h" build/fuzz/replay_$h test/fuzz/corpus/$h test/fuzz/regressions/$h
    done
fi

# Every golden case against the f32 export: 1e-4 of the logit scale, identical greedy tokens.
for dir in test/goldens/tiny_*; do
    case=$(basename "$dir")
    model=$(echo "$case" | cut -d_ -f1-2)
    run "$case f32" $RUN $BIN/test_model build/models/${model}_f32.bin "$dir"
done
# bf16 and q8 weights: how far they move from the f32 goldens. The bound only catches a broken kernel
# (errors of order 1): these random models (weights N(0, 0.2)) amplify the 2^-9 bf16 and ~0.4% q8
# rounding to 1-4% of the logit scale, and greedy tokens may then differ (reported, not failed).
for dir in test/goldens/tiny_*; do
    model=$(basename "$dir" | cut -d_ -f1-2)
    run "$(basename $dir) bf16" $RUN $BIN/test_model build/models/${model}_bf16.bin "$dir" --loose --tol 1e-1
    run "$(basename $dir) q8" $RUN $BIN/test_model build/models/${model}_q8.bin "$dir" --loose --tol 1e-1
done
# q4 weights against the f32 goldens: on these N(0, 0.2) weights the 4-bit rounding (steps of 1/8 of
# a group's largest weight, 16x q8's) moves the logits by 4-85% of their scale (measured on every
# case: tiny_b, group 16, is the worst), so this bound of 1.5 only catches a collapse (NaN, inf, a
# blow-up); the prefill-in-two-calls check inside stays tight. The tight check of the q4 path
# against its own weights is q4_twin.
for dir in test/goldens/tiny_*; do
    model=$(basename "$dir" | cut -d_ -f1-2)
    run "$(basename $dir) q4" $RUN $BIN/test_model build/models/${model}_q4.bin "$dir" --loose --tol 1.5
done
# q4_twin MODEL ARGS...: the q4 file against its f32 twin (the same weights, dequantized by export.py's
# own quantizers) on one question, every --dump stage within 5e-2 of the tensor's scale. Only the
# run-time int8 activation quantization separates the two (measured 0.6-3.0%, as q8 against f32:
# 0.5-3.3%); a wrong nibble, scale or group layout anywhere in the q4 path is an error of order 1.
q4_twin() {
    m=$1
    shift
    d=build/q4twin_$m
    rm -rf $d && mkdir -p $d
    if $LLAVA build/models/${m}_q4.bin "$@" -n 0 -q --dump $d/q4 >/dev/null &&
        $LLAVA build/models/${m}_q4twin.bin "$@" -n 0 -q --dump $d/f32 >/dev/null &&
        $PYTHON compare.py $d/q4 $d/f32 --tol 5e-2; then
        echo "1 passed, 0 failed"
    else
        echo "  FAIL q4 $m differs from its f32 twin"
        echo "0 passed, 1 failed"
    fi
}
run "q4 twin tiny_a video" q4_twin tiny_a -v test/data/city_320x240_420jpeg_4f.y4m -p "What happens in this video?"
run "q4 twin tiny_b image" q4_twin tiny_b -i test/data/chelsea_451x300.ppm -p "What is in the picture?"
run "q4 twin tiny_b text" q4_twin tiny_b -p "Tell me a story about a cat."

# formats_agree MODEL ARGS...: the model's format 1 file (rows, packed at load) and its format 2 file
# (export.py's panels, read in place) give bit-identical --dump stages and answers for every weight
# type, on the CPU's best level and on the portable loop (LLAVA_ISA=scalar, which rebuilds rows from
# the panels). A panel that export.py lays out differently from pack_matrix changes some bits.
formats_agree() {
    m=$1
    shift
    p=0 f=0
    for dtype in f32 bf16 q8 q4; do
        for isa in best scalar; do
            d=build/formats_${m}_${dtype}_$isa
            rm -rf $d && mkdir -p $d
            if [ $isa = best ]; then env=""; else env="LLAVA_ISA=$isa"; fi
            if env $env $LLAVA build/models/${m}_${dtype}_format1.bin "$@" -n 3 -q --dump $d/1 >$d/1.txt &&
                env $env $LLAVA build/models/${m}_$dtype.bin "$@" -n 3 -q --dump $d/2 >$d/2.txt &&
                diff -r $d/1 $d/2 >/dev/null && cmp -s $d/1.txt $d/2.txt; then
                p=$((p + 1))
            else
                echo "  FAIL $m $dtype ($isa): format 1 and format 2 differ (build/formats_${m}_${dtype}_$isa)"
                f=$((f + 1))
            fi
        done
    done
    echo "$p passed, $f failed"
    [ "$f" -eq 0 ]
}
for m in tiny_a tiny_b; do
    for dtype in f32 bf16 q8 q4; do
        run "formats: $m $dtype rows" $RUN $BIN/test_formats build/models/${m}_${dtype}_format1.bin build/models/${m}_$dtype.bin
    done
done
run "formats 1 = 2 tiny_a video" formats_agree tiny_a -v test/data/city_320x240_420jpeg_4f.y4m -p "What happens in this video?"
run "formats 1 = 2 tiny_b image" formats_agree tiny_b -i test/data/chelsea_451x300.ppm -p "What is in the picture?"

# export.py's q8 and q4 quantizers on Llama-like N(0, 0.02) weights with outlier columns
run quantizers $PYTHON test/check_quant.py
run cli $PYTHON test/test_cli.py

echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
