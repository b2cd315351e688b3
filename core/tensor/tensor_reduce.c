/*
** tensor_reduce.c: reductions, softmax-like normalisations, and the
** indexing ops that build new tensors (cat, stack, gather, index_select).
**
** Sums accumulate in double in fixed blocks combined in a fixed order, so the
** result does not depend on the number of threads. A reduction along a dim
** sees its input as [outer, n, inner] and reduces the middle.
*/
#include "tensor/tensor.h"

#include <math.h>
#include <string.h>

#define SUMBLOCK 4096

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

/* The [outer, n, inner] split of t's shape around dim. */
static void split3(const dpo_tensor *t, int dim, int64_t *outer, int64_t *n, int64_t *inner) {
    *outer = 1, *inner = 1;
    for (int i = 0; i < dim; i++) *outer *= t->shape[i];
    *n = t->shape[dim];
    for (int i = dim + 1; i < t->ndim; i++) *inner *= t->shape[i];
}

/* Shape of t reduced along dim (kept as 1 with keepdim); returns the ndim. */
static int reduced_shape(const dpo_tensor *t, int dim, int keepdim, int64_t *shape) {
    int k = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (i == dim) {
            if (keepdim) shape[k++] = 1;
        } else {
            shape[k++] = t->shape[i];
        }
    }
    return k;
}

static inline int better(dpo_op op, double v, double best) {
    if (best != best) return 0; /* NaN already wins */
    if (v != v) return 1;
    return (op == DPO_OP_MAX || op == DPO_OP_ARGMAX) ? v > best : v < best;
}

/* Sum of x[0..n) with stride s, in double, by fixed blocks. */
static double sum_strided(const dpo_tensor *c, int64_t start, int64_t n, int64_t s) {
    double total = 0;
    if (c->dtype == DPO_F32) {
        const float *x = dpo_f32(c) + start;
        for (int64_t b = 0; b < n; b += SUMBLOCK) {
            double part = 0;
            int64_t end = b + SUMBLOCK < n ? b + SUMBLOCK : n;
            for (int64_t i = b; i < end; i++) part += x[i * s];
            total += part;
        }
    } else {
        const int32_t *x = dpo_i32(c) + start;
        int64_t acc = 0;
        for (int64_t i = 0; i < n; i++) acc += x[i * s];
        total = (double)acc;
    }
    return total;
}

static double elem(const dpo_tensor *c, int64_t i) {
    return c->dtype == DPO_F32 ? (double)dpo_f32(c)[i] : (double)dpo_i32(c)[i];
}

static dpo_tensor *reduce_all(dpo_op op, const dpo_tensor *c, int keepdim, int base, dpo_error *e) {
    int64_t shape[DPO_MAXDIM];
    int64_t n = dpo_tensor_numel(c);
    int nd = keepdim ? c->ndim : 0;
    dpo_dtype odt;
    dpo_tensor *out;
    double v = 0;
    for (int i = 0; i < nd; i++) shape[i] = 1;
    if (op == DPO_OP_SUM || op == DPO_OP_MEAN) {
        int64_t nblocks = (n + SUMBLOCK - 1) / SUMBLOCK;
        odt = (op == DPO_OP_SUM && c->dtype == DPO_I32) ? DPO_I32 : DPO_F32;
        if (c->dtype == DPO_F32 && nblocks > 1) {
            const float *x = dpo_f32(c);
            double *parts = (double *)dpo_alloc(sizeof(double) * (size_t)nblocks);
            if (!parts) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
#pragma omp parallel for if (n > 65536) schedule(static)
            for (int64_t b = 0; b < nblocks; b++) {
                double p = 0;
                int64_t end = (b + 1) * SUMBLOCK < n ? (b + 1) * SUMBLOCK : n;
                for (int64_t i = b * SUMBLOCK; i < end; i++) p += x[i];
                parts[b] = p;
            }
            for (int64_t b = 0; b < nblocks; b++) v += parts[b];
            dpo_free(parts);
        } else {
            v = sum_strided(c, 0, n, 1);
        }
        if (op == DPO_OP_MEAN) v = n > 0 ? v / (double)n : NAN;
    } else {
        int64_t bi = 0;
        double best;
        if (n == 0) return dpo_fail(e, DPO_ERR_ARG, 1, "%s of an empty tensor", dpo_op_name(op));
        best = elem(c, 0);
        for (int64_t i = 1; i < n; i++) {
            double x = elem(c, i);
            if (better(op, x, best)) best = x, bi = i;
        }
        if (op == DPO_OP_ARGMAX || op == DPO_OP_ARGMIN) {
            odt = DPO_I32;
            v = (double)(bi + base);
        } else {
            odt = c->dtype;
            v = best;
        }
    }
    out = dpo_tensor_new(odt, nd, shape, e);
    if (out) dpo_tensor_set(out, 0, v);
    return out;
}

dpo_tensor *dpo_reduce(dpo_op op, const dpo_tensor *t, int dim, int keepdim, int base,
                       dpo_tensor **indices, dpo_error *e) {
    int64_t shape[DPO_MAXDIM], outer, n, inner;
    dpo_tensor *c, *out = NULL, *idx = NULL;
    int nd, want_idx;
    dpo_dtype odt;
    if (indices) *indices = NULL;
    if (op != DPO_OP_SUM && op != DPO_OP_MEAN && op != DPO_OP_MAX && op != DPO_OP_MIN &&
        op != DPO_OP_ARGMAX && op != DPO_OP_ARGMIN)
        return dpo_fail(e, DPO_ERR_ARG, 0, "'%s' is not a reduction", dpo_op_name(op));
    if (dim >= 0 && check_dim(t, dim, 1, e)) return NULL;
    c = dpo_tensor_contiguous((dpo_tensor *)t, e);
    if (!c) return NULL;
    if (dim < 0) {
        out = reduce_all(op, c, keepdim, base, e);
        dpo_tensor_release(c);
        return out;
    }
    split3(c, dim, &outer, &n, &inner);
    nd = reduced_shape(c, dim, keepdim, shape);
    if (n == 0 && op != DPO_OP_SUM && op != DPO_OP_MEAN) {
        dpo_tensor_release(c);
        return dpo_fail(e, DPO_ERR_ARG, 1, "%s along dimension %d of size 0", dpo_op_name(op),
                        dim + 1);
    }
    if (op == DPO_OP_SUM)
        odt = c->dtype;
    else if (op == DPO_OP_MEAN)
        odt = DPO_F32;
    else if (op == DPO_OP_ARGMAX || op == DPO_OP_ARGMIN)
        odt = DPO_I32;
    else
        odt = c->dtype;
    want_idx = (op == DPO_OP_MAX || op == DPO_OP_MIN) && indices;
    out = dpo_tensor_new(odt, nd, shape, e);
    if (out && want_idx) idx = dpo_tensor_new(DPO_I32, nd, shape, e);
    if (!out || (want_idx && !idx)) {
        dpo_tensor_release(out);
        dpo_tensor_release(c);
        return NULL;
    }
    {
        int64_t m = outer * inner;
#pragma omp parallel for if (m * n > 65536) schedule(static)
        for (int64_t k = 0; k < m; k++) {
            int64_t o = k / inner, i = k % inner, start = o * n * inner + i;
            double v;
            if (op == DPO_OP_SUM || op == DPO_OP_MEAN) {
                v = sum_strided(c, start, n, inner);
                if (op == DPO_OP_MEAN) v = n > 0 ? v / (double)n : NAN;
                if (odt == DPO_F32)
                    dpo_f32(out)[k] = (float)v;
                else
                    dpo_i32(out)[k] = (int32_t)(int64_t)v;
            } else {
                double best = elem(c, start);
                int64_t bi = 0;
                for (int64_t j = 1; j < n; j++) {
                    double x = elem(c, start + j * inner);
                    if (better(op, x, best)) best = x, bi = j;
                }
                if (op == DPO_OP_ARGMAX || op == DPO_OP_ARGMIN)
                    dpo_i32(out)[k] = (int32_t)(bi + base);
                else if (odt == DPO_F32)
                    dpo_f32(out)[k] = (float)best;
                else
                    dpo_i32(out)[k] = (int32_t)best;
                if (idx) dpo_i32(idx)[k] = (int32_t)(bi + base);
            }
        }
    }
    dpo_tensor_release(c);
    if (indices) *indices = idx;
    return out;
}

dpo_tensor *dpo_softmax_like(dpo_op op, const dpo_tensor *t, int dim, int keepdim, dpo_error *e) {
    int64_t shape[DPO_MAXDIM], outer, n, inner, m;
    dpo_tensor *c, *out;
    int nd;
    if (op != DPO_OP_SOFTMAX && op != DPO_OP_LOG_SOFTMAX && op != DPO_OP_LOGSUMEXP)
        return dpo_fail(e, DPO_ERR_ARG, 0, "'%s' is not a softmax", dpo_op_name(op));
    if (check_dim(t, dim, 1, e)) return NULL;
    c = dpo_tensor_cast((dpo_tensor *)t, DPO_F32, e);
    if (c && !dpo_tensor_is_contiguous(c)) {
        dpo_tensor *cc = dpo_tensor_contiguous(c, e);
        dpo_tensor_release(c);
        c = cc;
    }
    if (!c) return NULL;
    split3(c, dim, &outer, &n, &inner);
    if (op == DPO_OP_LOGSUMEXP)
        nd = reduced_shape(c, dim, keepdim, shape);
    else
        nd = c->ndim, memcpy(shape, c->shape, sizeof(int64_t) * (size_t)nd);
    out = dpo_tensor_new(DPO_F32, nd, shape, e);
    if (!out) {
        dpo_tensor_release(c);
        return NULL;
    }
    m = outer * inner;
    {
        const float *x = dpo_f32(c);
        float *y = dpo_f32(out);
#pragma omp parallel for if (m * n > 32768) schedule(static)
        for (int64_t k = 0; k < m; k++) {
            int64_t o = k / inner, i = k % inner, start = o * n * inner + i;
            float mx = -INFINITY;
            double s = 0, lse;
            for (int64_t j = 0; j < n; j++) {
                float v = x[start + j * inner];
                if (v > mx || v != v) mx = v;
            }
            if (mx == -INFINITY) {
                /* every entry -inf (or none): lse is -inf, softmax undefined */
                lse = -INFINITY;
            } else {
                for (int64_t j = 0; j < n; j++) s += exp((double)x[start + j * inner] - mx);
                lse = mx + log(s);
            }
            if (op == DPO_OP_LOGSUMEXP) {
                y[k] = (float)lse;
            } else {
                for (int64_t j = 0; j < n; j++) {
                    double v = (double)x[start + j * inner] - lse;
                    y[start + j * inner] = (float)(op == DPO_OP_SOFTMAX ? exp(v) : v);
                }
            }
        }
    }
    dpo_tensor_release(c);
    return out;
}

/* ---- building tensors from parts ----------------------------------------------- */

dpo_tensor *dpo_cat(dpo_tensor *const *ts, int n, int dim, dpo_error *e) {
    int64_t shape[DPO_MAXDIM], outer, inner, off = 0;
    dpo_dtype dt = DPO_I32;
    dpo_tensor *out;
    const dpo_tensor *t0;
    if (n < 1) return dpo_fail(e, DPO_ERR_ARG, 1, "expected a non-empty list of tensors");
    t0 = ts[0];
    if (check_dim(t0, dim, 2, e)) return NULL;
    memcpy(shape, t0->shape, sizeof shape);
    shape[dim] = 0;
    for (int k = 0; k < n; k++) {
        const dpo_tensor *t = ts[k];
        int bad = t->ndim != t0->ndim;
        for (int i = 0; !bad && i < t->ndim; i++)
            if (i != dim && t->shape[i] != t0->shape[i]) bad = 1;
        if (bad) {
            char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
            return dpo_fail(e, DPO_ERR_SHAPE, 1,
                            "shapes %s and %s (tensor %d) do not match except in dimension %d",
                            dpo_tensor_shape_str(t0, a, sizeof a),
                            dpo_tensor_shape_str(t, b, sizeof b), k + 1, dim + 1);
        }
        shape[dim] += t->shape[dim];
        if (t->dtype == DPO_F32) dt = DPO_F32;
    }
    out = dpo_tensor_new(dt, t0->ndim, shape, e);
    if (!out) return NULL;
    outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= shape[i];
    for (int i = dim + 1; i < t0->ndim; i++) inner *= shape[i];
    for (int k = 0; k < n; k++) {
        dpo_tensor *c = dpo_tensor_cast(ts[k], dt, e), *cc;
        int64_t rows = ts[k]->shape[dim] * inner;
        if (!c) {
            dpo_tensor_release(out);
            return NULL;
        }
        cc = dpo_tensor_contiguous(c, e);
        dpo_tensor_release(c);
        if (!cc) {
            dpo_tensor_release(out);
            return NULL;
        }
        for (int64_t o = 0; o < outer; o++)
            memcpy(dpo_f32(out) + o * shape[dim] * inner + off * inner, dpo_f32(cc) + o * rows,
                   (size_t)rows * 4);
        off += ts[k]->shape[dim];
        dpo_tensor_release(cc);
    }
    return out;
}

dpo_tensor *dpo_stack(dpo_tensor *const *ts, int n, int dim, dpo_error *e) {
    dpo_tensor *views[256], *out = NULL;
    int64_t shape[DPO_MAXDIM];
    int made = 0;
    if (n < 1) return dpo_fail(e, DPO_ERR_ARG, 1, "expected a non-empty list of tensors");
    if (n > 256) return dpo_fail(e, DPO_ERR_ARG, 1, "at most 256 tensors (got %d)", n);
    if (ts[0]->ndim >= DPO_MAXDIM)
        return dpo_fail(e, DPO_ERR_ARG, 1, "tensors already have %d dimensions", ts[0]->ndim);
    if (dim < 0 || dim > ts[0]->ndim)
        return dpo_fail(e, DPO_ERR_ARG, 2, "dimension %d out of range 1..%d", dim + 1,
                        ts[0]->ndim + 1);
    for (int k = 0; k < n; k++) {
        if (!dpo_tensor_same_shape(ts[k], ts[0])) {
            char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
            dpo_fail(e, DPO_ERR_SHAPE, 1, "shapes %s and %s (tensor %d) differ",
                     dpo_tensor_shape_str(ts[0], a, sizeof a),
                     dpo_tensor_shape_str(ts[k], b, sizeof b), k + 1);
            goto done;
        }
    }
    for (int k = 0; k < n; k++) {
        int nd = 0;
        for (int i = 0; i <= ts[k]->ndim; i++) {
            if (i == dim) shape[nd++] = 1;
            if (i < ts[k]->ndim) shape[nd++] = ts[k]->shape[i];
        }
        views[k] = dpo_tensor_reshape(ts[k], nd, shape, e);
        if (!views[k]) goto done;
        made++;
    }
    out = dpo_cat(views, n, dim, e);
done:
    for (int k = 0; k < made; k++) dpo_tensor_release(views[k]);
    return out;
}

dpo_tensor *dpo_gather(const dpo_tensor *t, int dim, const dpo_tensor *index, int base,
                       dpo_error *e) {
    dpo_tensor *ci, *out;
    int64_t n;
    char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
    if (check_dim(t, dim, 1, e)) return NULL;
    if (index->dtype != DPO_I32)
        return dpo_fail(e, DPO_ERR_TYPE, 2, "index must be int32 (got %s)",
                        dpo_dtype_name(index->dtype));
    if (index->ndim != t->ndim)
        return dpo_fail(e, DPO_ERR_SHAPE, 2,
                        "index of size %s and input of size %s differ in "
                        "number of dimensions",
                        dpo_tensor_shape_str(index, a, sizeof a),
                        dpo_tensor_shape_str(t, b, sizeof b));
    for (int i = 0; i < t->ndim; i++)
        if (i != dim && index->shape[i] > t->shape[i])
            return dpo_fail(e, DPO_ERR_SHAPE, 2,
                            "index of size %s exceeds input of size %s in dimension %d",
                            dpo_tensor_shape_str(index, a, sizeof a),
                            dpo_tensor_shape_str(t, b, sizeof b), i + 1);
    ci = dpo_tensor_contiguous((dpo_tensor *)index, e);
    if (!ci) return NULL;
    out = dpo_tensor_new(t->dtype, index->ndim, index->shape, e);
    if (!out) {
        dpo_tensor_release(ci);
        return NULL;
    }
    n = dpo_tensor_numel(index);
    for (int64_t k = 0; k < n; k++) {
        int64_t rem = k, pos = t->offset;
        int64_t j = (int64_t)dpo_i32(ci)[k] - base;
        if (j < 0 || j >= t->shape[dim]) {
            dpo_tensor_release(out);
            dpo_tensor_release(ci);
            return dpo_fail(e, DPO_ERR_RANGE, 2, "index %lld out of range %d..%lld",
                            (long long)(j + base), base, (long long)t->shape[dim] - 1 + base);
        }
        for (int d = index->ndim - 1; d >= 0; d--) {
            int64_t coord = rem % index->shape[d];
            rem /= index->shape[d];
            pos += (d == dim ? j : coord) * t->stride[d];
        }
        ((uint32_t *)out->storage->data)[k] = ((const uint32_t *)t->storage->data)[pos];
    }
    dpo_tensor_release(ci);
    return out;
}

dpo_tensor *dpo_index_select(const dpo_tensor *t, int dim, const dpo_tensor *index, int base,
                             dpo_error *e) {
    int64_t shape[DPO_MAXDIM], outer, n, inner, m;
    dpo_tensor *c, *ci, *out;
    if (check_dim(t, dim, 1, e)) return NULL;
    if (index->dtype != DPO_I32)
        return dpo_fail(e, DPO_ERR_TYPE, 2, "index must be int32 (got %s)",
                        dpo_dtype_name(index->dtype));
    if (index->ndim != 1) {
        char a[DPO_SHAPELEN];
        return dpo_fail(e, DPO_ERR_SHAPE, 2, "index must be 1-D (got size %s)",
                        dpo_tensor_shape_str(index, a, sizeof a));
    }
    m = index->shape[0];
    ci = dpo_tensor_contiguous((dpo_tensor *)index, e);
    if (!ci) return NULL;
    for (int64_t k = 0; k < m; k++) {
        int64_t j = (int64_t)dpo_i32(ci)[k] - base;
        if (j < 0 || j >= t->shape[dim]) {
            dpo_tensor_release(ci);
            return dpo_fail(e, DPO_ERR_RANGE, 2, "index %lld out of range %d..%lld",
                            (long long)(j + base), base, (long long)t->shape[dim] - 1 + base);
        }
    }
    c = dpo_tensor_contiguous((dpo_tensor *)t, e);
    if (!c) {
        dpo_tensor_release(ci);
        return NULL;
    }
    memcpy(shape, t->shape, sizeof shape);
    shape[dim] = m;
    out = dpo_tensor_new(t->dtype, t->ndim, shape, e);
    if (out) {
        split3(c, dim, &outer, &n, &inner);
        for (int64_t o = 0; o < outer; o++)
            for (int64_t k = 0; k < m; k++)
                memcpy(dpo_f32(out) + (o * m + k) * inner,
                       dpo_f32(c) + (o * n + dpo_i32(ci)[k] - base) * inner, (size_t)inner * 4);
    }
    dpo_tensor_release(c);
    dpo_tensor_release(ci);
    return out;
}
