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
.DEFAULT_GOAL := llava

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

TESTS = build/test_tokenizer build/test_video build/test_matmul build/test_blocks build/test_model

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

clean:
	rm -rf llava build

FORCE:
.PHONY: test bench bench-torch clean FORCE
