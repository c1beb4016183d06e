// replay.c: runs a harness of test/fuzz/ on files instead of under libFuzzer, so the seed corpora and
// every input that ever crashed (test/fuzz/regressions/) are replayed by `make test` with any compiler
// (gcc included; no libFuzzer needed). Linked with one harness (a second translation unit):
//
//   replay_HARNESS DIR_OR_FILE...
//
// Each file runs in a forked child; it passes if the child exits 0 (a crash, an abort, a sanitizer report
// or a timeout fails it). Prints one line per file, then "N passed, N failed"; exits 1 if any failed.
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerInitialize(int* argc, char*** argv);

static int n_pass, n_fail;

static void replay_file(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) { printf("  FAIL %s (cannot open)\n", path); n_fail++; return; }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t* buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf) { printf("  FAIL %s (out of memory)\n", path); n_fail++; return; }
    fflush(stdout);
    fflush(stderr);
    FILE* log = tmpfile();  // the child's stderr: shown only if it fails (fatal()'s messages are expected)
    pid_t pid = fork();
    if (pid == 0) {
        if (log && !getenv("FUZZ_REPLAY_VERBOSE")) dup2(fileno(log), 2);
        alarm(120);  // a hang is a failure too
        LLVMFuzzerTestOneInput(buf, n);
        _exit(0);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) st = -1;
    free(buf);
    if (st == 0) {
        printf("  ok   %s (%zu bytes)\n", path, n);
        n_pass++;
    } else {
        if (st != -1 && WIFSIGNALED(st)) printf("  FAIL %s (signal %d)\n", path, WTERMSIG(st));
        else printf("  FAIL %s (exit status %d)\n", path, st == -1 ? -1 : WEXITSTATUS(st));
        n_fail++;
        if (log) {  // the end of what it said (the sanitizer's report)
            char tail[4096];
            long end = (fseek(log, 0, SEEK_END), ftell(log)), from = end > 4000 ? end - 4000 : 0;
            fseek(log, from, SEEK_SET);
            size_t k = fread(tail, 1, sizeof(tail) - 1, log);
            tail[k] = 0;
            printf("%s\n", tail);
        }
    }
    if (log) fclose(log);
}

static int cmp_str(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

static void replay_dir(const char* dir) {
    DIR* d = opendir(dir);
    if (!d) { printf("  FAIL %s (cannot open directory)\n", dir); n_fail++; return; }
    char** names = NULL;
    size_t n = 0;
    struct dirent* e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;  // ., .., .gitkeep
        names = realloc(names, (n + 1) * sizeof(char*));
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        snprintf(names[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof(char*), cmp_str);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) replay_file(names[i]);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char** argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]); return 2; }
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) replay_dir(argv[i]);
        else replay_file(argv[i]);
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
