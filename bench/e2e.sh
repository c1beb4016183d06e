#!/bin/sh
# bench/e2e.sh: end to end on random-weight models with the exact LLaVA-NeXT-Video-7B shapes
# (written once by bench/make_random_model.py into MODELS, default build/: 7.5 GB q8, 3.9 GB q4,
# 14 GB bf16; speed does not depend on the values). First the load (a one-word question, the file in
# the page cache), then an 8-frame video question (the 4-frame test clip played twice, -f 8) and 64
# new tokens, 2 threads. Prints llava's own timing lines. A benchmark:
# it never fails on speed. Env: DTYPES (default "q8 q4 bf16"), MODELS, THREADS.
set -eu
PYTHON=${PYTHON:-python3}
clip=build/bench_8f.y4m
if [ ! -f $clip ]; then
    $PYTHON - <<'PY'
d = open("test/data/city_320x240_420jpeg_4f.y4m", "rb").read()
i = d.index(b"FRAME")
open("build/bench_8f.y4m", "wb").write(d[:i] + d[i:] + d[i:])
PY
fi
for dtype in ${DTYPES:-q8 q4 bf16}; do
    model=${MODELS:-build}/random7b_$dtype.bin
    [ -f $model ] || $PYTHON bench/make_random_model.py $model --dtype $dtype
    # Load: a one-word question twice (the first brings the file into the page cache), the second's
    # load and first-token lines: format 2 files map their panels (no packing), format 1 files pack.
    ./llava $model -p "Hi" -n 1 --threads ${THREADS:-2} >/dev/null 2>&1
    echo "== 7B-shaped model, $dtype weights: \"Hi\", 1 new token, the file in the page cache"
    ./llava $model -p "Hi" -n 1 --threads ${THREADS:-2} 2>&1 >/dev/null | grep -E "^(load|time to first)" | sed 's/^/   /'
    echo "== 7B-shaped model, $dtype weights: 8 frames, \"What happens in this video?\", 64 new tokens"
    ./llava $model -v $clip -f 8 -p "What happens in this video?" -n 64 -s 1 --threads ${THREADS:-2} 2>&1 >/dev/null |
        grep -E "^(load|video|vision|prompt|time to first|generated|peak)" | sed 's/^/   /'
done
