# llava.c: `make` builds ./llava; `make test` checks it against transformers' goldens; `make bench` times it.
#   make CC=clang CFLAGS=-O3   any compiler and flags (the warnings below are always added)
#   make OPENMP=1              OpenMP threads instead of the built-in pthread pool
#   make test SANITIZE=1       the tests under AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer)
CC ?= gcc
ifeq ($(origin CC),default)
CC = gcc
endif
CFLAGS ?= -O3 -march=native
override CFLAGS += -Wall -Wextra
ifeq ($(OPENMP),1)
override CFLAGS += -fopenmp
endif
ifeq ($(SANITIZE),1)
override CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
endif
LDLIBS = -lm -pthread
SRC = llava.c base.c matmul.c kernels.c tokenizer.c video.c
PYTHON ?= python3

# Every binary depends on the compiler and flags it was built with: changing CC, CFLAGS, OPENMP or
# SANITIZE rebuilds everything (make has no memory of flags otherwise).
FLAGS = build/.flags
$(FLAGS): FORCE | build
	@echo '$(CC) $(CFLAGS) $(LDLIBS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(LDLIBS)' > $@

llava: $(SRC) $(FLAGS)
	$(CC) $(CFLAGS) -o $@ llava.c $(LDLIBS)

build/%: test/%.c $(SRC) $(FLAGS) | build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

build:
	mkdir -p build

TESTS = build/test_tokenizer build/test_video build/test_matmul build/test_blocks build/test_model \
        $(FUZZ_HARNESSES:%=build/fuzz/replay_%)

test: llava $(TESTS)
	PYTHON=$(PYTHON) CC="$(CC)" sh test/run_tests.sh

# A benchmark, not a test: prints tables, never fails on speed. e2e.sh writes 7B-shaped random models
# into build/ the first time (7.5 GB q8 + 14 GB bf16, a few minutes each).
bench: llava build/bench
	./build/bench
	sh bench/e2e.sh

build/bench: bench/bench.c $(SRC) $(FLAGS) | build
	$(CC) $(CFLAGS) -o $@ bench/bench.c $(LDLIBS)

bench-torch: build/bench
	$(PYTHON) bench/compare_torch.py

# Fuzzing (test/fuzz/): libFuzzer harnesses for the media readers, the tokenizer and the model loader.
#   make fuzz [FUZZ_SECONDS=600] [FUZZ=media]   runs each harness that long, one after the other, nice'd;
#                                               needs clang with libFuzzer (skipped, saying so, without)
# -close_fd_mask=2: the harness's stderr (fatal()'s expected messages) is dropped; libFuzzer's and the
# sanitizers' reports still print. New inputs go to build/fuzz/corpus/H, crashes to build/fuzz/artifacts/H/: minimise one
# (./build/fuzz/fuzz_H -minimize_crash=1 -runs=10000 CRASH) and commit it to test/fuzz/regressions/H/.
# make test replays test/fuzz/corpus/H and test/fuzz/regressions/H with any compiler (build/fuzz/replay_H,
# under ASan+UBSan; REPLAY_SANITIZE= turns that off where the compiler has no sanitizer runtime).
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ ?= media tokenizer model
FUZZ_HARNESSES = media tokenizer model
FUZZ_CFLAGS = -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_ARGS ?=
FUZZ_MAXLEN_media = 65536
FUZZ_MAXLEN_tokenizer = 4096
FUZZ_MAXLEN_model = 4096
REPLAY_SANITIZE ?= -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
FUZZ_DEPS = test/fuzz/fuzz_common.h $(SRC)

build/fuzz/replay_%: test/fuzz/fuzz_%.c test/fuzz/replay.c $(FUZZ_DEPS) $(FLAGS) | build
	@mkdir -p build/fuzz
	$(CC) $(CFLAGS) $(REPLAY_SANITIZE) -o $@ test/fuzz/fuzz_$*.c test/fuzz/replay.c $(LDLIBS)

build/fuzz/fuzz_%: test/fuzz/fuzz_%.c $(FUZZ_DEPS) | build
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ test/fuzz/fuzz_$*.c $(LDLIBS)

build/models/tiny_b_q8.bin: test/models/tiny_b/model.safetensors export.py
	@mkdir -p build/models
	$(PYTHON) export.py test/models/tiny_b $@ --dtype q8 --group-size 8 >/dev/null

fuzz: build/models/tiny_b_q8.bin
	@if ! printf 'int LLVMFuzzerTestOneInput(const char* d, unsigned long n) { (void)d; (void)n; return 0; }\n' | \
	    $(FUZZ_CC) -fsanitize=fuzzer -x c - -o build/.fuzz_probe >/dev/null 2>&1; then \
	    echo "make fuzz: skipped: '$(FUZZ_CC)' cannot build libFuzzer targets (-fsanitize=fuzzer; install clang, or set FUZZ_CC)"; \
	    exit 0; fi; \
	rm -f build/.fuzz_probe; \
	$(MAKE) --no-print-directory $(FUZZ:%=build/fuzz/fuzz_%) || exit 1; \
	failed=""; \
	for h in $(FUZZ); do \
	    mkdir -p build/fuzz/corpus/$$h build/fuzz/artifacts/$$h; \
	    echo "== fuzz $$h for $(FUZZ_SECONDS) s"; \
	    case $$h in media) ml=$(FUZZ_MAXLEN_media);; tokenizer) ml=$(FUZZ_MAXLEN_tokenizer);; *) ml=$(FUZZ_MAXLEN_model);; esac; \
	    nice -n 19 ./build/fuzz/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) -max_len=$$ml -timeout=20 \
	        -rss_limit_mb=2048 -close_fd_mask=2 -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/$$h/ $(FUZZ_ARGS) \
	        build/fuzz/corpus/$$h test/fuzz/corpus/$$h test/fuzz/regressions/$$h || failed="$$failed $$h"; \
	done; \
	if [ -n "$$failed" ]; then echo "make fuzz: crashes in:$$failed (see build/fuzz/artifacts/)"; exit 1; fi; \
	echo "make fuzz: no crashes"

clean:
	rm -rf llava build

FORCE:
.PHONY: test bench bench-torch fuzz clean FORCE
