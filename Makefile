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
# 32-bit x86 (i686-linux-gnu-gcc, gcc -m32): SSE2 arithmetic, not the x87's extended precision, which
# moves the frame choice, the anyres resize sizes and the pixel values away from numpy's (test_video)
ifeq ($(shell echo __i386__ | $(CC) $(CFLAGS) -E -P - 2>/dev/null),1)
override CFLAGS += -msse2 -mfpmath=sse
endif
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

FUZZ_HARNESSES = media tokenizer model   # test/fuzz/fuzz_*.c (see "Fuzzing" below)
TESTS = build/test_tokenizer build/test_video build/test_matmul build/test_blocks build/test_model build/test_formats \
        $(FUZZ_HARNESSES:%=build/fuzz/replay_%)

# kernels.c's vector width is the build target's: where the native build has AVX-512 (16 lanes), the
# tests also run test_blocks built for AVX2 (8 lanes: its own register blocking and code paths)
ifeq ($(shell echo __AVX512F__ | $(CC) $(CFLAGS) -E -P - 2>/dev/null),1)
TESTS += build/test_blocks_avx2
endif
build/test_blocks_avx2: test/test_blocks.c $(SRC) $(FLAGS) | build
	$(CC) $(CFLAGS) -march=x86-64-v3 -mno-avx512f -o $@ $< $(LDLIBS)

test: llava $(TESTS)
	PYTHON=$(PYTHON) CC="$(CC)" sh test/run_tests.sh

# A benchmark, not a test: prints tables, never fails on speed. e2e.sh writes 7B-shaped random models
# into build/ the first time (7.5 GB q8 + 4.1 GB q4 + 14 GB bf16, a few minutes each; MODELS=DIR elsewhere).
bench: llava build/bench
	./build/bench
	sh bench/e2e.sh

build/bench: bench/bench.c $(SRC) $(FLAGS) | build
	$(CC) $(CFLAGS) -o $@ bench/bench.c $(LDLIBS)

bench-torch: build/bench
	$(PYTHON) bench/compare_torch.py

# 64-bit ARM without an ARM machine: cross-build statically into build-port/aarch64/ and run the whole
# suite under qemu-user once per CPU model: max (NEON + dotprod + i8mm) and cortex-a57 (plain NEON),
# ~4.5 minutes each on 2 cores. Under max, test_matmul also runs every lower level (dotprod, neon,
# scalar) through LLAVA_ISA-style caps; add cortex-a76 (NEON + dotprod, no i8mm) for the whole suite
# at that level: make test-aarch64 AARCH64_CPUS="max cortex-a76 cortex-a57". Needs
# gcc-aarch64-linux-gnu and qemu-user (apt-get install gcc-aarch64-linux-gnu qemu-user); says so and
# skips when they are missing. The models are exported on this machine (build/models). Not part of
# `make` or `make test`.
AARCH64_CC ?= aarch64-linux-gnu-gcc
QEMU_AARCH64 ?= qemu-aarch64
AARCH64_CPUS ?= max cortex-a57
# the binaries are those of `make portability`'s aarch64 (port-bins, below)
A64 = build-port/aarch64

test-aarch64:
	@if ! command -v $(AARCH64_CC) >/dev/null 2>&1 || ! command -v $(QEMU_AARCH64) >/dev/null 2>&1; then \
	    echo "test-aarch64: SKIPPED: needs $(AARCH64_CC) and $(QEMU_AARCH64)" \
	         "(apt-get install gcc-aarch64-linux-gnu qemu-user)"; \
	else $(MAKE) --no-print-directory test-aarch64-run; fi

test-aarch64-run:
	@$(MAKE) --no-print-directory port-bins PORT_ARCH=aarch64 PORT_CC=$(AARCH64_CC)
	@fail=0; for cpu in $(AARCH64_CPUS); do \
	    echo "=== qemu-aarch64 -cpu $$cpu"; \
	    BIN=$(A64) RUN="$(QEMU_AARCH64) -cpu $$cpu" LLAVA="$(QEMU_AARCH64) -cpu $$cpu $(A64)/llava" PYTHON=$(PYTHON) \
	        sh test/run_tests.sh > $(A64)/test_$$cpu.log 2>&1 || fail=1; \
	    grep -E '^== |FAIL' $(A64)/test_$$cpu.log; \
	    echo "=== qemu-aarch64 -cpu $$cpu: $$(tail -n 1 $(A64)/test_$$cpu.log) (log: $(A64)/test_$$cpu.log)"; \
	done; exit $$fail

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
	rm -rf llava llava_cuda build build-aarch64 build-port

FORCE:
.PHONY: test bench bench-torch fuzz clean test-aarch64 test-aarch64-run portability port-bins FORCE

# ----------------------------------------------------------------------------
# The GPU path (llava.cu; README "GPU (CUDA)"). Never needed by `make` or `make test`.
#   make llava_cuda      ./llava_cuda: llava.c compiled with -DLLAVA_CUDA (it #includes llava.cu's host
#                        half) + llava.cu's device half by nvcc, linked with cuBLAS
#   make cuda-check      compiles everything CUDA with warnings as errors; says SKIPPED without nvcc (CI)
#   make test_cuda       every golden of `make test` on the GPU, and GPU logits against the CPU build's
#                        (SKIPPED with a line when no GPU is present)
#   make bench_cuda      7B-shaped random weights made on the GPU: vision, prefill, decode vs roofline
# CUDA_ARCH: a fat binary for A100 (sm_80) and H100/H200 (sm_90) by default.
NVCC ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O3 $(CUDA_ARCH)
override NVCCFLAGS += -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror
CUDA_LDLIBS = -lcublas -lm -Xcompiler -pthread
CUDA_BINS = llava_cuda build/test_model_cuda build/bench_cuda build/test_cuda_kernels

build/llava_cu.o: llava.cu $(FLAGS) | build
	$(NVCC) $(NVCCFLAGS) -c -o $@ llava.cu

# the host half: llava.c (or a test program) with the hooks, plain C, warnings as errors
build/llava_cuda_host.o: $(SRC) llava.cu $(FLAGS) | build
	$(CC) $(CFLAGS) -Werror -DLLAVA_CUDA -c -o $@ llava.c

build/test_model_cuda.o: test/test_model.c $(SRC) llava.cu $(FLAGS) | build
	$(CC) $(CFLAGS) -Werror -DLLAVA_CUDA -c -o $@ test/test_model.c

llava_cuda: build/llava_cuda_host.o build/llava_cu.o
	$(NVCC) $(NVCCFLAGS) -o $@ $^ $(CUDA_LDLIBS)

build/test_model_cuda: build/test_model_cuda.o build/llava_cu.o
	$(NVCC) $(NVCCFLAGS) -o $@ $^ $(CUDA_LDLIBS)

build/bench_cuda: bench/bench_cuda.cu llava.cu $(FLAGS) | build
	$(NVCC) $(NVCCFLAGS) -o $@ bench/bench_cuda.cu -lcublas

build/test_cuda_kernels: test/test_cuda_kernels.cu llava.cu $(FLAGS) | build
	$(NVCC) $(NVCCFLAGS) -o $@ test/test_cuda_kernels.cu -lcublas

cuda-check:
	@if [ -x "$(NVCC)" ] || command -v "$(NVCC)" >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory $(CUDA_BINS) && echo "cuda-check: llava.cu, test_model_cuda, bench_cuda, test_cuda_kernels compile with no warnings"; \
	else echo "cuda-check: SKIPPED: nvcc not found (set NVCC=/path/to/nvcc)"; fi

test_cuda: llava build/test_model_cuda llava_cuda build/test_cuda_kernels
	PYTHON=$(PYTHON) sh test/run_cuda_tests.sh

bench_cuda: build/bench_cuda
	./build/bench_cuda

.PHONY: cuda-check test_cuda bench_cuda

# Every architecture it builds for runs its tests: cross-build statically with Debian's cross compilers
# (-Wall -Wextra, any warning fails that architecture) and run the C test programs and one tiny-model
# generation under qemu-user, for aarch64, riscv64, s390x (big-endian: the model loader refuses, which
# is the expected result there) and i686 (32-bit); an architecture whose compiler or qemu is missing
# is SKIPPED. ~12 minutes on 2 cores from scratch; a summary table at the end; see test/portability.sh.
#   apt-get install gcc-aarch64-linux-gnu gcc-riscv64-linux-gnu gcc-s390x-linux-gnu gcc-i686-linux-gnu qemu-user
#   make portability PORT_ARCHS="aarch64 i686"      a subset (armhf is also known)
PORT_ARCHS ?= aarch64 riscv64 s390x i686
portability: llava
	@PYTHON=$(PYTHON) MAKE="$(MAKE)" sh test/portability.sh $(PORT_ARCHS)

# One architecture's binaries, called by test/portability.sh: make port-bins PORT_ARCH=riscv64
# PORT_CC=riscv64-linux-gnu-gcc. Each compiler's messages are kept beside its binary (NAME.log), so a
# rerun that rebuilds nothing still counts the warnings.
PORT_DIR = build-port/$(PORT_ARCH)
PORT_CFLAGS = -O3 -static -Wall -Wextra $(PORT_ARCH_FLAGS)
PORT_FLAGS = $(PORT_DIR)/.flags
$(PORT_FLAGS): FORCE | $(PORT_DIR)
	@echo '$(PORT_CC) $(PORT_CFLAGS)' | cmp -s - $@ || echo '$(PORT_CC) $(PORT_CFLAGS)' > $@
PORT_BINS = $(addprefix $(PORT_DIR)/,llava test_tokenizer test_video test_matmul test_blocks test_model test_formats bench)
PORT_CC_LOG = 2> $@.log || { cat $@.log; exit 1; }; cat $@.log

port-bins: $(PORT_BINS)

$(PORT_DIR)/llava: $(SRC) $(PORT_FLAGS) | $(PORT_DIR)
	$(PORT_CC) $(PORT_CFLAGS) -o $@ llava.c $(LDLIBS) $(PORT_CC_LOG)

$(PORT_DIR)/bench: bench/bench.c $(SRC) $(PORT_FLAGS) | $(PORT_DIR)
	$(PORT_CC) $(PORT_CFLAGS) -o $@ bench/bench.c $(LDLIBS) $(PORT_CC_LOG)

$(PORT_DIR)/%: test/%.c $(SRC) $(PORT_FLAGS) | $(PORT_DIR)
	$(PORT_CC) $(PORT_CFLAGS) -o $@ $< $(LDLIBS) $(PORT_CC_LOG)

$(PORT_DIR):
	mkdir -p $(PORT_DIR)

