# llava.c: `make` builds ./llava; `make test` checks it against transformers' goldens; `make bench` times it.
CC ?= gcc
CFLAGS ?= -O3 -march=native
CFLAGS += -Wall -Wextra
ifeq ($(OPENMP),1)
CFLAGS += -fopenmp   # `make OPENMP=1`: OpenMP threads instead of the built-in pthread pool
endif
LDLIBS = -lm -pthread
SRC = llava.c base.c matmul.c kernels.c tokenizer.c video.c
PYTHON ?= python3

llava: $(SRC)
	$(CC) $(CFLAGS) -o $@ llava.c $(LDLIBS)

build/%: test/%.c $(SRC) | build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

build:
	mkdir -p build

TESTS = build/test_tokenizer build/test_video build/test_matmul build/test_blocks build/test_model

test: llava $(TESTS)
	PYTHON=$(PYTHON) CC="$(CC)" sh test/run_tests.sh

# A benchmark, not a test: prints tables, never fails on speed. e2e.sh writes 7B-shaped random models
# into build/ the first time (7.5 GB q8 + 14 GB bf16, a few minutes each).
bench: llava build/bench
	./build/bench
	sh bench/e2e.sh

build/bench: bench/bench.c $(SRC) | build
	$(CC) $(CFLAGS) -o $@ bench/bench.c $(LDLIBS)

bench-torch: build/bench
	$(PYTHON) bench/compare_torch.py

clean:
	rm -rf llava build

.PHONY: test bench bench-torch clean
