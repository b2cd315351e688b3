/*
** io.c: atomic file writing (see io.h).
*/
#include "base/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dpo_afile {
    int fd;
    int err; /* first errno seen */
    char *path, *tmp, *dir;
    size_t used;
    unsigned char buf[1 << 16];
};

static dpo_status io_fail(dpo_error *e, const char *path, int err) {
    dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(err));
    return DPO_ERR_IO;
}

/* "dir/.base.tmp.PID" for path "dir/base", and dir; 0, or -1 (e filled). */
static int temp_name(dpo_afile *f, dpo_error *e) {
    const char *path = f->path, *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dlen = slash ? (size_t)(slash - path) : 0, n = strlen(path) + 48;
    if (*base == '\0') {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: not a file name (it ends in '/')", path);
        return -1;
    }
    f->tmp = (char *)malloc(n);
    f->dir = (char *)malloc(dlen + 2);
    if (!f->tmp || !f->dir) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        return -1;
    }
    if (!slash)
        strcpy(f->dir, ".");
    else if (dlen == 0)
        strcpy(f->dir, "/");
    else
        memcpy(f->dir, path, dlen), f->dir[dlen] = '\0';
    snprintf(f->tmp, n, "%.*s.%s.tmp.%ld", (int)(slash ? dlen + 1 : 0), path, base, (long)getpid());
    return 0;
}

/* fsync the directory so that the rename itself is durable; 0 or an errno. */
static int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err = 0;
    if (fd < 0) return errno;
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) err = errno;
    close(fd);
    return err;
}

static void afile_free(dpo_afile *f) {
    free(f->path);
    free(f->tmp);
    free(f->dir);
    free(f);
}

dpo_afile *dpo_afile_open(const char *path, dpo_error *e) {
    dpo_afile *f = (dpo_afile *)calloc(1, sizeof *f);
    size_t n = strlen(path) + 1;
    if (!f || !(f->path = (char *)malloc(n))) {
        free(f);
        return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    }
    memcpy(f->path, path, n);
    f->fd = -1;
    if (temp_name(f, e) < 0) {
        afile_free(f);
        return NULL;
    }
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (f->fd < 0 && errno == EEXIST) { /* left by a dead process with our pid */
        unlink(f->tmp);
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    }
    if (f->fd < 0) {
        io_fail(e, path, errno);
        afile_free(f);
        return NULL;
    }
    return f;
}

static void write_all(dpo_afile *f, const void *p, size_t n) {
    const unsigned char *c = (const unsigned char *)p;
    while (n > 0 && !f->err) {
        ssize_t k = write(f->fd, c, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            f->err = errno;
        } else if (k == 0) {
            f->err = EIO;
        } else {
            c += k;
            n -= (size_t)k;
        }
    }
}

static void flush(dpo_afile *f) {
    if (f->used) write_all(f, f->buf, f->used);
    f->used = 0;
}

void dpo_afile_write(dpo_afile *f, const void *p, size_t n) {
    if (f->used + n > sizeof f->buf) flush(f);
    if (n >= sizeof f->buf) {
        write_all(f, p, n);
        return;
    }
    memcpy(f->buf + f->used, p, n);
    f->used += n;
}

void dpo_afile_abort(dpo_afile *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    unlink(f->tmp);
    afile_free(f);
}

dpo_status dpo_afile_commit(dpo_afile *f, dpo_error *e) {
    int err;
    dpo_status st = DPO_OK;
    flush(f);
    if (!f->err && fsync(f->fd) != 0) f->err = errno;
    err = close(f->fd) != 0 ? errno : 0;
    f->fd = -1;
    if (!f->err && err) f->err = err;
    if (!f->err && rename(f->tmp, f->path) != 0) f->err = errno;
    if (f->err) {
        st = io_fail(e, f->path, f->err);
        dpo_afile_abort(f);
        return st;
    }
    if ((err = sync_dir(f->dir)) != 0) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: written, but syncing its directory failed: %s", f->path,
                 strerror(err));
        st = DPO_ERR_IO;
    }
    afile_free(f);
    return st;
}

dpo_status dpo_sync_dir(const char *dir, dpo_error *e) {
    int err = sync_dir(dir);
    return err ? io_fail(e, dir, err) : DPO_OK;
}

dpo_status dpo_write_file_atomic(const char *path, const void *data, size_t n, dpo_error *e) {
    dpo_afile *f = dpo_afile_open(path, e);
    if (!f) return e ? e->status : DPO_ERR_IO;
    dpo_afile_write(f, data, n);
    return dpo_afile_commit(f, e);
}
