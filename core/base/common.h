/*
** common.h: what every engine file shares.
** Status codes, the error record engine functions fill instead of raising,
** checked allocation, and the one helper that prints a shape ("2x3").
** Nothing here knows Lua: the bindings turn a dpo_error into a Lua error.
*/
#ifndef DPO_COMMON_H
#define DPO_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DPO_OK = 0,
    DPO_ERR_ARG,   /* a bad argument value (dimension, index, option) */
    DPO_ERR_SHAPE, /* shapes that do not broadcast or multiply */
    DPO_ERR_TYPE,  /* a dtype the operation does not accept */
    DPO_ERR_RANGE, /* an index out of range */
    DPO_ERR_MEM,   /* allocation failed or a size overflowed */
    DPO_ERR_IO     /* a file could not be read or written */
} dpo_status;

#define DPO_ERRLEN 256

/*
** The error record. `arg` names the culprit among the function's operands
** (1 = first), 0 when no single operand is to blame; bindings map it to a
** Lua argument position.
*/
typedef struct dpo_error {
    dpo_status status;
    int arg;
    char msg[DPO_ERRLEN];
} dpo_error;

/* Fill `e` (which may be NULL) and return NULL, so callers can `return dpo_fail(...)`. */
void *dpo_fail(dpo_error *e, dpo_status s, int arg, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Allocation aligned for SIMD loads; NULL on failure or overflow. */
void *dpo_alloc(size_t nbytes);
void dpo_free(void *p);

/* Write "2x3x4" (or "scalar" for 0 dims) into buf; returns buf. */
char *dpo_shape_str(const int64_t *shape, int ndim, char *buf, size_t n);
#define DPO_SHAPELEN 128

/* Set by the front end's SIGINT handler; long C loops may poll it. */
extern volatile int dpo_interrupted;

#endif
