/*
** common.c: error records, aligned allocation, shape printing.
*/
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise(MADV_HUGEPAGE) */
#endif
#include "base/common.h"

#include <sys/mman.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile int dpo_interrupted = 0;

void *dpo_fail(dpo_error *e, dpo_status s, int arg, const char *fmt, ...) {
    if (e) {
        va_list ap;
        e->status = s;
        e->arg = arg;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

/*
** Blocks of 4 MiB and more are aligned to 2 MiB and offered to the kernel's
** transparent huge pages: a fresh 50 MB output then costs a few dozen page
** faults instead of twelve thousand.
*/
#define HUGE_MIN   ((size_t)4 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)

void *dpo_alloc(size_t nbytes) {
    void *p = NULL;
    size_t align = 64;
    if (nbytes == 0) nbytes = 1;
    if (nbytes > ((size_t)1 << 46)) return NULL; /* 64 TiB: a size overflow, not a request */
    if (nbytes >= HUGE_MIN) {
        align = HUGE_ALIGN;
        nbytes = (nbytes + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1);
    } else {
        nbytes = (nbytes + 63) & ~(size_t)63;
    }
    if (posix_memalign(&p, align, nbytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    if (align == HUGE_ALIGN) (void)madvise(p, nbytes, MADV_HUGEPAGE);
#endif
    return p;
}

void dpo_free(void *p) {
    free(p);
}

char *dpo_shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t used = 0;
    if (n == 0) return buf;
    buf[0] = '\0';
    if (ndim == 0) {
        snprintf(buf, n, "scalar");
        return buf;
    }
    for (int i = 0; i < ndim && used < n; i++) {
        int w = snprintf(buf + used, n - used, i ? "x%lld" : "%lld", (long long)shape[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    return buf;
}
