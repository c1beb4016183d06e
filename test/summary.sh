# test/summary.sh: the tally of the test scripts, sourced by test/run_tests.sh (make test) and
# test/run_cuda_tests.sh (make test_cuda). Each test program ends with "N passed, N failed".
total_pass=0
total_fail=0

# run NAME CMD...: runs a test program, echoes its output, adds up its last "N passed, N failed" line.
run() {
    name=$1
    shift
    out=$("$@" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then
        echo "== $name: no summary line (exit $rc): counted as 1 failure"
        total_fail=$((total_fail + 1))
        return
    fi
    p=$(echo "$line" | cut -d' ' -f1)
    f=$(echo "$line" | cut -d' ' -f3)
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    echo "== $name: $p passed, $f failed"
}
