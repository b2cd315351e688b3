/*
** check.h: the tiny assertion kit of the C tests. Each test file is a main()
** that counts checks, prints failures with file:line, ends with the line
** "N passed, N failed" and exits non-zero when anything failed.
*/
#ifndef DPO_CHECK_H
#define DPO_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double a_ = (double)(a), b_ = (double)(b);                                                 \
        if (fabs(a_ - b_) <= (tol) || (isnan(a_) && isnan(b_))) {                                  \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %s = %.9g (tol %g)\n", __FILE__, __LINE__, \
                    #a, a_, #b, b_, (double)(tol));                                                \
        }                                                                                          \
    } while (0)

#define CHECK_STR(s, sub)                                                                          \
    do {                                                                                           \
        const char *s_ = (s);                                                                      \
        if (s_ && strstr(s_, (sub))) {                                                             \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,         \
                    s_ ? s_ : "(null)", (sub));                                                    \
        }                                                                                          \
    } while (0)

static inline int check_report(const char *name) {
    printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
