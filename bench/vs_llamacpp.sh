#!/bin/sh
# bench/vs_llamacpp.sh: llava.c beside llama.cpp on the same machine, same workload, same threads.
#
#     sh bench/vs_llamacpp.sh LLAMA_BUILD_DIR [MODEL_DIR [LLAMA_AVX2_BUILD_DIR]]
#
# LLAMA_BUILD_DIR is an existing llama.cpp CMake build (it needs bin/llama-bench); this script fetches
# and builds nothing of llama.cpp. MODEL_DIR (default build/) holds the random-weight models with the
# Vicuna-7B shapes of LLaVA-NeXT-Video-7B's language model:
#     random7b_q8.bin (random7b_q4.bin, random7b_bf16.bin if present)   bench/make_random_model.py OUT --dtype q8|q4|bf16
#     rand7b_q8_0.gguf, rand7b_q4_0.gguf (rand7b_f16.gguf)  bench/make_random_gguf.py OUT --type q8_0|...
# Missing models are skipped. Workload: a NP=512-token prompt, then NG=64 new tokens, THREADS=2:
#   llava.c:   ./llava MODEL --ids "<NP ids>" -n NG --threads THREADS -s 1 (its own timing lines);
#   llama.cpp: llama-bench -m MODEL -p NP -n 0 -t THREADS -r 1 (the prefill, from an empty KV cache),
#              then llama-bench -m MODEL -p 0 -n NG -d DEPTH ... (the decode after DEPTH tokens of context,
#              default NP: where llava.c's decode starts; DEPTH=0, or a llama-bench without -d, starts it
#              at an empty cache, which reads less KV cache per token than llava.c does). Give llama.cpp
#              its fastest settings through LLAMA_BENCH_ARGS (on a Zen 5 VM, "-fa off": its decode after
#              512 tokens was 9.4-9.9 tokens/s with flash attention off, 7.9 with its default).
# ROUNDS=3 rounds, interleaved (every engine once per round, in turn), with bench/bandwidth.c's
# read-bandwidth probe before the first run and after every run. The table gives medians over the
# rounds: prefill and decode tokens/s; for every row but llava.c q8's, llava.c q8 (same ISA pair)
# divided by the row (below 1: the row is faster); decode GB/s = decode tokens/s x the bytes of the language model's weight matrices in that
# format (6.607e9 weights, lm_head included; the KV cache is not counted) and that as % of the median
# of the probes taken just before and just after the row's runs.
# ISA pairs: llava.c picks its best kernels (or what LLAVA_ISA caps them to) beside LLAMA_BUILD_DIR;
# with a third argument, a second pair follows: llava.c with LLAVA_ISA=avx2 beside that llama.cpp
# build (meant for an AVX2-only one: native tuning off, AVX-512 off; the ISA column reads its CMake cache).
# Env: THREADS ROUNDS NP NG DEPTH LLAVA (default ./llava, build it with `make`) LLAMA_BENCH_ARGS CC;
# TABLE_ONLY=1 runs nothing and prints the table of the runs logged in build/vs_llamacpp.log (say,
# of an interrupted run; give the same arguments).
# A benchmark: it never fails on speed; a run that fails shows as "-" in the table.
set -u
usage() { echo "usage: sh bench/vs_llamacpp.sh LLAMA_BUILD_DIR [MODEL_DIR [LLAMA_AVX2_BUILD_DIR]]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
LLAMA_NATIVE=$1
MODELS=${2:-build}
LLAMA_AVX2=${3:-}
THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-3} NP=${NP:-512} NG=${NG:-64}
DEPTH=${DEPTH:-$NP}
LLAVA=${LLAVA:-./llava}
CC=${CC:-cc}
LLAMA_BENCH_ARGS=${LLAMA_BENCH_ARGS:-}
TABLE_ONLY=${TABLE_ONLY:-0}

for d in "$LLAMA_NATIVE" $LLAMA_AVX2; do
    [ -x "$d/bin/llama-bench" ] || { echo "vs_llamacpp.sh: no $d/bin/llama-bench (build llama.cpp's llama-bench target there)" >&2; exit 2; }
done
[ -x "$LLAVA" ] || { echo "vs_llamacpp.sh: no $LLAVA (run make)" >&2; exit 2; }
mkdir -p build
if [ "$TABLE_ONLY" != 1 ]; then
    $CC -O3 -march=native -o build/bandwidth bench/bandwidth.c -pthread || exit 2
fi
printf '#include "matmul.c"\n#include <stdio.h>\nint main(void) { puts(matmul_isa_name()); return 0; }\n' > build/isa_name.c
$CC -O1 -march=native -I. -o build/isa_name build/isa_name.c -lm -pthread || exit 2

log=build/vs_llamacpp.log   # every probe and run, in order (kept for inspection)
[ "$TABLE_ONLY" = 1 ] && [ ! -f $log ] && { echo "vs_llamacpp.sh: TABLE_ONLY=1 but no $log" >&2; exit 2; }
[ "$TABLE_ONLY" = 1 ] || : > $log
[ "$TABLE_ONLY" = 1 ] && ROUNDS=$(awk -F'\t' '$1 == "R" { c[$2 "|" $3 "|" $4]++ } END { m = 0; for (k in c) if (c[k] > m) m = c[k]; print m }' $log)
probe() { build/bandwidth "$THREADS" 1024 5 | sed -n 's/^read bandwidth: \([0-9.]*\) GB\/s.*/P\t\1/p' >> $log; }

# llama.cpp's ISA, from its CMake cache
llama_isa() {
    c=$1/CMakeCache.txt
    v() { sed -n "s/^$1:BOOL=//p" "$c" 2>/dev/null | head -1; }
    if [ "$(v GGML_NATIVE)" = ON ]; then echo "native (-march=native)"
    elif [ "$(v GGML_AVX512)" = ON ]; then echo "AVX-512 (not native)"
    elif [ "$(v GGML_AVX2)" = ON ]; then echo "AVX2 only"
    else echo "unknown"; fi
}

# The prompt: BOS, then NP-1 pseudo-random ordinary token ids (fixed sequence).
IDS=$(awk -v n="$NP" 'BEGIN { s = 12345; printf "1"; for (i = 1; i < n; i++) { s = (s * 1103515245 + 12345) % 2147483648; printf " %d", 3 + s % 31997 } }')

# llama-bench's depth argument for the decode of the build in $1 ("-d DEPTH", or nothing: no -d there)
depth_arg() {
    [ "$DEPTH" -gt 0 ] || return 0
    if "$1/bin/llama-bench" --help 2>&1 | grep -q -- '--n-depth'; then echo "-d $DEPTH"
    else echo "   note: $1's llama-bench has no -d: its decode starts at an empty KV cache" >&2; fi
}

# Pairs: "label|LLAVA_ISA value (empty: as in the environment)|llama.cpp build dir|its depth argument"
PAIRS="native|${LLAVA_ISA:-}|$LLAMA_NATIVE|$(depth_arg "$LLAMA_NATIVE")"
[ -n "$LLAMA_AVX2" ] && PAIRS="$PAIRS
avx2|avx2|$LLAMA_AVX2|$(depth_arg "$LLAMA_AVX2")"

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo "== llava.c vs llama.cpp: $CPU, $(nproc) cores visible, $THREADS threads, prompt $NP tokens + $NG new, $ROUNDS rounds"
echo "   llama.cpp's decode after $DEPTH tokens of context (llava.c's: after the $NP-token prompt)"
echo "   models in $MODELS; llama.cpp: $LLAMA_NATIVE${LLAMA_AVX2:+ and $LLAMA_AVX2}"
[ "$TABLE_ONLY" = 1 ] && echo "   (TABLE_ONLY: the runs logged in $log)"
[ "$TABLE_ONLY" = 1 ] || probe

r=1
while [ "$TABLE_ONLY" != 1 ] && [ $r -le "$ROUNDS" ]; do
    echo "$PAIRS" | while IFS='|' read -r label isa ldir dargs; do
        if [ -n "$isa" ]; then isaenv="LLAVA_ISA=$isa"; else isaenv=""; fi
        for w in q8 q4 bf16; do
            m=$MODELS/random7b_$w.bin
            [ -f "$m" ] || continue
            echo "   round $r, $label: llava.c $w" >&2
            # a warm-up run first, as llama-bench makes its own: the models of both engines together may
            # not fit in the page cache, and a format 2 file is read by the first pass that touches it
            env $isaenv "$LLAVA" "$m" -p "Hi" -n 1 --threads "$THREADS" -q >/dev/null 2>&1 </dev/null
            out=$(env $isaenv "$LLAVA" "$m" --ids "$IDS" -n "$NG" --threads "$THREADS" -s 1 2>&1 >/dev/null </dev/null)
            pf=$(echo "$out" | sed -n 's/^prompt: .*(\([0-9.]*\) tokens\/s)$/\1/p')
            dc=$(echo "$out" | sed -n 's/^generated: .*(\([0-9.]*\) tokens\/s decoding)$/\1/p')
            [ -n "$pf$dc" ] || echo "$out" | tail -3 | sed 's/^/      llava: /' >&2
            printf 'R\t%s\tllava.c\t%s\t%s\t%s\n' "$label" "$w" "${pf:--}" "${dc:--}" >> $log
            probe
        done
        for w in q8_0 q4_0 f16; do
            m=$MODELS/rand7b_$w.gguf
            [ -f "$m" ] || continue
            echo "   round $r, $label: llama.cpp $w" >&2
            out=$("$ldir/bin/llama-bench" -m "$m" -p "$NP" -n 0 -t "$THREADS" -r 1 -o jsonl $LLAMA_BENCH_ARGS 2>/dev/null </dev/null)
            pf=$(echo "$out" | grep '"n_gen": *0[,}]' | sed -n 's/.*"avg_ts": *\([0-9.e+-]*\).*/\1/p' | head -1)
            out=$("$ldir/bin/llama-bench" -m "$m" -p 0 -n "$NG" $dargs -t "$THREADS" -r 1 -o jsonl $LLAMA_BENCH_ARGS 2>/dev/null </dev/null)
            dc=$(echo "$out" | grep '"n_prompt": *0[,}]' | sed -n 's/.*"avg_ts": *\([0-9.e+-]*\).*/\1/p' | head -1)
            [ -n "$pf$dc" ] || echo "      llama-bench gave no result for $m" >&2
            printf 'R\t%s\tllama.cpp\t%s\t%s\t%s\n' "$label" "$w" "${pf:--}" "${dc:--}" >> $log
            probe
        done
    done
    r=$((r + 1))
done

# The table: medians per (pair, engine, weights); bandwidth: median of the probes around that row's runs.
echo
echo "| ISA | engine | weights | prefill tok/s | decode tok/s | llava.c q8 / this (prefill, decode) | decode GB/s | % of read bw (GB/s) |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
echo "$PAIRS" | while IFS='|' read -r label isa ldir dargs; do
    if [ -n "$isa" ]; then lisa=$(LLAVA_ISA=$isa build/isa_name); else lisa=$(build/isa_name); fi
    awk -F'\t' -v label="$label" -v lisa="$lisa" -v cisa="$(llama_isa "$ldir")" '
    function median(s,   a, n, i, j, t) {
        n = split(s, a, " "); if (n == 0) return "";
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    # bytes per weight: q8 group 64 + f32 scale; q4 group 64 + bf16 scale (make_random_model.py default)
    BEGIN { bpw["q8"] = 68 / 64; bpw["q4"] = 17 / 32; bpw["bf16"] = 2; bpw["q8_0"] = 34 / 32; bpw["q4_0"] = 18 / 32; bpw["f16"] = 2; W = 6.607e9 }
    { line[NR] = $0 }
    END {
        for (i = 1; i <= NR; i++) {
            split(line[i], f, "\t")
            if (f[1] != "R" || f[2] != label) continue
            k = f[3] "|" f[4]
            if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
            if (f[5] != "-") pf[k] = pf[k] " " f[5]
            if (f[6] != "-") dc[k] = dc[k] " " f[6]
            for (j = i - 1; j >= 1 && line[j] !~ /^P/; j--);
            if (j >= 1) { split(line[j], p, "\t"); bw[k] = bw[k] " " p[2] }
            for (j = i + 1; j <= NR && line[j] !~ /^P/; j++);
            if (j <= NR) { split(line[j], p, "\t"); bw[k] = bw[k] " " p[2] }
        }
        for (i = 1; i <= nk; i++) { k = order[i]; mp[k] = median(pf[k]); md[k] = median(dc[k]) }
        ref = "llava.c|q8"
        for (i = 1; i <= nk; i++) {
            k = order[i]; split(k, e, "|")
            isa = e[1] == "llava.c" ? lisa : cisa
            ratio = ""
            if (k != ref && (ref in mp) && mp[ref] != "" && md[ref] != "" && mp[k] > 0 && md[k] > 0)
                ratio = sprintf("%.2fx, %.2fx", mp[ref] / mp[k], md[ref] / md[k])
            b = median(bw[k])
            gbs = md[k] != "" ? md[k] * W * bpw[e[2]] / 1e9 : ""
            printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", isa, e[1], e[2],
                mp[k] != "" ? sprintf("%.1f", mp[k]) : "-", md[k] != "" ? sprintf("%.2f", md[k]) : "-",
                ratio != "" ? ratio : "-", gbs != "" ? sprintf("%.1f", gbs) : "-",
                (gbs != "" && b > 0) ? sprintf("%.0f%% (%.1f)", 100 * gbs / b, b) : "-"
        }
    }' $log
done
echo
[ "$TABLE_ONLY" = 1 ] && n="up to $ROUNDS" || n=$ROUNDS
echo "$CPU; $THREADS threads; medians of $n interleaved rounds; read bandwidth: bench/bandwidth.c, $THREADS threads, 1 GiB."
