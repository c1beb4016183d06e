#!/bin/sh
# make portability: every architecture it builds for runs its tests. For each architecture named on
# the command line (default: aarch64 riscv64 s390x i686; armhf is also known) whose Debian cross
# compiler and qemu-user are installed: a static cross-build of llava, every C test program and
# bench/bench.c with -Wall -Wextra (make port-bins, into build-port/ARCH/; any warning fails the
# architecture), then under qemu-user
#   test_tokenizer, test_video, test_matmul --quick, test_blocks,
#   test_model on one video and one image golden, each against the f32, the q8 and the q4 export
#   (q4 with run_tests.sh's tiny_b groups and its bound of 1.5: the 4-bit rounding itself moves these
#   logits by up to 85%),
#   one greedy generation with the tiny model (f32, 2-frame clip, 16 tokens) compared with this
#   machine's ./llava: the same tokens and the same text.
# s390x is big-endian: the model files are little-endian and the loader refuses them with "big-endian
# hosts are not supported", so there test_model and the generation count as "refused (expected)" when
# they end with exactly that line (a loader that byte-swaps instead is checked as everywhere else); the
# other test programs run as everywhere.
# An architecture whose compiler or qemu is missing is SKIPPED. Prints a summary table; exits non-zero
# if any architecture that ran failed. Logs: build-port/ARCH/*.log and *.out.
set -u
PYTHON=${PYTHON:-python3}
MAKE=${MAKE:-make}
JOBS=${JOBS:-2}
ARCHS=${*:-aarch64 riscv64 s390x i686}
VIDEO=tiny_b_city_320x240_444_2f
IMAGE=tiny_b_image_chelsea_451x300
REFUSAL="big-endian hosts are not supported"
t_all=$(date +%s)
for arch in $ARCHS; do
    case $arch in aarch64 | riscv64 | s390x | i686 | armhf) ;;
        *) echo "portability: unknown architecture $arch (aarch64 riscv64 s390x i686 armhf)"; exit 2 ;; esac
done

# this machine's side: ./llava (make portability builds it first) and the exported tiny models
mkdir -p build/models
for m in tiny_a tiny_b; do
    [ -f build/models/${m}_f32.bin ] || $PYTHON export.py test/models/$m build/models/${m}_f32.bin --dtype f32 >/dev/null || exit 1
    [ -f build/models/${m}_q8.bin ] || $PYTHON export.py test/models/$m build/models/${m}_q8.bin --dtype q8 --group-size 8 >/dev/null || exit 1
done
[ -f build/models/tiny_b_q4.bin ] || $PYTHON export.py test/models/tiny_b build/models/tiny_b_q4.bin --dtype q4 --group-size 16 \
    --vision-group-size 8 >/dev/null || exit 1
gen() {  # gen OUTDIR CMD...: the generation, its text in OUTDIR/gen.txt, its tensors in OUTDIR/gen/
    dir=$1
    shift
    rm -rf "$dir/gen"
    "$@" build/models/tiny_b_f32.bin -p "What happens in this video?" -v test/data/city_320x240_444_2f.y4m \
        -f 2 -n 16 --threads 2 -q --dump "$dir/gen" >"$dir/gen.txt" 2>"$dir/gen.err"
}
mkdir -p build-port/host
if ! gen build-port/host ./llava || [ ! -f build-port/host/gen/generated.npy ]; then
    echo "portability: the host's own generation failed:"; cat build-port/host/gen.err; exit 1
fi

table=""
any_fail=0
for arch in $ARCHS; do
    case $arch in
        aarch64) triple=aarch64-linux-gnu qemu=qemu-aarch64 flags="" ;;
        riscv64) triple=riscv64-linux-gnu qemu=qemu-riscv64 flags="" ;;
        s390x) triple=s390x-linux-gnu qemu=qemu-s390x flags="" ;;
        # x87 arithmetic (i686's default) rounds floats differently from IEEE single/double: the pixel
        # values and the frame choice would differ from the processor's. SSE2 (Pentium 4 and later).
        i686) triple=i686-linux-gnu qemu=qemu-i386 flags="-msse2 -mfpmath=sse" ;;
        armhf) triple=arm-linux-gnueabihf qemu=qemu-arm flags="" ;;
    esac
    cc=$triple-gcc
    if ! command -v $cc >/dev/null 2>&1 || ! command -v $qemu >/dev/null 2>&1; then
        echo "=== $arch: SKIPPED: needs $cc and $qemu (apt-get install gcc-$triple qemu-user)"
        table="$table$(printf '%-8s| %-8s| %-9s| %-44s| %-19s| %s' $arch SKIPPED - - - -)\n"
        continue
    fi
    t0=$(date +%s)
    dir=build-port/$arch
    mkdir -p $dir
    echo "=== $arch: building with $cc $flags"
    built=yes
    $MAKE --no-print-directory -j$JOBS port-bins PORT_ARCH=$arch PORT_CC=$cc PORT_ARCH_FLAGS="$flags" \
        >$dir/build.out 2>&1 || built=no
    # the compilers' messages, kept per binary (a rerun that rebuilds nothing still counts them)
    warnings=$(cat $dir/*.log 2>/dev/null | grep -c 'warning:')
    grep -h -A3 'warning:\|error:' $dir/*.log 2>/dev/null | head -n 40
    [ $built = yes ] || { tail -n 20 $dir/build.out; }
    t_build=$(($(date +%s) - t0))

    pass=0 fail=0 refused=0 checks=0 failed_names=""
    # check NAME CMD...: runs a test program under qemu; its last "N passed, N failed" line counts
    check() {
        name=$1
        shift
        out=$dir/$(echo "$name" | tr ' /' '__').out
        timeout 600 "$@" >"$out" 2>&1
        rc=$?
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
        if [ "$arch" = s390x ] && grep -q "$REFUSAL" "$out" && [ $rc -ne 0 ]; then
            refused=$((refused + 1))
            echo "  refused (expected on big-endian)  $name"
            return
        fi
        if [ -z "$line" ] || { [ $rc -ne 0 ] && [ "$(echo "$line" | cut -d' ' -f3)" -eq 0 ]; }; then
            fail=$((fail + 1)) failed_names="$failed_names $name"
            echo "  FAIL $name: exit $rc, ${line:-no summary line} ($out)"
            return
        fi
        p=$(echo "$line" | cut -d' ' -f1) f=$(echo "$line" | cut -d' ' -f3)
        checks=$((checks + p))
        if [ "$f" -eq 0 ]; then pass=$((pass + 1)); echo "  ok   $name: $line"
        else fail=$((fail + 1)) failed_names="$failed_names $name"; echo "  FAIL $name: $line ($out)"
            grep -m 5 FAIL "$out" | sed 's/^/         /'; fi
    }
    gen_result=-
    if [ $built = yes ]; then
        check tokenizer $qemu $dir/test_tokenizer
        check video $qemu $dir/test_video
        check matmul $qemu $dir/test_matmul --quick
        check blocks $qemu $dir/test_blocks
        for g in $VIDEO $IMAGE; do
            model=$(echo $g | cut -d_ -f1-2)
            check "$g f32" $qemu $dir/test_model build/models/${model}_f32.bin test/goldens/$g
            check "$g q8" $qemu $dir/test_model build/models/${model}_q8.bin test/goldens/$g --loose --tol 1e-1
            check "$g q4" $qemu $dir/test_model build/models/${model}_q4.bin test/goldens/$g --loose --tol 1.5
        done
        # the generation: the same greedy tokens and text as this machine's
        gen $dir $qemu $dir/llava
        rc=$?
        if [ "$arch" = s390x ] && [ $rc -ne 0 ] && grep -q "$REFUSAL" $dir/gen.err; then
            gen_result="refused (expected)"
        elif [ $rc -eq 0 ] && cmp -s $dir/gen/generated.npy build-port/host/gen/generated.npy &&
             cmp -s $dir/gen.txt build-port/host/gen.txt; then
            gen_result="equal (16 tokens)"
        else
            gen_result="FAIL (exit $rc)"
            echo "  FAIL generation: $(tail -n 1 $dir/gen.err)"
            echo "       host:  $(cat build-port/host/gen.txt)"
            echo "       $arch: $(cat $dir/gen.txt)"
        fi
        echo "  generation: $gen_result"
    fi
    t=$(($(date +%s) - t0))
    tests="$pass passed, $fail failed"
    [ $refused -eq 0 ] || tests="$tests, $refused refused"
    tests="$tests ($checks checks)"
    ok=yes
    { [ $built = yes ] && [ "$warnings" -eq 0 ] && [ $fail -eq 0 ]; } || ok=no
    case $gen_result in FAIL*) ok=no ;; esac
    [ $ok = yes ] || any_fail=1
    echo "=== $arch: $([ $ok = yes ] && echo ok || echo FAILED) in ${t}s (build ${t_build}s)${failed_names:+; failed:$failed_names}"
    table="$table$(printf '%-8s| %-8s| %-9s| %-44s| %-19s| %s' $arch $built "$warnings" "$tests" "$gen_result" "${t}s")\n"
done

echo
printf '%-8s| %-8s| %-9s| %-44s| %-19s| %s\n' arch built warnings "tests passed/failed" generation time
printf '%b' "$table"
echo "total $(($(date +%s) - t_all))s"
[ $any_fail -eq 0 ]
