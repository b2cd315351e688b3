/*
** tensor.h: the tensor of the engine.
**
** A tensor is a shape, strides and an offset into a refcounted storage.
** Two dtypes: float32 (values) and int32 (token ids, masks, indices).
** New tensors are row-major and contiguous; views (reshape, narrow,
** transpose, select) share the storage and may be strided. Every kernel
** reads strided inputs and writes contiguous outputs.
**
** Ownership: dpo_tensor_new/... return a tensor holding one reference;
** dpo_tensor_release drops it. Functions that fail return NULL (or a
** non-zero status) and fill the dpo_error they were given.
** Dims are 0-based here; the Lua bindings convert from 1-based.
*/
#ifndef DPO_TENSOR_H
#define DPO_TENSOR_H

#include "base/common.h"
#include "base/rng.h"

#include <stdint.h>

#define DPO_MAXDIM 8

typedef enum { DPO_F32 = 0, DPO_I32 = 1 } dpo_dtype;

const char *dpo_dtype_name(dpo_dtype t); /* "float32", "int32" */

/* The operations of the tensor layer: one enum, one name table (tensor.c). */
typedef enum {
    DPO_OP_NONE = 0,
    /* binary, broadcasting */
    DPO_OP_ADD,
    DPO_OP_SUB,
    DPO_OP_MUL,
    DPO_OP_DIV,
    DPO_OP_POW,
    DPO_OP_MAXIMUM,
    DPO_OP_MINIMUM,
    DPO_OP_GT,
    DPO_OP_GE,
    DPO_OP_LT,
    DPO_OP_LE,
    DPO_OP_EQ,
    DPO_OP_NE,
    /* unary */
    DPO_OP_NEG,
    DPO_OP_EXP,
    DPO_OP_LOG,
    DPO_OP_SQRT,
    DPO_OP_ABS,
    DPO_OP_SIGMOID,
    DPO_OP_TANH,
    DPO_OP_RELU,
    DPO_OP_GELU,
    DPO_OP_LOGSIGMOID,
    DPO_OP_SOFTPLUS,
    DPO_OP_SILU,  /* x * sigmoid(x) */
    DPO_OP_RSQRT, /* 1 / sqrt(x) */
    DPO_OP_CLAMP,
    /* products and reductions */
    DPO_OP_MATMUL,
    DPO_OP_SUM,
    DPO_OP_MEAN,
    DPO_OP_MAX,
    DPO_OP_MIN,
    DPO_OP_ARGMAX,
    DPO_OP_ARGMIN,
    DPO_OP_SOFTMAX,
    DPO_OP_LOG_SOFTMAX,
    DPO_OP_LOGSUMEXP,
    /* indexing and shape */
    DPO_OP_GATHER,
    DPO_OP_INDEX_SELECT,
    DPO_OP_CAT,
    DPO_OP_STACK,
    DPO_OP_WHERE,
    DPO_OP_NARROW,
    DPO_OP_RESHAPE,
    DPO_OP_TRANSPOSE,
    DPO_OP_SELECT,
    DPO_OP_COPY,
    /* coarse nodes with a fused backward */
    DPO_OP_GPT_LOGPS,
    DPO_OP_LLAMA_LOGPS,
    DPO_OP_COUNT
} dpo_op;

const char *dpo_op_name(dpo_op op); /* "add", "log_softmax", ... */

typedef struct dpo_storage {
    void *data;
    size_t nbytes;
    int refcount;
    void (*release)(void *ctx); /* NULL: data came from dpo_alloc */
    void *ctx;
} dpo_storage;

/*
** The one reference between the tensor layer's two halves: a tensor owns the
** autograd node that made it, and releasing the tensor releases the node.
** The node is defined by autograd.h (which builds on this header) and its
** release lives in autograd.c; tensor.c knows nothing else of autograd.
*/
struct dpo_node;
void dpo_node_release(struct dpo_node *n);

typedef struct dpo_tensor {
    dpo_storage *storage;
    int64_t offset; /* first element, in elements */
    int ndim;       /* 0 for a scalar (one element) */
    dpo_dtype dtype;
    int64_t shape[DPO_MAXDIM];
    int64_t stride[DPO_MAXDIM]; /* in elements */
    int refcount;
    /* autograd (autograd.c): a leaf that requires grad accumulates into
       grad; a computed tensor points to the node that made it. */
    int requires_grad;
    struct dpo_tensor *grad;
    struct dpo_node *node;
} dpo_tensor;

/* ---- creation and lifetime --------------------------------------------- */
dpo_tensor *dpo_tensor_new(dpo_dtype dt, int ndim, const int64_t *shape, dpo_error *e);
dpo_tensor *dpo_tensor_zeros(dpo_dtype dt, int ndim, const int64_t *shape, dpo_error *e);
dpo_tensor *dpo_tensor_scalar(dpo_dtype dt, double v, dpo_error *e);
/* A tensor over memory the engine does not own; release(ctx) runs when the last view goes. */
dpo_tensor *dpo_tensor_wrap(dpo_dtype dt, int ndim, const int64_t *shape, void *data,
                            void (*release)(void *), void *ctx, dpo_error *e);
void dpo_tensor_retain(dpo_tensor *t);
void dpo_tensor_release(dpo_tensor *t);

/* ---- facts --------------------------------------------------------------- */
int64_t dpo_tensor_numel(const dpo_tensor *t);
int dpo_tensor_is_contiguous(const dpo_tensor *t);
int dpo_tensor_same_shape(const dpo_tensor *a, const dpo_tensor *b);
char *dpo_tensor_shape_str(const dpo_tensor *t, char *buf, size_t n);
static inline float *dpo_f32(const dpo_tensor *t) {
    return (float *)t->storage->data + t->offset;
}
static inline int32_t *dpo_i32(const dpo_tensor *t) {
    return (int32_t *)t->storage->data + t->offset;
}
/* Element at logical row-major position i (any strides), as a double. */
double dpo_tensor_get(const dpo_tensor *t, int64_t i);
void dpo_tensor_set(dpo_tensor *t, int64_t i, double v);

/* ---- views (share storage) ---------------------------------------------- */
/* shape may hold one -1, inferred. A view when strides allow, else a copy. */
dpo_tensor *dpo_tensor_reshape(dpo_tensor *t, int ndim, const int64_t *shape, dpo_error *e);
/* A view only: fails when t's strides do not allow it. */
dpo_tensor *dpo_tensor_view(dpo_tensor *t, int ndim, const int64_t *shape, dpo_error *e);
dpo_tensor *dpo_tensor_transpose(dpo_tensor *t, int d0, int d1, dpo_error *e);
dpo_tensor *dpo_tensor_narrow(dpo_tensor *t, int dim, int64_t start, int64_t len, dpo_error *e);
dpo_tensor *dpo_tensor_select(dpo_tensor *t, int dim, int64_t index, dpo_error *e);

/* ---- copies --------------------------------------------------------------- */
/* t itself (retained) when contiguous, else a contiguous copy. */
dpo_tensor *dpo_tensor_contiguous(dpo_tensor *t, dpo_error *e);
dpo_tensor *dpo_tensor_clone(const dpo_tensor *t, dpo_error *e);
/* t itself (retained) when already of dtype dt, else a converted copy. */
dpo_tensor *dpo_tensor_cast(dpo_tensor *t, dpo_dtype dt, dpo_error *e);
void dpo_tensor_fill(dpo_tensor *t, double v);
/* dst <- src, src broadcast to dst's shape, converted to dst's dtype. */
dpo_status dpo_tensor_copy(dpo_tensor *dst, const dpo_tensor *src, dpo_error *e);
/* Strided gather of t into the contiguous buffer out (numel elements of t's dtype). */
void dpo_tensor_pack(const dpo_tensor *t, void *out);

/* ---- comparison ------------------------------------------------------------ */
int dpo_tensor_equal(const dpo_tensor *a, const dpo_tensor *b);
/* 1 when |a - b| <= atol + rtol * |b| everywhere (b broadcast); -1 on a shape error. */
int dpo_tensor_allclose(const dpo_tensor *a, const dpo_tensor *b, double rtol, double atol,
                        dpo_error *e);

/* ---- elementwise and broadcasting (tensor_ops.c) --------------------------- */
/* out_shape gets the broadcast of a and b; returns its ndim, or -1 (error filled). */
int dpo_broadcast_shape(const dpo_tensor *a, const dpo_tensor *b, int64_t *out_shape, dpo_op op,
                        dpo_error *e);
/* Fill *v with a view header (no reference taken) of t expanded to shape:
** stride 0 on broadcast dims. t's shape must broadcast to shape. */
void dpo_tensor_expand_header(const dpo_tensor *t, int ndim, const int64_t *shape, dpo_tensor *v);
dpo_tensor *dpo_binary(dpo_op op, const dpo_tensor *a, const dpo_tensor *b, dpo_error *e);
dpo_tensor *dpo_unary(dpo_op op, const dpo_tensor *a, dpo_error *e);
/* Either bound may be absent (has_lo / has_hi = 0). */
dpo_tensor *dpo_clamp(const dpo_tensor *a, int has_lo, double lo, int has_hi, double hi,
                      dpo_error *e);
/* cond ? a : b, all three broadcast together; cond nonzero means true. */
dpo_tensor *dpo_where(const dpo_tensor *cond, const dpo_tensor *a, const dpo_tensor *b,
                      dpo_error *e);

/* ---- reductions and normalisations (tensor_reduce.c) ------------------------ */
/* op: SUM MEAN MAX MIN ARGMAX ARGMIN. dim < 0: over all elements (a scalar).
** For MAX/MIN along a dim, *indices (if not NULL) gets the positions + index_base. */
dpo_tensor *dpo_reduce(dpo_op op, const dpo_tensor *t, int dim, int keepdim, int index_base,
                       dpo_tensor **indices, dpo_error *e);
/* op: SOFTMAX LOG_SOFTMAX LOGSUMEXP (keepdim used by LOGSUMEXP only). */
dpo_tensor *dpo_softmax_like(dpo_op op, const dpo_tensor *t, int dim, int keepdim, dpo_error *e);
dpo_tensor *dpo_cat(dpo_tensor *const *ts, int n, int dim, dpo_error *e);
dpo_tensor *dpo_stack(dpo_tensor *const *ts, int n, int dim, dpo_error *e);
/* out[i][j] = t[i][index[i][j] - base] along dim (index int32, same ndim as t). */
dpo_tensor *dpo_gather(const dpo_tensor *t, int dim, const dpo_tensor *index, int base,
                       dpo_error *e);
/* Rows of t along dim picked by the 1-D int32 index (minus base). */
dpo_tensor *dpo_index_select(const dpo_tensor *t, int dim, const dpo_tensor *index, int base,
                             dpo_error *e);

/* ---- products (blas.c) -------------------------------------------------------- */
/* 2-D x 2-D only. */
dpo_tensor *dpo_mm(const dpo_tensor *a, const dpo_tensor *b, dpo_error *e);
/* 1-D, 2-D and 3-D operands as torch.matmul: vector products, batched 3-D,
** 3-D x 2-D and 2-D x 3-D with the batch broadcast. */
dpo_tensor *dpo_matmul(const dpo_tensor *a, const dpo_tensor *b, dpo_error *e);
/* Naive reference C = A B for row-major contiguous float arrays, for tests. */
void dpo_mm_ref(float *c, const float *a, const float *b, int64_t m, int64_t n, int64_t k);

/* ---- random fills (tensor_rand.c) -------------------------------------------- */
/* t <- uniform in [lo, hi) (int32: floored) / normal(mean, std), in logical order. */
void dpo_rng_fill_uniform(dpo_rng *r, dpo_tensor *t, double lo, double hi);
void dpo_rng_fill_normal(dpo_rng *r, dpo_tensor *t, double mean, double std);

/* ---- printing (tensor_print.c) -------------------------------------------- */
/* A malloc'd string in Torch's layout, ending in "[<name> float32 of size 2x3]". */
char *dpo_tensor_format(const dpo_tensor *t, const char *name);

#endif
