/*
** fuzz.h: what the libFuzzer targets of tests/fuzz share.
**
** The loaders read files, so each input is written to a file first: the
** files live in one temporary directory per process, under $DPO_FUZZ_TMP
** (set by tests/fuzz/run.sh), else /dev/shm (no disk traffic), else /tmp,
** removed when the process exits normally. A broken promise of the engine
** (a round trip that does not hold, a message that does not name its file)
** is reported by FUZZ_CHECK, which aborts: libFuzzer then saves the input.
*/
#ifndef DPO_FUZZ_H
#define DPO_FUZZ_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: broken promise: %s\n", __FILE__, __LINE__, #cond);             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static char fuzz_dir[256];

static inline void fuzz_remove_dir(void) {
    DIR *d = opendir(fuzz_dir);
    struct dirent *de;
    char p[512];
    if (!d) return;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", fuzz_dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(fuzz_dir);
}

/* The path of name in this process's temporary directory (made on first use;
** four rotating buffers). */
static inline const char *fuzz_path(const char *name) {
    static char buf[4][512];
    static int k;
    if (!fuzz_dir[0]) {
        const char *base = getenv("DPO_FUZZ_TMP");
        struct stat st;
        if (!base || !*base) base = stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/dpo-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir)) {
            perror(fuzz_dir);
            abort();
        }
        atexit(fuzz_remove_dir);
    }
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fuzz_dir, name);
    return buf[k];
}

/* Write p[0..n) to name in the temporary directory; returns its path. */
static inline const char *fuzz_write(const char *name, const void *p, size_t n) {
    const char *path = fuzz_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}

/* Remove name from the temporary directory, if it is there. */
static inline void fuzz_unlink(const char *name) {
    unlink(fuzz_path(name));
}

#endif
