#!/bin/sh
# bench/e2e.sh: end to end on random-weight models with the exact LLaVA-NeXT-Video-7B shapes
# (written once by bench/make_random_model.py into MODELS, default build/: 7.5 GB q8, 4.1 GB q4,
# 14 GB bf16; speed does not depend on the values). An 8-frame video question (the 4-frame test clip
# played twice, -f 8), then 64 new tokens, 2 threads. Prints llava's own timing lines. A benchmark:
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
    echo "== 7B-shaped model, $dtype weights: 8 frames, \"What happens in this video?\", 64 new tokens"
    ./llava $model -v $clip -f 8 -p "What happens in this video?" -n 64 -s 1 --threads ${THREADS:-2} 2>&1 >/dev/null |
        grep -E "^(load|video|vision|prompt|time to first|generated|peak)" | sed 's/^/   /'
done
