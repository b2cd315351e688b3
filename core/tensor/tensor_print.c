/*
** tensor_print.c: tostring for tensors, in Torch's layout.
**
** One format per tensor, chosen from its values: integers as %N.0f, a common
** scale factor ("1e-03 *") when values share a magnitude, %.4e when they span
** more than four orders. 1-D tensors print one value per line; matrices in
** aligned columns wrapped at 80 characters ("Columns 1 to 8"); higher ranks as
** "(i,j,.,.) =" slices. Past 1000 elements, each dimension longer than 6 shows
** its first and last 3 entries around "...". A footer names type and size.
*/
#include "tensor/tensor.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINEWIDTH 80
#define EDGE      3
#define THRESHOLD 1000

typedef struct {
    char *s;
    size_t len, cap;
    int failed;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    int n;
    if (b->failed) return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->s + b->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < room) break;
        {
            size_t ncap = b->cap * 2 + (size_t)n + 64;
            char *ns = (char *)realloc(b->s, ncap);
            if (!ns) {
                b->failed = 1;
                return;
            }
            b->s = ns, b->cap = ncap;
        }
    }
    b->len += (size_t)n;
}

typedef struct {
    int sci;      /* %.4e */
    int intmode;  /* %.0f */
    double scale; /* divide by this before printing */
    int width;
    int prec;
} numfmt;

static numfmt choose_format(const dpo_tensor *t) {
    numfmt f = {0, 1, 1.0, 1, 0};
    int64_t n = dpo_tensor_numel(t);
    double mx = 0, mn = INFINITY;
    int any = 0, special = 0, neg = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = dpo_tensor_get(t, i), a = fabs(v);
        if (!isfinite(v)) {
            special = 1;
            continue;
        }
        if (v < 0) neg = 1;
        if (v != floor(v)) f.intmode = 0;
        if (a > mx) mx = a;
        if (a != 0 && a < mn) mn = a;
        any = 1;
    }
    if (!any) {
        f.width = 4;
        return f;
    }
    {
        int emax = mx > 0 ? (int)floor(log10(mx)) + 1 : 1;
        int emin = mn < INFINITY ? (int)floor(log10(mn)) + 1 : 1;
        if (f.intmode) {
            if (emax > 9) {
                f.sci = 1, f.intmode = 0, f.prec = 4, f.width = 11;
            } else {
                f.width = (emax > 1 ? emax : 1) + neg;
            }
        } else if (emax - emin > 4) {
            f.sci = 1, f.prec = 4, f.width = 10 + neg;
        } else if (emax > 5 || emax < 0) {
            f.scale = pow(10.0, emax - 1);
            f.prec = 4, f.width = 6 + neg;
        } else {
            f.prec = 4, f.width = (emax > 0 ? emax : 1) + 5 + neg;
        }
    }
    if (special && f.width < 4) f.width = 4;
    return f;
}

static void put_num(sbuf *b, const numfmt *f, double v) {
    if (isnan(v))
        sb_printf(b, "%*s", f->width, "nan");
    else if (isinf(v))
        sb_printf(b, "%*s", f->width, v > 0 ? "inf" : "-inf");
    else if (f->sci)
        sb_printf(b, "%*.*e", f->width, f->prec, v);
    else
        sb_printf(b, "%*.*f", f->width, f->prec, v / f->scale);
}

/* Positions of dimension of size n to show; -1 marks the elision. */
static int shown(int64_t n, int elide, int64_t *pos) {
    int k = 0;
    if (!elide || n <= 2 * EDGE) {
        for (int64_t i = 0; i < n; i++) pos[k++] = i;
        return k;
    }
    for (int i = 0; i < EDGE; i++) pos[k++] = i;
    pos[k++] = -1;
    for (int i = 0; i < EDGE; i++) pos[k++] = n - EDGE + i;
    return k;
}

/* Print the matrix t (2-D view header) under format f. */
static void put_matrix(sbuf *b, const dpo_tensor *m, const numfmt *f, int elide) {
    int64_t *rows = (int64_t *)malloc(sizeof(int64_t) * (size_t)(m->shape[0] + 1));
    int64_t *cols = (int64_t *)malloc(sizeof(int64_t) * (size_t)(m->shape[1] + 1));
    int nr, nc, per, cw = f->width + 1;
    if (!rows || !cols) {
        b->failed = 1;
        free(rows);
        free(cols);
        return;
    }
    nr = shown(m->shape[0], elide, rows);
    nc = shown(m->shape[1], elide, cols);
    per = (LINEWIDTH - 1) / cw;
    if (per < 1) per = 1;
    for (int c0 = 0; c0 < nc; c0 += per) {
        int c1 = c0 + per < nc ? c0 + per : nc;
        if (nc > per) {
            int64_t first = cols[c0] >= 0 ? cols[c0] : cols[c0 + 1];
            int64_t last = cols[c1 - 1] >= 0 ? cols[c1 - 1] : cols[c1 - 2];
            sb_printf(b, "%sColumns %lld to %lld\n", c0 ? "\n" : "", (long long)first + 1,
                      (long long)last + 1);
        }
        for (int r = 0; r < nr; r++) {
            if (rows[r] < 0) {
                sb_printf(b, "%*s\n", cw, "...");
                continue;
            }
            for (int c = c0; c < c1; c++) {
                if (c > c0) sb_printf(b, " ");
                if (cols[c] < 0) {
                    sb_printf(b, "%*s", f->width, "...");
                    continue;
                }
                put_num(b, f, dpo_tensor_get(m, rows[r] * m->shape[1] + cols[c]));
            }
            sb_printf(b, "\n");
        }
    }
    free(rows);
    free(cols);
}

static void put_scale(sbuf *b, const numfmt *f) {
    if (f->scale != 1.0) sb_printf(b, "%.0e *\n", f->scale);
}

char *dpo_tensor_format(const dpo_tensor *t, const char *name) {
    sbuf b = {NULL, 0, 0, 0};
    char shp[DPO_SHAPELEN];
    int64_t n = dpo_tensor_numel(t);
    int elide = n > THRESHOLD;
    numfmt f;
    b.cap = 256;
    b.s = (char *)malloc(b.cap);
    if (!b.s) return NULL;
    b.s[0] = '\0';
    dpo_tensor_shape_str(t, shp, sizeof shp);
    if (n == 0) {
        sb_printf(&b, "[%s %s with no elements of size %s]", name, dpo_dtype_name(t->dtype), shp);
        goto done;
    }
    f = choose_format(t);
    if (t->ndim == 0) {
        numfmt g = f;
        g.width = 0, g.scale = 1.0;
        if (!g.sci && !g.intmode && (fabs(dpo_tensor_get(t, 0)) >= 1e5 || f.scale != 1.0))
            g.sci = 1;
        put_num(&b, &g, dpo_tensor_get(t, 0));
        sb_printf(&b, "\n[%s %s scalar]", name, dpo_dtype_name(t->dtype));
        goto done;
    }
    if (t->ndim == 1) {
        dpo_tensor m = *t; /* a column: one value per line */
        m.ndim = 2;
        m.shape[0] = t->shape[0], m.stride[0] = t->stride[0];
        m.shape[1] = 1, m.stride[1] = 1;
        put_scale(&b, &f);
        put_matrix(&b, &m, &f, elide);
    } else if (t->ndim == 2) {
        put_scale(&b, &f);
        put_matrix(&b, t, &f, elide);
    } else {
        /* walk the leading dims, eliding each, printing 2-D slices */
        int lead = t->ndim - 2;
        int64_t pos[DPO_MAXDIM][2 * EDGE + 1];
        int cnt[DPO_MAXDIM], idx[DPO_MAXDIM] = {0};
        int first = 1;
        for (int d = 0; d < lead; d++) cnt[d] = shown(t->shape[d], elide, pos[d]);
        for (;;) {
            int skip = 0;
            for (int d = 0; d < lead; d++)
                if (pos[d][idx[d]] < 0) skip = 1;
            if (skip) {
                /* print the elision once, where the first elided index starts */
                int only = 1;
                for (int d = 0; d < lead; d++)
                    if (pos[d][idx[d]] < 0) {
                        for (int d2 = d + 1; d2 < lead; d2++)
                            if (idx[d2] != 0) only = 0;
                        break;
                    }
                if (only) sb_printf(&b, "%s...\n", first ? "" : "\n");
                first = 0;
            } else {
                dpo_tensor m = *t;
                int64_t off = t->offset;
                sb_printf(&b, "%s(", first ? "" : "\n");
                for (int d = 0; d < lead; d++) {
                    sb_printf(&b, "%lld,", (long long)pos[d][idx[d]] + 1);
                    off += pos[d][idx[d]] * t->stride[d];
                }
                sb_printf(&b, ".,.) =\n");
                m.ndim = 2;
                m.offset = off;
                m.shape[0] = t->shape[lead], m.stride[0] = t->stride[lead];
                m.shape[1] = t->shape[lead + 1], m.stride[1] = t->stride[lead + 1];
                put_scale(&b, &f);
                put_matrix(&b, &m, &f, elide);
                first = 0;
            }
            {
                int d = lead - 1;
                while (d >= 0 && ++idx[d] == cnt[d]) idx[d--] = 0;
                if (d < 0) break;
            }
        }
    }
    sb_printf(&b, "[%s %s of size %s]", name, dpo_dtype_name(t->dtype), shp);
done:
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
