/*
** jsonl.c: the line reader, the writer and the tokenized-pair store of
** dpo.data (see jsonl.h). zlib reads and writes gzip; nothing here parses
** JSON (lua-cjson does, in the Lua layer).
*/
#include "data/jsonl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define READ_BLOCK ((size_t)1 << 17) /* bytes asked of zlib per read */

/* ---- the line reader ----------------------------------------------------------------- */

struct dpo_jsonl {
    gzFile gz;
    int gzip;
    char *buf; /* [cap] unread data is buf[start..end) */
    size_t cap, start, end;
    size_t scanned; /* bytes after start known to hold no newline */
    int64_t lineno; /* lines returned */
    int eof, failed, bom_checked;
    char err[DPO_ERRLEN]; /* the sticky read error */
};

/* gzip's magic bytes at the start of fd (which is rewound). */
static int sniff_gzip(int fd) {
    unsigned char m[2];
    ssize_t n = read(fd, m, 2);
    if (lseek(fd, 0, SEEK_SET) != 0) return -1;
    return n == 2 && m[0] == 0x1f && m[1] == 0x8b;
}

dpo_jsonl *dpo_jsonl_open(const char *path, dpo_error *e) {
    struct stat st;
    dpo_jsonl *r;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
        close(fd);
        return dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(err));
    }
    r = calloc(1, sizeof *r);
    if (!r || !(r->buf = malloc(READ_BLOCK))) {
        if (r) free(r);
        close(fd);
        return dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
    }
    if ((r->gzip = sniff_gzip(fd)) < 0) {
        int err = errno;
        free(r->buf);
        free(r);
        close(fd);
        return dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(err));
    }
    r->cap = READ_BLOCK;
    r->gz = gzdopen(fd, "rb");
    if (!r->gz) {
        close(fd);
        free(r->buf);
        free(r);
        return dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
    }
    gzbuffer(r->gz, READ_BLOCK);
    return r;
}

int dpo_jsonl_is_gzip(const dpo_jsonl *r) {
    return r->gzip;
}

int64_t dpo_jsonl_offset(const dpo_jsonl *r) {
    return (int64_t)gzoffset(r->gz);
}

size_t dpo_jsonl_buffer_size(const dpo_jsonl *r) {
    return r->cap;
}

/* Remember a read error and report it. */
static int read_failed(dpo_jsonl *r, int64_t *lineno, dpo_error *e, const char *fmt,
                       const char *detail) {
    if (!r->failed) {
        snprintf(r->err, sizeof r->err, fmt, detail);
        r->failed = 1;
    }
    *lineno = r->lineno + 1;
    dpo_fail(e, DPO_ERR_IO, 0, "%s", r->err);
    return -1;
}

/* Read one more block after the unread data; 0 ok (possibly at eof), -1 error. */
static int fill(dpo_jsonl *r, int64_t *lineno, dpo_error *e) {
    int got, errnum;
    const char *msg;
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (r->cap - r->end < READ_BLOCK / 2) {
        size_t ncap = r->cap * 2;
        char *nb = ncap > r->cap ? realloc(r->buf, ncap) : NULL;
        if (!nb) return read_failed(r, lineno, e, "line too long to hold in memory%s", "");
        r->buf = nb;
        r->cap = ncap;
    }
    got = gzread(r->gz, r->buf + r->end,
                 (unsigned)(r->cap - r->end < INT_MAX ? r->cap - r->end : INT_MAX));
    msg = gzerror(r->gz, &errnum);
    /* zlib names the stream "<fd:N>: "; the caller names the file */
    if (strncmp(msg, "<fd:", 4) == 0 && strstr(msg, ": ")) msg = strstr(msg, ": ") + 2;
    if (got < 0 || (errnum != Z_OK && errnum != Z_BUF_ERROR)) {
        if (errnum == Z_ERRNO) return read_failed(r, lineno, e, "read error (%s)", strerror(errno));
        if (errnum == Z_MEM_ERROR) return read_failed(r, lineno, e, "out of memory%s", "");
        return read_failed(r, lineno, e, "corrupt gzip stream (%s)", msg);
    }
    if (got == 0) {
        /* zlib reports a stream cut short only as Z_BUF_ERROR at the end. */
        if (errnum == Z_BUF_ERROR)
            return read_failed(r, lineno, e, "truncated gzip stream (%s)", msg);
        r->eof = 1;
    }
    r->end += (size_t)got;
    return 0;
}

int dpo_jsonl_next(dpo_jsonl *r, const char **line, size_t *n, int64_t *lineno, dpo_error *e) {
    if (r->failed) return read_failed(r, lineno, e, "%s", r->err);
    for (;;) {
        char *s = r->buf + r->start, *nl;
        size_t avail = r->end - r->start;
        if (!r->bom_checked && (avail >= 3 || r->eof)) {
            r->bom_checked = 1;
            if (avail >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
                r->start += 3;
                continue;
            }
        }
        nl = r->bom_checked ? memchr(s + r->scanned, '\n', avail - r->scanned) : NULL;
        if (nl || (r->eof && avail > 0)) {
            size_t len = nl ? (size_t)(nl - s) : avail;
            r->start += nl ? len + 1 : len;
            r->scanned = 0;
            if (len > 0 && s[len - 1] == '\r') len--;
            *line = s;
            *n = len;
            *lineno = ++r->lineno;
            return 1;
        }
        if (r->eof) return 0;
        r->scanned = r->bom_checked ? avail : 0;
        if (fill(r, lineno, e) != 0) return -1;
    }
}

void dpo_jsonl_close(dpo_jsonl *r) {
    if (!r) return;
    gzclose_r(r->gz);
    free(r->buf);
    free(r);
}

/* ---- writing ------------------------------------------------------------------------- */

struct dpo_jsonl_writer {
    gzFile gz;
    int fd; /* our own descriptor, kept for fsync after gzclose */
    int failed;
    char *path, *tmp;
    char err[DPO_ERRLEN];
};

static void writer_free(dpo_jsonl_writer *w) {
    free(w->path);
    free(w->tmp);
    free(w);
}

dpo_jsonl_writer *dpo_jsonl_writer_open(const char *path, int gzip, dpo_error *e) {
    dpo_jsonl_writer *w = calloc(1, sizeof *w);
    size_t n = strlen(path) + 32;
    int fd2;
    if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(n))) {
        if (w) writer_free(w);
        return dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
    }
    snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w->fd < 0) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(errno));
        writer_free(w);
        return NULL;
    }
    fd2 = dup(w->fd);
    w->gz = fd2 >= 0 ? gzdopen(fd2, gzip ? "wb9" : "wbT") : NULL;
    if (!w->gz) {
        if (fd2 >= 0) close(fd2);
        close(w->fd);
        unlink(w->tmp);
        dpo_fail(e, DPO_ERR_IO, 0, "%s: cannot start the stream", path);
        writer_free(w);
        return NULL;
    }
    gzbuffer(w->gz, READ_BLOCK);
    return w;
}

void dpo_jsonl_write(dpo_jsonl_writer *w, const void *p, size_t n) {
    const char *s = p;
    while (!w->failed && n > 0) {
        unsigned k = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int put = gzwrite(w->gz, s, k);
        if (put <= 0) {
            int errnum;
            const char *msg = gzerror(w->gz, &errnum);
            snprintf(w->err, sizeof w->err, "%s", errnum == Z_ERRNO ? strerror(errno) : msg);
            w->failed = 1;
        }
        s += put > 0 ? put : 0;
        n -= put > 0 ? (size_t)put : n;
    }
}

dpo_status dpo_jsonl_writer_commit(dpo_jsonl_writer *w, dpo_error *e) {
    int rc = gzclose_w(w->gz);
    if (!w->failed && rc != Z_OK) {
        snprintf(w->err, sizeof w->err, "%s", rc == Z_ERRNO ? strerror(errno) : "write failed");
        w->failed = 1;
    }
    if (!w->failed && fsync(w->fd) != 0) {
        snprintf(w->err, sizeof w->err, "%s", strerror(errno));
        w->failed = 1;
    }
    close(w->fd);
    if (!w->failed && rename(w->tmp, w->path) != 0) {
        snprintf(w->err, sizeof w->err, "%s", strerror(errno));
        w->failed = 1;
    }
    if (w->failed) {
        unlink(w->tmp);
        dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", w->path, w->err);
        writer_free(w);
        return DPO_ERR_IO;
    }
    writer_free(w);
    return DPO_OK;
}

void dpo_jsonl_writer_abort(dpo_jsonl_writer *w) {
    if (!w) return;
    gzclose_w(w->gz);
    close(w->fd);
    unlink(w->tmp);
    writer_free(w);
}

/* ---- tokenized pairs ----------------------------------------------------------------- */

typedef struct {
    int64_t start; /* first id of the row in the arena */
    int32_t n[3];  /* prompt, chosen, rejected */
} pair_row;

struct dpo_pairs {
    int32_t *ids; /* [nids] prompt, chosen, rejected of each row in turn */
    int64_t nids, idcap;
    pair_row *rows; /* [nrows] */
    int64_t nrows, rowcap;
    int32_t pad_id;
};

dpo_pairs *dpo_pairs_new(int32_t pad_id, dpo_error *e) {
    dpo_pairs *s = calloc(1, sizeof *s);
    if (!s) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    s->pad_id = pad_id;
    return s;
}

void dpo_pairs_free(dpo_pairs *s) {
    if (!s) return;
    free(s->ids);
    free(s->rows);
    free(s);
}

int64_t dpo_pairs_count(const dpo_pairs *s) {
    return s->nrows;
}

int64_t dpo_pairs_tokens(const dpo_pairs *s) {
    return s->nids;
}

int32_t dpo_pairs_pad_id(const dpo_pairs *s) {
    return s->pad_id;
}

/* Room for `more` ids and one row. */
static dpo_status reserve(dpo_pairs *s, int64_t more, dpo_error *e) {
    if (s->nids + more > s->idcap) {
        int64_t cap = s->idcap ? s->idcap : 1 << 16;
        int32_t *p;
        while (cap < s->nids + more) cap *= 2;
        if ((uint64_t)cap > SIZE_MAX / sizeof *p ||
            !(p = realloc(s->ids, (size_t)cap * sizeof *p))) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for %lld token ids", (long long)cap);
            return DPO_ERR_MEM;
        }
        s->ids = p;
        s->idcap = cap;
    }
    if (s->nrows == s->rowcap) {
        int64_t cap = s->rowcap ? s->rowcap * 2 : 1024;
        pair_row *p = (uint64_t)cap <= SIZE_MAX / sizeof *p
                          ? realloc(s->rows, (size_t)cap * sizeof *p)
                          : NULL;
        if (!p) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for %lld pairs", (long long)cap);
            return DPO_ERR_MEM;
        }
        s->rows = p;
        s->rowcap = cap;
    }
    return DPO_OK;
}

dpo_status dpo_pairs_add(dpo_pairs *s, const int32_t *p, int32_t np, const int32_t *c, int32_t nc,
                         const int32_t *r, int32_t nr, const dpo_pair_opts *o, dpo_pair_info *info,
                         dpo_error *e) {
    int32_t L = o->max_length, P = o->max_prompt_length, eos = o->eos_id >= 0;
    int32_t kp, kc, kr, longer, skip = 0; /* skip: prompt tokens cut from the front */
    int32_t *dst;
    dpo_status st;
    if (L < 2 || P < 1 || P >= L || np < 0 || nc < 0 || nr < 0) {
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "bad truncation: max_length %d and max_prompt_length %d (need 1 <= P < L)", (int)L,
                 (int)P);
        return DPO_ERR_ARG;
    }
    memset(info, 0, sizeof *info);
    info->row = -1;
    info->np_full = np;
    info->nc_full = nc + eos;
    info->nr_full = nr + eos;
    kp = np;
    kc = nc + eos;
    kr = nr + eos;
    if (kp == 0) {
        if (o->bos_id < 0) {
            info->fate = DPO_PAIR_EMPTY_PROMPT;
            return DPO_OK;
        }
        kp = 1; /* the bos token stands in */
    }
    longer = kc > kr ? kc : kr;
    if ((int64_t)kp + longer > L && kp > P) {
        if (o->truncation == DPO_KEEP_END) skip = kp - P;
        kp = P;
        info->prompt_cut = 1;
    }
    if ((int64_t)kp + longer > L) {
        int32_t room = L - kp;
        if (kc > room) kc = room;
        if (kr > room) kr = room;
        info->response_cut = 1;
    }
    info->np = kp;
    info->nc = kc;
    info->nr = kr;
    if (kc <= 0 || kr <= 0) {
        info->fate = DPO_PAIR_EMPTY_RESPONSE;
        return DPO_OK;
    }
    if ((st = reserve(s, (int64_t)kp + kc + kr, e)) != DPO_OK) return st;
    dst = s->ids + s->nids;
    if (np == 0)
        dst[0] = o->bos_id;
    else
        memcpy(dst, p + skip, (size_t)kp * sizeof *dst);
    dst += kp;
    /* a response is its ids then EOS, cut to k tokens */
    for (int part = 0; part < 2; part++) {
        const int32_t *src = part ? r : c;
        int32_t n = part ? nr : nc, k = part ? kr : kc, m = k < n ? k : n;
        memcpy(dst, src, (size_t)m * sizeof *dst);
        if (m < k) dst[m] = o->eos_id;
        dst += k;
    }
    s->rows[s->nrows] = (pair_row){s->nids, {kp, kc, kr}};
    s->nids += (int64_t)kp + kc + kr;
    info->row = s->nrows++;
    info->fate = DPO_PAIR_KEPT;
    return DPO_OK;
}

const int32_t *dpo_pairs_part(const dpo_pairs *s, int64_t k, int part, int32_t *n) {
    const pair_row *row;
    int64_t at;
    if (k < 0 || k >= s->nrows || part < 0 || part > 2) {
        *n = 0;
        return NULL;
    }
    row = &s->rows[k];
    at = row->start;
    for (int q = 0; q < part; q++) at += row->n[q];
    *n = row->n[part];
    return s->ids + at;
}

dpo_status dpo_pairs_collate(const dpo_pairs *s, const int64_t *rows, int64_t B, int sft,
                             dpo_tensor **ids, dpo_tensor **mask, dpo_tensor **plen,
                             dpo_tensor **rlen, dpo_error *e) {
    int64_t N = sft ? B : 2 * B, T = 0, shape[2];
    int32_t *pi, *pm, *pp, *pr;
    *ids = *mask = *plen = *rlen = NULL;
    if (B < 1) {
        dpo_fail(e, DPO_ERR_ARG, 1, "a batch needs at least one pair");
        return DPO_ERR_ARG;
    }
    for (int64_t i = 0; i < B; i++) {
        const pair_row *row;
        if (rows[i] < 0 || rows[i] >= s->nrows) {
            dpo_fail(e, DPO_ERR_RANGE, 1, "row %lld out of range 0..%lld", (long long)rows[i],
                     (long long)s->nrows - 1);
            return DPO_ERR_RANGE;
        }
        row = &s->rows[rows[i]];
        if (row->n[0] + row->n[1] > T) T = row->n[0] + row->n[1];
        if (!sft && row->n[0] + row->n[2] > T) T = row->n[0] + row->n[2];
    }
    shape[0] = N;
    shape[1] = T;
    if (!(*ids = dpo_tensor_new(DPO_I32, 2, shape, e)) ||
        !(*mask = dpo_tensor_zeros(DPO_I32, 2, shape, e)) ||
        !(*plen = dpo_tensor_new(DPO_I32, 1, &N, e)) ||
        !(*rlen = dpo_tensor_new(DPO_I32, 1, &N, e))) {
        dpo_status st = e ? e->status : DPO_ERR_MEM;
        dpo_tensor_release(*ids);
        dpo_tensor_release(*mask);
        dpo_tensor_release(*plen);
        *ids = *mask = *plen = NULL;
        return st;
    }
    pi = dpo_i32(*ids);
    pm = dpo_i32(*mask);
    pp = dpo_i32(*plen);
    pr = dpo_i32(*rlen);
    for (int64_t n = 0; n < N; n++) {
        const pair_row *row = &s->rows[rows[n % B]];
        int part = n < B ? 1 : 2;
        int32_t np = row->n[0], nr = row->n[part];
        const int32_t *src = s->ids + row->start;
        int32_t *di = pi + n * T, *dm = pm + n * T;
        memcpy(di, src, (size_t)np * sizeof *di);
        memcpy(di + np, src + np + (part == 2 ? row->n[1] : 0), (size_t)nr * sizeof *di);
        for (int64_t t = np + nr; t < T; t++) di[t] = s->pad_id;
        for (int32_t t = np; t < np + nr; t++) dm[t] = 1;
        pp[n] = np;
        pr[n] = nr;
    }
    return DPO_OK;
}
