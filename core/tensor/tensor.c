/*
** tensor.c: storage, tensor creation, views, copies, element access.
**
** Contract: every tensor returned here holds one reference; views retain the
** storage they share. A tensor is never partially built: on failure nothing
** is allocated and the error record says why.
*/
#include "tensor/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const op_names[] = {
    "none",        "add",         "sub",        "mul",       "div",          "pow",     "maximum",
    "minimum",     "gt",          "ge",         "lt",        "le",           "eq",      "ne",
    "neg",         "exp",         "log",        "sqrt",      "abs",          "sigmoid", "tanh",
    "relu",        "gelu",        "logsigmoid", "softplus",  "silu",         "rsqrt",   "clamp",
    "matmul",      "sum",         "mean",       "max",       "min",          "argmax",  "argmin",
    "softmax",     "log_softmax", "logsumexp",  "gather",    "index_select", "cat",     "stack",
    "where",       "narrow",      "reshape",    "transpose", "select",       "copy",    "gpt_logps",
    "llama_logps",
};
_Static_assert(sizeof op_names / sizeof op_names[0] == DPO_OP_COUNT,
               "op_names must name every dpo_op");

const char *dpo_op_name(dpo_op op) {
    return (op >= 0 && op < DPO_OP_COUNT) ? op_names[op] : "?";
}

const char *dpo_dtype_name(dpo_dtype t) {
    return t == DPO_I32 ? "int32" : "float32";
}

/* ---- storage ------------------------------------------------------------ */

static dpo_storage *storage_new(size_t nbytes) {
    dpo_storage *s = (dpo_storage *)calloc(1, sizeof *s);
    if (!s) return NULL;
    s->data = dpo_alloc(nbytes);
    if (!s->data) {
        free(s);
        return NULL;
    }
    s->nbytes = nbytes;
    s->refcount = 1;
    return s;
}

static void storage_release(dpo_storage *s) {
    if (!s || --s->refcount > 0) return;
    if (s->release)
        s->release(s->ctx);
    else
        dpo_free(s->data);
    free(s);
}

/* ---- creation --------------------------------------------------------------- */

static void set_contiguous_strides(dpo_tensor *t) {
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = st;
        st *= t->shape[i];
    }
}

/* Check a shape and compute its element count; -1 (error filled) when bad. */
static int64_t checked_numel(int ndim, const int64_t *shape, dpo_error *e) {
    int64_t n = 1, strided = 1; /* strided: the product of the non-zero sizes */
    if (ndim < 0 || ndim > DPO_MAXDIM) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%d dimensions (at most %d)", ndim, DPO_MAXDIM);
        return -1;
    }
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            dpo_fail(e, DPO_ERR_ARG, 0, "negative size %lld in dimension %d", (long long)shape[i],
                     i + 1);
            return -1;
        }
        /* an empty tensor's strides still multiply its other sizes */
        if (shape[i] > 0 && strided > ((int64_t)1 << 40) / shape[i]) {
            dpo_fail(e, DPO_ERR_MEM, 0, "tensor too large");
            return -1;
        }
        if (shape[i] > 0) strided *= shape[i];
        n *= shape[i];
    }
    return n;
}

static dpo_tensor *tensor_shell(dpo_dtype dt, int ndim, const int64_t *shape) {
    dpo_tensor *t = (dpo_tensor *)calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    set_contiguous_strides(t);
    t->refcount = 1;
    return t;
}

dpo_tensor *dpo_tensor_new(dpo_dtype dt, int ndim, const int64_t *shape, dpo_error *e) {
    int64_t n = checked_numel(ndim, shape, e);
    dpo_tensor *t;
    if (n < 0) return NULL;
    t = tensor_shell(dt, ndim, shape);
    if (!t) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    t->storage = storage_new((size_t)n * 4);
    if (!t->storage) {
        free(t);
        return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory allocating %lld elements", (long long)n);
    }
    return t;
}

dpo_tensor *dpo_tensor_zeros(dpo_dtype dt, int ndim, const int64_t *shape, dpo_error *e) {
    dpo_tensor *t = dpo_tensor_new(dt, ndim, shape, e);
    if (t) memset(t->storage->data, 0, t->storage->nbytes);
    return t;
}

dpo_tensor *dpo_tensor_scalar(dpo_dtype dt, double v, dpo_error *e) {
    dpo_tensor *t = dpo_tensor_new(dt, 0, NULL, e);
    if (t) dpo_tensor_set(t, 0, v);
    return t;
}

dpo_tensor *dpo_tensor_wrap(dpo_dtype dt, int ndim, const int64_t *shape, void *data,
                            void (*release)(void *), void *ctx, dpo_error *e) {
    int64_t n = checked_numel(ndim, shape, e);
    dpo_tensor *t;
    if (n < 0) return NULL;
    t = tensor_shell(dt, ndim, shape);
    if (t) t->storage = (dpo_storage *)calloc(1, sizeof *t->storage);
    if (!t || !t->storage) {
        free(t);
        return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    }
    t->storage->data = data;
    t->storage->nbytes = (size_t)n * 4;
    t->storage->refcount = 1;
    t->storage->release = release;
    t->storage->ctx = ctx;
    return t;
}

void dpo_tensor_retain(dpo_tensor *t) {
    if (t) t->refcount++;
}

/*
** Releasing a tensor may release its autograd node, whose inputs may go in
** turn: a chain as long as a training loop is deep. Tensors whose count hits
** zero are queued and freed by one loop, so the C stack stays flat.
*/
static dpo_tensor *release_queue = NULL; /* linked through ->grad */
static int releasing = 0;

void dpo_tensor_release(dpo_tensor *t) {
    if (!t || --t->refcount > 0) return;
    t->refcount = 0;
    {
        dpo_tensor *g = t->grad;
        t->grad = release_queue;
        release_queue = t;
        if (g) dpo_tensor_release(g); /* grads have no nodes: no deep chains */
    }
    if (releasing) return;
    releasing = 1;
    while (release_queue) {
        dpo_tensor *x = release_queue;
        release_queue = x->grad;
        if (x->node) dpo_node_release(x->node);
        storage_release(x->storage);
        free(x);
    }
    releasing = 0;
}

/* ---- facts ------------------------------------------------------------------ */

int64_t dpo_tensor_numel(const dpo_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int dpo_tensor_is_contiguous(const dpo_tensor *t) {
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != st) return 0;
        st *= t->shape[i];
    }
    return 1;
}

int dpo_tensor_same_shape(const dpo_tensor *a, const dpo_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

char *dpo_tensor_shape_str(const dpo_tensor *t, char *buf, size_t n) {
    return dpo_shape_str(t->shape, t->ndim, buf, n);
}

/* Storage position (in elements from the data start) of logical index i. */
static int64_t storage_pos(const dpo_tensor *t, int64_t i) {
    int64_t pos = t->offset;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t sz = t->shape[d];
        pos += (i % sz) * t->stride[d];
        i /= sz;
    }
    return pos;
}

double dpo_tensor_get(const dpo_tensor *t, int64_t i) {
    int64_t p = storage_pos(t, i);
    if (t->dtype == DPO_F32) return ((const float *)t->storage->data)[p];
    return ((const int32_t *)t->storage->data)[p];
}

static int32_t to_i32(double v) {
    if (isnan(v)) return 0;
    if (v >= 2147483647.0) return INT32_MAX;
    if (v <= -2147483648.0) return INT32_MIN;
    return (int32_t)v;
}

void dpo_tensor_set(dpo_tensor *t, int64_t i, double v) {
    int64_t p = storage_pos(t, i);
    if (t->dtype == DPO_F32)
        ((float *)t->storage->data)[p] = (float)v;
    else
        ((int32_t *)t->storage->data)[p] = to_i32(v);
}

/* ---- views --------------------------------------------------------------------- */

static dpo_tensor *view_of(dpo_tensor *t) {
    dpo_tensor *v = (dpo_tensor *)malloc(sizeof *v);
    if (!v) return NULL;
    *v = *t;
    v->refcount = 1;
    v->requires_grad = 0;
    v->grad = NULL;
    v->node = NULL;
    v->storage->refcount++;
    return v;
}

/* Resolve a -1 in shape against numel; 0 on success (shape updated in place). */
static int infer_shape(const dpo_tensor *t, int ndim, int64_t *shape, const char *fn,
                       dpo_error *e) {
    int64_t known = 1, n = dpo_tensor_numel(t);
    int infer = -1;
    char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
    if (ndim < 0 || ndim > DPO_MAXDIM)
        return dpo_fail(e, DPO_ERR_ARG, 2, "%d dimensions (at most %d)", ndim, DPO_MAXDIM), -1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1) {
            if (infer >= 0) return dpo_fail(e, DPO_ERR_ARG, 2, "only one size may be -1"), -1;
            infer = i;
        } else if (shape[i] < 0) {
            return dpo_fail(e, DPO_ERR_ARG, 2, "negative size %lld", (long long)shape[i]), -1;
        } else if (shape[i] > ((int64_t)1 << 40)) { /* no tensor has that many elements */
            return dpo_fail(e, DPO_ERR_ARG, 2, "size %lld is too large", (long long)shape[i]), -1;
        } else if (shape[i] > 0 && known > INT64_MAX / shape[i]) {
            known = INT64_MAX; /* saturated: matches no numel, but a later 0 still gives 0 */
        } else {
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || n % known != 0) goto mismatch;
        shape[infer] = n / known;
    } else if (known != n) {
        goto mismatch;
    }
    return 0;
mismatch:
    dpo_shape_str(t->shape, t->ndim, a, sizeof a);
    dpo_shape_str(shape, ndim, b, sizeof b);
    dpo_fail(e, DPO_ERR_SHAPE, 2, "cannot %s a tensor of size %s (%lld elements) to %s", fn, a,
             (long long)n, b);
    return -1;
}

/*
** Strides for viewing t with a new shape without copying, when possible:
** each run of new dims must map onto a run of old dims that is itself
** contiguous in memory (the rule numpy and torch use). Returns 1 on success.
*/
static int view_strides(const dpo_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
    int oi = 0, ni = 0;
    int64_t n = dpo_tensor_numel(t);
    if (n == 0 || dpo_tensor_is_contiguous(t)) {
        int64_t st = 1;
        for (int i = ndim - 1; i >= 0; i--) {
            stride[i] = st;
            st *= shape[i];
        }
        return 1;
    }
    while (ni < ndim || oi < t->ndim) {
        int64_t osz = 1, nsz = 1;
        int ostart = oi, nstart = ni;
        /* skip size-1 dims on both sides */
        if (ni < ndim && shape[ni] == 1) {
            stride[ni] = 1;
            ni++;
            continue;
        }
        if (oi < t->ndim && t->shape[oi] == 1) {
            oi++;
            continue;
        }
        if (oi >= t->ndim || ni >= ndim) return 0;
        osz = t->shape[oi++];
        nsz = shape[ni++];
        while (osz != nsz) {
            if (osz < nsz) {
                if (oi >= t->ndim) return 0;
                if (t->shape[oi] != 1 && t->stride[oi - 1] != t->stride[oi] * t->shape[oi])
                    return 0;
                osz *= t->shape[oi++];
            } else {
                if (ni >= ndim) return 0;
                nsz *= shape[ni++];
            }
        }
        /* the old run [ostart, oi) must be contiguous within itself */
        for (int k = ostart; k < oi - 1; k++)
            if (t->shape[k + 1] != 1 && t->stride[k] != t->stride[k + 1] * t->shape[k + 1])
                return 0;
        {
            int64_t st = t->stride[oi - 1];
            for (int k = ni - 1; k >= nstart; k--) {
                stride[k] = st;
                st *= shape[k];
            }
        }
    }
    return 1;
}

dpo_tensor *dpo_tensor_view(dpo_tensor *t, int ndim, const int64_t *shape_in, dpo_error *e) {
    int64_t shape[DPO_MAXDIM], stride[DPO_MAXDIM];
    dpo_tensor *v;
    if (ndim < 0 || ndim > DPO_MAXDIM)
        return dpo_fail(e, DPO_ERR_ARG, 1, "%d dimensions (at most %d)", ndim, DPO_MAXDIM);
    memcpy(shape, shape_in, sizeof(int64_t) * (size_t)ndim);
    if (infer_shape(t, ndim, shape, "view", e) < 0) return NULL;
    if (!view_strides(t, ndim, shape, stride)) {
        char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
        return dpo_fail(e, DPO_ERR_SHAPE, 1,
                        "cannot view a non-contiguous tensor of size %s as %s (use reshape)",
                        dpo_tensor_shape_str(t, a, sizeof a),
                        dpo_shape_str(shape, ndim, b, sizeof b));
    }
    v = view_of(t);
    if (!v) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    v->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        v->shape[i] = shape[i];
        v->stride[i] = stride[i];
    }
    return v;
}

dpo_tensor *dpo_tensor_reshape(dpo_tensor *t, int ndim, const int64_t *shape_in, dpo_error *e) {
    int64_t shape[DPO_MAXDIM], stride[DPO_MAXDIM];
    dpo_tensor *c, *v;
    if (ndim < 0 || ndim > DPO_MAXDIM)
        return dpo_fail(e, DPO_ERR_ARG, 1, "%d dimensions (at most %d)", ndim, DPO_MAXDIM);
    memcpy(shape, shape_in, sizeof(int64_t) * (size_t)ndim);
    if (infer_shape(t, ndim, shape, "reshape", e) < 0) return NULL;
    if (view_strides(t, ndim, shape, stride)) return dpo_tensor_view(t, ndim, shape, e);
    c = dpo_tensor_clone(t, e);
    if (!c) return NULL;
    v = dpo_tensor_view(c, ndim, shape, e);
    dpo_tensor_release(c);
    return v;
}

static int check_dim(const dpo_tensor *t, int dim, int arg, dpo_error *e) {
    if (dim < 0 || dim >= t->ndim) {
        if (t->ndim == 0)
            dpo_fail(e, DPO_ERR_ARG, arg, "dimension %d out of range (tensor is a scalar)",
                     dim + 1);
        else
            dpo_fail(e, DPO_ERR_ARG, arg, "dimension %d out of range 1..%d", dim + 1, t->ndim);
        return -1;
    }
    return 0;
}

dpo_tensor *dpo_tensor_transpose(dpo_tensor *t, int d0, int d1, dpo_error *e) {
    dpo_tensor *v;
    int64_t tmp;
    if (check_dim(t, d0, 1, e) || check_dim(t, d1, 2, e)) return NULL;
    v = view_of(t);
    if (!v) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    tmp = v->shape[d0], v->shape[d0] = v->shape[d1], v->shape[d1] = tmp;
    tmp = v->stride[d0], v->stride[d0] = v->stride[d1], v->stride[d1] = tmp;
    return v;
}

dpo_tensor *dpo_tensor_narrow(dpo_tensor *t, int dim, int64_t start, int64_t len, dpo_error *e) {
    dpo_tensor *v;
    if (check_dim(t, dim, 1, e)) return NULL;
    if (start < 0 || start > t->shape[dim])
        return dpo_fail(e, DPO_ERR_RANGE, 2, "start %lld out of range 1..%lld",
                        (long long)start + 1, (long long)t->shape[dim]);
    if (len < 0 || start + len > t->shape[dim])
        return dpo_fail(e, DPO_ERR_RANGE, 3,
                        "length %lld from %lld exceeds size %lld of dimension %d", (long long)len,
                        (long long)start + 1, (long long)t->shape[dim], dim + 1);
    v = view_of(t);
    if (!v) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    v->offset += start * t->stride[dim];
    v->shape[dim] = len;
    return v;
}

dpo_tensor *dpo_tensor_select(dpo_tensor *t, int dim, int64_t index, dpo_error *e) {
    dpo_tensor *v;
    if (check_dim(t, dim, 1, e)) return NULL;
    if (index < 0 || index >= t->shape[dim])
        return dpo_fail(e, DPO_ERR_RANGE, 2, "index %lld out of range 1..%lld",
                        (long long)index + 1, (long long)t->shape[dim]);
    v = view_of(t);
    if (!v) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    v->offset += index * t->stride[dim];
    for (int i = dim; i < t->ndim - 1; i++) {
        v->shape[i] = t->shape[i + 1];
        v->stride[i] = t->stride[i + 1];
    }
    v->ndim--;
    return v;
}

/* ---- copies ---------------------------------------------------------------------- */

/*
** The strided walk every copy uses: visit t in logical order, calling the
** inner loop on runs along the last dimension.
*/
void dpo_tensor_pack(const dpo_tensor *t, void *out) {
    int64_t n = dpo_tensor_numel(t);
    if (n == 0) return;
    if (dpo_tensor_is_contiguous(t)) {
        memcpy(out, (const char *)t->storage->data + t->offset * 4, (size_t)n * 4);
        return;
    }
    {
        int nd = t->ndim;
        int64_t inner = t->shape[nd - 1], istride = t->stride[nd - 1];
        int64_t rows = n / inner;
        const uint32_t *src = (const uint32_t *)t->storage->data;
        uint32_t *dst = (uint32_t *)out;
#pragma omp parallel for if (n > 65536)
        for (int64_t r = 0; r < rows; r++) {
            int64_t rem = r, pos = t->offset;
            for (int d = nd - 2; d >= 0; d--) {
                pos += (rem % t->shape[d]) * t->stride[d];
                rem /= t->shape[d];
            }
            for (int64_t j = 0; j < inner; j++) dst[r * inner + j] = src[pos + j * istride];
        }
    }
}

dpo_tensor *dpo_tensor_clone(const dpo_tensor *t, dpo_error *e) {
    dpo_tensor *c = dpo_tensor_new(t->dtype, t->ndim, t->shape, e);
    if (c) dpo_tensor_pack(t, dpo_f32(c));
    return c;
}

dpo_tensor *dpo_tensor_contiguous(dpo_tensor *t, dpo_error *e) {
    if (dpo_tensor_is_contiguous(t)) {
        dpo_tensor_retain(t);
        return t;
    }
    return dpo_tensor_clone(t, e);
}

dpo_tensor *dpo_tensor_cast(dpo_tensor *t, dpo_dtype dt, dpo_error *e) {
    dpo_tensor *c, *src;
    int64_t n;
    if (t->dtype == dt) {
        dpo_tensor_retain(t);
        return t;
    }
    src = dpo_tensor_contiguous(t, e);
    if (!src) return NULL;
    c = dpo_tensor_new(dt, t->ndim, t->shape, e);
    if (!c) {
        dpo_tensor_release(src);
        return NULL;
    }
    n = dpo_tensor_numel(t);
    if (dt == DPO_F32) {
        const int32_t *s = dpo_i32(src);
        float *d = dpo_f32(c);
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] = (float)s[i];
    } else {
        const float *s = dpo_f32(src);
        int32_t *d = dpo_i32(c);
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] = to_i32(s[i]);
    }
    dpo_tensor_release(src);
    return c;
}

void dpo_tensor_fill(dpo_tensor *t, double v) {
    int64_t n = dpo_tensor_numel(t);
    if (dpo_tensor_is_contiguous(t)) {
        if (t->dtype == DPO_F32) {
            float *d = dpo_f32(t), f = (float)v;
            for (int64_t i = 0; i < n; i++) d[i] = f;
        } else {
            int32_t *d = dpo_i32(t), x = to_i32(v);
            for (int64_t i = 0; i < n; i++) d[i] = x;
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) dpo_tensor_set(t, i, v);
}

dpo_status dpo_tensor_copy(dpo_tensor *dst, const dpo_tensor *src, dpo_error *e) {
    int64_t shape[DPO_MAXDIM];
    int nd = dpo_broadcast_shape(dst, src, shape, DPO_OP_COPY, e);
    dpo_tensor *tmp = NULL, *conv = NULL;
    int64_t n;
    if (nd < 0) return e ? e->status : DPO_ERR_SHAPE;
    if (nd != dst->ndim || memcmp(shape, dst->shape, sizeof(int64_t) * (size_t)nd) != 0) {
        char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
        dpo_fail(e, DPO_ERR_SHAPE, 2, "cannot copy a tensor of size %s into one of size %s",
                 dpo_tensor_shape_str(src, a, sizeof a), dpo_tensor_shape_str(dst, b, sizeof b));
        return DPO_ERR_SHAPE;
    }
    /* Materialise src broadcast to dst's shape and dtype, contiguous. */
    if (src->dtype != dst->dtype) {
        conv = dpo_tensor_cast((dpo_tensor *)src, dst->dtype, e);
        if (!conv) return e ? e->status : DPO_ERR_MEM;
        src = conv;
    }
    tmp = dpo_tensor_new(dst->dtype, dst->ndim, dst->shape, e);
    if (!tmp) {
        dpo_tensor_release(conv);
        return e ? e->status : DPO_ERR_MEM;
    }
    {
        dpo_tensor bv;
        dpo_tensor_expand_header(src, nd, dst->shape, &bv);
        dpo_tensor_pack(&bv, dpo_f32(tmp));
    }
    n = dpo_tensor_numel(dst);
    if (dpo_tensor_is_contiguous(dst)) {
        memcpy(dpo_f32(dst), dpo_f32(tmp), (size_t)n * 4);
    } else {
        /* scatter into a strided destination, row by row along the last dim */
        int d = dst->ndim;
        int64_t inner = dst->shape[d - 1], rows = n / inner;
        uint32_t *out = (uint32_t *)dst->storage->data;
        const uint32_t *in = (const uint32_t *)dpo_f32(tmp);
        for (int64_t r = 0; r < rows; r++) {
            int64_t rem = r, pos = dst->offset;
            for (int k = d - 2; k >= 0; k--) {
                pos += (rem % dst->shape[k]) * dst->stride[k];
                rem /= dst->shape[k];
            }
            for (int64_t j = 0; j < inner; j++)
                out[pos + j * dst->stride[d - 1]] = in[r * inner + j];
        }
    }
    dpo_tensor_release(tmp);
    dpo_tensor_release(conv);
    return DPO_OK;
}

/* ---- comparison --------------------------------------------------------------------- */

int dpo_tensor_equal(const dpo_tensor *a, const dpo_tensor *b) {
    int64_t n;
    if (!dpo_tensor_same_shape(a, b)) return 0;
    n = dpo_tensor_numel(a);
    for (int64_t i = 0; i < n; i++)
        if (dpo_tensor_get(a, i) != dpo_tensor_get(b, i)) return 0;
    return 1;
}

int dpo_tensor_allclose(const dpo_tensor *a, const dpo_tensor *b, double rtol, double atol,
                        dpo_error *e) {
    int64_t shape[DPO_MAXDIM];
    int nd = dpo_broadcast_shape(a, b, shape, DPO_OP_NONE, e);
    dpo_tensor *d;
    int64_t n;
    int ok = 1;
    if (nd < 0) return -1;
    /* |a - b| and |b| over the broadcast shape */
    d = dpo_binary(DPO_OP_SUB, a, b, e);
    if (!d) return -1;
    n = dpo_tensor_numel(d);
    {
        dpo_tensor bv;
        dpo_tensor_expand_header(b, nd, shape, &bv);
        for (int64_t i = 0; i < n && ok; i++) {
            double diff = fabs(dpo_tensor_get(d, i)), ref = fabs(dpo_tensor_get(&bv, i));
            if (!(diff <= atol + rtol * ref)) ok = 0;
        }
    }
    dpo_tensor_release(d);
    return ok;
}
