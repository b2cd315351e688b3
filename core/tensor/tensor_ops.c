/*
** tensor_ops.c: elementwise operations with broadcasting.
**
** Binary ops follow numpy's broadcasting (shapes aligned at the trailing
** dimension; a size-1 or missing dimension stretches). Inputs may be strided
** views; the output is always new and contiguous. Dtypes: int32 op int32
** stays int32 for + - * maximum minimum (wrapping like C unsigned); anything
** with a float32 operand, and / and ^, compute in float32. Comparisons give
** int32 masks of 0 and 1.
**
** Loops: after broadcasting, adjacent dimensions that are contiguous for all
** operands are merged, so the inner loop is as long as possible; work is split
** into blocks over rows and OpenMP threads take blocks.
*/
#include "tensor/tensor.h"

#include <math.h>
#include <string.h>

#define BLOCK   16384
#define PAR_MIN 32768

void dpo_tensor_expand_header(const dpo_tensor *t, int ndim, const int64_t *shape, dpo_tensor *v) {
    int off = ndim - t->ndim;
    *v = *t;
    v->ndim = ndim;
    for (int i = ndim - 1; i >= 0; i--) {
        int si = i - off;
        v->shape[i] = shape[i];
        v->stride[i] = (si >= 0 && t->shape[si] == shape[i]) ? t->stride[si] : 0;
    }
}

int dpo_broadcast_shape(const dpo_tensor *a, const dpo_tensor *b, int64_t *out, dpo_op op,
                        dpo_error *e) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < nd; i++) {
        int ai = a->ndim - nd + i, bi = b->ndim - nd + i;
        int64_t as = ai >= 0 ? a->shape[ai] : 1, bs = bi >= 0 ? b->shape[bi] : 1;
        if (as != bs && as != 1 && bs != 1) {
            char sa[DPO_SHAPELEN], sb[DPO_SHAPELEN];
            (void)op;
            dpo_fail(e, DPO_ERR_SHAPE, 2, "shapes %s and %s do not broadcast",
                     dpo_tensor_shape_str(a, sa, sizeof sa),
                     dpo_tensor_shape_str(b, sb, sizeof sb));
            return -1;
        }
        out[i] = as == 1 ? bs : as;
    }
    return nd;
}

/* ---- the strided walk over up to three operands ----------------------------- */

typedef struct {
    int nd;
    int64_t shape[DPO_MAXDIM];
    int64_t st[3][DPO_MAXDIM]; /* strides of operands 0..n-1 (out is contiguous) */
    int64_t base[3];           /* their offsets */
    int64_t inner, rows;
} walk;

/* Set up a walk over views already expanded to one shape; merge dims. */
static void walk_init(walk *w, int nops, const dpo_tensor *const *v, int nd, const int64_t *shape) {
    int k = 0;
    for (int op = 0; op < nops; op++) w->base[op] = v[op]->offset;
    for (int i = 0; i < nd; i++) {
        if (shape[i] == 1) continue; /* size-1 dims do not move */
        if (k > 0) {
            int merge = 1;
            for (int op = 0; op < nops; op++)
                if (w->st[op][k - 1] != v[op]->stride[i] * shape[i]) merge = 0;
            if (merge) {
                w->shape[k - 1] *= shape[i];
                for (int op = 0; op < nops; op++) w->st[op][k - 1] = v[op]->stride[i];
                continue;
            }
        }
        w->shape[k] = shape[i];
        for (int op = 0; op < nops; op++) w->st[op][k] = v[op]->stride[i];
        k++;
    }
    if (k == 0) {
        w->shape[0] = 1;
        for (int op = 0; op < nops; op++) w->st[op][0] = 0;
        k = 1;
    }
    w->nd = k;
    w->inner = w->shape[k - 1];
    w->rows = 1;
    for (int i = 0; i < k - 1; i++) w->rows *= w->shape[i];
}

/* Offsets of row r (over all dims but the last) for operand op. */
static int64_t walk_pos(const walk *w, int op, int64_t r) {
    int64_t pos = w->base[op];
    for (int d = w->nd - 2; d >= 0; d--) {
        pos += (r % w->shape[d]) * w->st[op][d];
        r /= w->shape[d];
    }
    return pos;
}

/* ---- binary kernels ------------------------------------------------------------- */

static inline float f_max(float x, float y) {
    return (x != x || x > y) ? x : y;
}
static inline float f_min(float x, float y) {
    return (x != x || x < y) ? x : y;
}

#define BLOOP(TO, TI, EXPR)                                                                        \
    do {                                                                                           \
        TO *o_ = (TO *)o;                                                                          \
        const TI *a_ = (const TI *)a, *b_ = (const TI *)b;                                         \
        if (sa == 1 && sb == 1) {                                                                  \
            for (int64_t i = 0; i < n; i++) {                                                      \
                TI x = a_[i], y = b_[i];                                                           \
                o_[i] = (TO)(EXPR);                                                                \
            }                                                                                      \
        } else if (sa == 1 && sb == 0) {                                                           \
            TI y = b_[0];                                                                          \
            for (int64_t i = 0; i < n; i++) {                                                      \
                TI x = a_[i];                                                                      \
                o_[i] = (TO)(EXPR);                                                                \
            }                                                                                      \
        } else if (sa == 0 && sb == 1) {                                                           \
            TI x = a_[0];                                                                          \
            for (int64_t i = 0; i < n; i++) {                                                      \
                TI y = b_[i];                                                                      \
                o_[i] = (TO)(EXPR);                                                                \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < n; i++) {                                                      \
                TI x = a_[i * sa], y = b_[i * sb];                                                 \
                o_[i] = (TO)(EXPR);                                                                \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void bin_f32(dpo_op op, void *o, const void *a, int64_t sa, const void *b, int64_t sb,
                    int64_t n) {
    switch (op) {
    case DPO_OP_ADD:
        BLOOP(float, float, x + y);
        break;
    case DPO_OP_SUB:
        BLOOP(float, float, x - y);
        break;
    case DPO_OP_MUL:
        BLOOP(float, float, x *y);
        break;
    case DPO_OP_DIV:
        BLOOP(float, float, x / y);
        break;
    case DPO_OP_POW:
        BLOOP(float, float, powf(x, y));
        break;
    case DPO_OP_MAXIMUM:
        BLOOP(float, float, f_max(x, y));
        break;
    case DPO_OP_MINIMUM:
        BLOOP(float, float, f_min(x, y));
        break;
    case DPO_OP_GT:
        BLOOP(int32_t, float, x > y);
        break;
    case DPO_OP_GE:
        BLOOP(int32_t, float, x >= y);
        break;
    case DPO_OP_LT:
        BLOOP(int32_t, float, x < y);
        break;
    case DPO_OP_LE:
        BLOOP(int32_t, float, x <= y);
        break;
    case DPO_OP_EQ:
        BLOOP(int32_t, float, x == y);
        break;
    case DPO_OP_NE:
        BLOOP(int32_t, float, x != y);
        break;
    default:
        break;
    }
}

static void bin_i32(dpo_op op, void *o, const void *a, int64_t sa, const void *b, int64_t sb,
                    int64_t n) {
    switch (op) {
    case DPO_OP_ADD:
        BLOOP(int32_t, int32_t, (uint32_t)x + (uint32_t)y);
        break;
    case DPO_OP_SUB:
        BLOOP(int32_t, int32_t, (uint32_t)x - (uint32_t)y);
        break;
    case DPO_OP_MUL:
        BLOOP(int32_t, int32_t, (uint32_t)x * (uint32_t)y);
        break;
    case DPO_OP_MAXIMUM:
        BLOOP(int32_t, int32_t, x > y ? x : y);
        break;
    case DPO_OP_MINIMUM:
        BLOOP(int32_t, int32_t, x < y ? x : y);
        break;
    case DPO_OP_GT:
        BLOOP(int32_t, int32_t, x > y);
        break;
    case DPO_OP_GE:
        BLOOP(int32_t, int32_t, x >= y);
        break;
    case DPO_OP_LT:
        BLOOP(int32_t, int32_t, x < y);
        break;
    case DPO_OP_LE:
        BLOOP(int32_t, int32_t, x <= y);
        break;
    case DPO_OP_EQ:
        BLOOP(int32_t, int32_t, x == y);
        break;
    case DPO_OP_NE:
        BLOOP(int32_t, int32_t, x != y);
        break;
    default:
        break;
    }
}

static int is_compare(dpo_op op) {
    return op >= DPO_OP_GT && op <= DPO_OP_NE;
}

static int int_closed(dpo_op op) {
    return op == DPO_OP_ADD || op == DPO_OP_SUB || op == DPO_OP_MUL || op == DPO_OP_MAXIMUM ||
           op == DPO_OP_MINIMUM || is_compare(op);
}

dpo_tensor *dpo_binary(dpo_op op, const dpo_tensor *a, const dpo_tensor *b, dpo_error *e) {
    int64_t shape[DPO_MAXDIM];
    int nd = dpo_broadcast_shape(a, b, shape, op, e);
    dpo_tensor *ca = NULL, *cb = NULL, *out = NULL;
    dpo_dtype ct;
    if (nd < 0) return NULL;
    if (op < DPO_OP_ADD || op > DPO_OP_NE)
        return dpo_fail(e, DPO_ERR_ARG, 0, "'%s' is not a binary operation", dpo_op_name(op));
    ct = (a->dtype == DPO_I32 && b->dtype == DPO_I32 && int_closed(op)) ? DPO_I32 : DPO_F32;
    ca = dpo_tensor_cast((dpo_tensor *)a, ct, e);
    if (ca) cb = dpo_tensor_cast((dpo_tensor *)b, ct, e);
    if (cb) out = dpo_tensor_new(is_compare(op) ? DPO_I32 : ct, nd, shape, e);
    if (out) {
        dpo_tensor va, vb;
        const dpo_tensor *views[2] = {&va, &vb};
        walk w;
        int64_t nblk, blocks;
        const char *pa = (const char *)ca->storage->data, *pb = (const char *)cb->storage->data;
        char *po = (char *)out->storage->data;
        int64_t total = dpo_tensor_numel(out);
        dpo_tensor_expand_header(ca, nd, shape, &va);
        dpo_tensor_expand_header(cb, nd, shape, &vb);
        walk_init(&w, 2, views, nd, shape);
        nblk = (w.inner + BLOCK - 1) / BLOCK;
        blocks = w.rows * nblk;
        if (total > 0) {
#pragma omp parallel for if (total > PAR_MIN) schedule(static)
            for (int64_t k = 0; k < blocks; k++) {
                int64_t r = k / nblk, j0 = (k % nblk) * BLOCK;
                int64_t len = w.inner - j0 < BLOCK ? w.inner - j0 : BLOCK;
                int64_t oa = walk_pos(&w, 0, r) + j0 * w.st[0][w.nd - 1];
                int64_t ob = walk_pos(&w, 1, r) + j0 * w.st[1][w.nd - 1];
                void *o = po + (r * w.inner + j0) * 4;
                if (ct == DPO_F32)
                    bin_f32(op, o, pa + oa * 4, w.st[0][w.nd - 1], pb + ob * 4, w.st[1][w.nd - 1],
                            len);
                else
                    bin_i32(op, o, pa + oa * 4, w.st[0][w.nd - 1], pb + ob * 4, w.st[1][w.nd - 1],
                            len);
            }
        }
    }
    dpo_tensor_release(ca);
    dpo_tensor_release(cb);
    return out;
}

/* ---- unary kernels --------------------------------------------------------------- */

static inline float f_sigmoid(float x) {
    if (x >= 0) return 1.0f / (1.0f + expf(-x));
    {
        float z = expf(x);
        return z / (1.0f + z);
    }
}

static inline float f_logsigmoid(float x) {
    return fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
}

static inline float f_softplus(float x) {
    return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

/* GELU with the tanh approximation, as GPT-2 uses it. */
static inline float f_gelu(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

/* clang-format off */
#define ULOOP(EXPR)                                                       \
    do {                                                                  \
        _Pragma("omp parallel for if (n > PAR_MIN) schedule(static)")    \
        for (int64_t i = 0; i < n; i++) {                                 \
            float x = a[i];                                               \
            o[i] = (EXPR);                                                \
        }                                                                 \
    } while (0)
/* clang-format on */

static void un_f32(dpo_op op, float *o, const float *a, int64_t n) {
    switch (op) {
    case DPO_OP_NEG:
        ULOOP(-x);
        break;
    case DPO_OP_EXP:
        ULOOP(expf(x));
        break;
    case DPO_OP_LOG:
        ULOOP(logf(x));
        break;
    case DPO_OP_SQRT:
        ULOOP(sqrtf(x));
        break;
    case DPO_OP_ABS:
        ULOOP(fabsf(x));
        break;
    case DPO_OP_SIGMOID:
        ULOOP(f_sigmoid(x));
        break;
    case DPO_OP_TANH:
        ULOOP(tanhf(x));
        break;
    case DPO_OP_RELU:
        ULOOP(x < 0.0f ? 0.0f : x);
        break;
    case DPO_OP_GELU:
        ULOOP(f_gelu(x));
        break;
    case DPO_OP_LOGSIGMOID:
        ULOOP(f_logsigmoid(x));
        break;
    case DPO_OP_SOFTPLUS:
        ULOOP(f_softplus(x));
        break;
    case DPO_OP_SILU:
        ULOOP(x * f_sigmoid(x));
        break;
    case DPO_OP_RSQRT:
        ULOOP(1.0f / sqrtf(x));
        break;
    default:
        break;
    }
}

dpo_tensor *dpo_unary(dpo_op op, const dpo_tensor *a, dpo_error *e) {
    dpo_tensor *ca, *out;
    int64_t n;
    if (op < DPO_OP_NEG || op > DPO_OP_RSQRT)
        return dpo_fail(e, DPO_ERR_ARG, 0, "'%s' is not a unary operation", dpo_op_name(op));
    if (a->dtype == DPO_I32 && (op == DPO_OP_NEG || op == DPO_OP_ABS)) {
        const int32_t *s;
        int32_t *d;
        ca = dpo_tensor_contiguous((dpo_tensor *)a, e);
        if (!ca) return NULL;
        out = dpo_tensor_new(DPO_I32, a->ndim, a->shape, e);
        if (out) {
            n = dpo_tensor_numel(a);
            s = dpo_i32(ca);
            d = dpo_i32(out);
            for (int64_t i = 0; i < n; i++) {
                uint32_t x = (uint32_t)s[i];
                d[i] = (int32_t)((op == DPO_OP_NEG || s[i] < 0) ? 0u - x : x);
            }
        }
        dpo_tensor_release(ca);
        return out;
    }
    if (a->dtype == DPO_I32)
        ca = dpo_tensor_cast((dpo_tensor *)a, DPO_F32, e);
    else
        ca = dpo_tensor_contiguous((dpo_tensor *)a, e);
    if (!ca) return NULL;
    out = dpo_tensor_new(DPO_F32, a->ndim, a->shape, e);
    if (out) {
        n = dpo_tensor_numel(a);
        un_f32(op, dpo_f32(out), dpo_f32(ca), n);
    }
    dpo_tensor_release(ca);
    return out;
}

dpo_tensor *dpo_clamp(const dpo_tensor *a, int has_lo, double lo, int has_hi, double hi,
                      dpo_error *e) {
    dpo_tensor *ca, *out;
    int64_t n;
    if (has_lo && has_hi && lo > hi)
        return dpo_fail(e, DPO_ERR_ARG, 2, "min %g is greater than max %g", lo, hi);
    ca = dpo_tensor_contiguous((dpo_tensor *)a, e);
    if (!ca) return NULL;
    out = dpo_tensor_new(a->dtype, a->ndim, a->shape, e);
    n = dpo_tensor_numel(a);
    if (out && a->dtype == DPO_F32) {
        const float *s = dpo_f32(ca);
        float *d = dpo_f32(out), l = (float)lo, h = (float)hi;
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float x = s[i];
            if (has_lo && x < l) x = l;
            if (has_hi && x > h) x = h;
            d[i] = x;
        }
    } else if (out) {
        const int32_t *s = dpo_i32(ca);
        int32_t *d = dpo_i32(out);
        for (int64_t i = 0; i < n; i++) {
            double x = s[i];
            if (has_lo && x < lo) x = ceil(lo);
            if (has_hi && x > hi) x = floor(hi);
            d[i] = (int32_t)x;
        }
    }
    dpo_tensor_release(ca);
    return out;
}

dpo_tensor *dpo_where(const dpo_tensor *cond, const dpo_tensor *a, const dpo_tensor *b,
                      dpo_error *e) {
    int64_t s1[DPO_MAXDIM], shape[DPO_MAXDIM];
    dpo_tensor ab = {0}, vc, va, vb, *ca = NULL, *cb = NULL, *out = NULL;
    dpo_dtype dt = (a->dtype == DPO_I32 && b->dtype == DPO_I32) ? DPO_I32 : DPO_F32;
    int nd = dpo_broadcast_shape(a, b, s1, DPO_OP_WHERE, e);
    if (nd < 0) {
        if (e) e->arg = 3;
        return NULL;
    }
    ab.ndim = nd;
    memcpy(ab.shape, s1, sizeof(int64_t) * (size_t)nd);
    nd = dpo_broadcast_shape(cond, &ab, shape, DPO_OP_WHERE, e);
    if (nd < 0) {
        if (e) e->arg = 1;
        return NULL;
    }
    ca = dpo_tensor_cast((dpo_tensor *)a, dt, e);
    if (ca) cb = dpo_tensor_cast((dpo_tensor *)b, dt, e);
    if (cb) out = dpo_tensor_new(dt, nd, shape, e);
    if (out) {
        const dpo_tensor *views[3] = {&vc, &va, &vb};
        walk w;
        int64_t total = dpo_tensor_numel(out);
        const char *pc = (const char *)cond->storage->data;
        const uint32_t *pa = (const uint32_t *)ca->storage->data;
        const uint32_t *pb = (const uint32_t *)cb->storage->data;
        uint32_t *po = (uint32_t *)out->storage->data;
        int cf = cond->dtype == DPO_F32;
        dpo_tensor_expand_header(cond, nd, shape, &vc);
        dpo_tensor_expand_header(ca, nd, shape, &va);
        dpo_tensor_expand_header(cb, nd, shape, &vb);
        walk_init(&w, 3, views, nd, shape);
        if (total > 0) {
#pragma omp parallel for if (total > PAR_MIN) schedule(static)
            for (int64_t r = 0; r < w.rows; r++) {
                int64_t oc = walk_pos(&w, 0, r), oa = walk_pos(&w, 1, r), ob = walk_pos(&w, 2, r);
                int64_t sc = w.st[0][w.nd - 1], sa = w.st[1][w.nd - 1], sb = w.st[2][w.nd - 1];
                for (int64_t j = 0; j < w.inner; j++) {
                    int c = cf ? ((const float *)pc)[oc + j * sc] != 0.0f
                               : ((const int32_t *)pc)[oc + j * sc] != 0;
                    po[r * w.inner + j] = c ? pa[oa + j * sa] : pb[ob + j * sb];
                }
            }
        }
    }
    dpo_tensor_release(ca);
    dpo_tensor_release(cb);
    return out;
}
