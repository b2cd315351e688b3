/*
** faults.c: a preloaded library (LD_PRELOAD) that makes the file system fail
** on cue, for the tests of what a run does when its disk fills up or its
** directory stops being writable (also when the tests run as root, whom
** permissions do not stop).
**
**   DPO_FAULT=enospc     write() to a regular file fails with ENOSPC
**   DPO_FAULT=eacces     creating a file or directory fails with EACCES
**   DPO_FAULT=kill       the process gets SIGKILL in the middle of a write()
**                        to a regular file, after DPO_FAULT_SKIP [0] whole
**                        ones (a machine dying while a checkpoint is written)
**   DPO_FAULT_TRIGGER=F  only once the file F exists (the test creates it at
**                        the moment the disk should "fill"); always if unset
**
** Only calls that go through the dynamic linker are seen (the engine's own
** open/write/mkdir; not the C library's stdio internals), which is where
** checkpoints are written. Standard input, output and error are never failed.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int fault_is(const char *kind) {
    const char *mode = getenv("DPO_FAULT"), *trigger = getenv("DPO_FAULT_TRIGGER");
    if (mode == NULL || strcmp(mode, kind) != 0) return 0;
    return trigger == NULL || access(trigger, F_OK) == 0;
}

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    struct stat st;
    if (!real) real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (fd > 2 && fault_is("enospc") && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        errno = ENOSPC;
        return -1;
    }
    if (fd > 2 && fault_is("kill") && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        static long seen = 0;
        const char *skip = getenv("DPO_FAULT_SKIP");
        if (seen++ >= (skip ? atol(skip) : 0)) {
            real(fd, buf, n / 2); /* half of it reaches the file */
            kill(getpid(), SIGKILL);
        }
    }
    return real(fd, buf, n);
}

int mkdir(const char *path, mode_t mode) {
    static int (*real)(const char *, mode_t);
    if (!real) real = (int (*)(const char *, mode_t))dlsym(RTLD_NEXT, "mkdir");
    if (fault_is("eacces")) {
        errno = EACCES;
        return -1;
    }
    return real(path, mode);
}

static int open_with(const char *name, int dirfd, const char *path, int flags, mode_t mode) {
    if ((flags & O_CREAT) && fault_is("eacces")) {
        errno = EACCES;
        return -1;
    }
    if (dirfd == -1) {
        int (*real)(const char *, int, ...) =
            (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, name);
        return real(path, flags, mode);
    }
    int (*real)(int, const char *, int, ...) =
        (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, name);
    return real(dirfd, path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return open_with("open", -1, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return open_with("open64", -1, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = mode_arg(flags, ap);
    va_end(ap);
    return open_with("openat", dirfd, path, flags, mode);
}
