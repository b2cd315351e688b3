/*
** blas.c: matrix products through cblas_sgemm, plus the naive reference.
**
** A 2-D operand goes to BLAS as it lies when one of its strides is 1 (a
** row-major block, or a transposed view passed with CblasTrans); anything else
** is packed first. Batched products loop sgemm over broadcast batch dims.
** int32 operands are converted to float32; the result is float32.
*/
#include "tensor/tensor.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>

/* How a 2-D slice with shape (r, c) and strides (s0, s1) is handed to BLAS. */
typedef struct {
    int ok;
    CBLAS_TRANSPOSE trans;
    int64_t ld;
} blas_layout;

static blas_layout layout_of(int64_t r, int64_t c, int64_t s0, int64_t s1) {
    blas_layout l = {0, CblasNoTrans, 0};
    if ((s1 == 1 || c == 1) && (s0 >= (c > 1 ? c : 1) || r == 1)) {
        l.ok = 1, l.trans = CblasNoTrans, l.ld = r == 1 ? (c > 1 ? c : 1) : s0;
    } else if ((s0 == 1 || r == 1) && (s1 >= (r > 1 ? r : 1) || c == 1)) {
        l.ok = 1, l.trans = CblasTrans, l.ld = c == 1 ? (r > 1 ? r : 1) : s1;
    }
    return l;
}

void dpo_mm_ref(float *c, const float *a, const float *b, int64_t m, int64_t n, int64_t k) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++) s += (double)a[i * k + p] * b[p * n + j];
            c[i * n + j] = (float)s;
        }
}

/* Float32 version of t whose last two dims BLAS can read as they are. */
static dpo_tensor *blas_ready(const dpo_tensor *t, dpo_error *e) {
    dpo_tensor *f = dpo_tensor_cast((dpo_tensor *)t, DPO_F32, e), *c;
    int nd;
    if (!f) return NULL;
    nd = f->ndim;
    if (layout_of(f->shape[nd - 2], f->shape[nd - 1], f->stride[nd - 2], f->stride[nd - 1]).ok)
        return f;
    c = dpo_tensor_contiguous(f, e);
    dpo_tensor_release(f);
    return c;
}

static dpo_tensor *shape_error(const dpo_tensor *a, const dpo_tensor *b, const char *why,
                               dpo_error *e) {
    char sa[DPO_SHAPELEN], sb[DPO_SHAPELEN];
    return dpo_fail(e, DPO_ERR_SHAPE, 2, "shapes %s and %s cannot be multiplied (%s)",
                    dpo_tensor_shape_str(a, sa, sizeof sa), dpo_tensor_shape_str(b, sb, sizeof sb),
                    why);
}

/*
** The general product: a [..., m, k] x b [..., k, n] with batch dims
** broadcast. Both operands have at least 2 dims here.
*/
static dpo_tensor *batched(const dpo_tensor *a0, const dpo_tensor *b0, const dpo_tensor *ua,
                           const dpo_tensor *ub, dpo_error *e) {
    int na = a0->ndim, nb = b0->ndim;
    int64_t m = a0->shape[na - 2], k = a0->shape[na - 1], n = b0->shape[nb - 1];
    int bd = (na > nb ? na : nb) - 2; /* batch dims of the result */
    int64_t shape[DPO_MAXDIM], nbatch = 1;
    dpo_tensor ha, hb, *a, *b, *out;
    char why[64];
    if (b0->shape[nb - 2] != k) {
        snprintf(why, sizeof why, "%lld != %lld", (long long)k, (long long)b0->shape[nb - 2]);
        return shape_error(ua, ub, why, e);
    }
    for (int i = 0; i < bd; i++) {
        int ia = na - 2 - bd + i, ib = nb - 2 - bd + i;
        int64_t sa = ia >= 0 ? a0->shape[ia] : 1, sb = ib >= 0 ? b0->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1) return shape_error(ua, ub, "batch sizes differ", e);
        shape[i] = sa == 1 ? sb : sa;
        nbatch *= shape[i];
    }
    shape[bd] = m, shape[bd + 1] = n;
    a = blas_ready(a0, e);
    if (!a) return NULL;
    b = blas_ready(b0, e);
    if (!b) {
        dpo_tensor_release(a);
        return NULL;
    }
    out = dpo_tensor_new(DPO_F32, bd + 2, shape, e);
    if (out && dpo_tensor_numel(out) > 0) {
        blas_layout la = layout_of(m, k, a->stride[na - 2], a->stride[na - 1]);
        blas_layout lb = layout_of(k, n, b->stride[nb - 2], b->stride[nb - 1]);
        int64_t full[DPO_MAXDIM];
        memcpy(full, shape, sizeof full);
        /* batch views: expand each operand's batch dims to the result's */
        full[bd] = m, full[bd + 1] = k;
        dpo_tensor_expand_header(a, bd + 2, full, &ha);
        full[bd] = k, full[bd + 1] = n;
        dpo_tensor_expand_header(b, bd + 2, full, &hb);
        for (int64_t i = 0; i < nbatch; i++) {
            int64_t rem = i, pa = a->offset, pb = b->offset;
            for (int d = bd - 1; d >= 0; d--) {
                int64_t coord = rem % shape[d];
                rem /= shape[d];
                pa += coord * ha.stride[d];
                pb += coord * hb.stride[d];
            }
            if (k == 0) {
                memset(dpo_f32(out) + i * m * n, 0, sizeof(float) * (size_t)(m * n));
                continue;
            }
            cblas_sgemm(CblasRowMajor, la.trans, lb.trans, (int)m, (int)n, (int)k, 1.0f,
                        (const float *)a->storage->data + pa, (int)la.ld,
                        (const float *)b->storage->data + pb, (int)lb.ld, 0.0f,
                        dpo_f32(out) + i * m * n, (int)(n > 1 ? n : 1));
        }
    }
    dpo_tensor_release(a);
    dpo_tensor_release(b);
    return out;
}

static int too_big(const dpo_tensor *t) {
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 2147483647 / 2) return 1;
    return 0;
}

dpo_tensor *dpo_mm(const dpo_tensor *a, const dpo_tensor *b, dpo_error *e) {
    char sa[DPO_SHAPELEN];
    if (a->ndim != 2)
        return dpo_fail(e, DPO_ERR_SHAPE, 1, "expected a 2-D tensor (got size %s)",
                        dpo_tensor_shape_str(a, sa, sizeof sa));
    if (b->ndim != 2)
        return dpo_fail(e, DPO_ERR_SHAPE, 2, "expected a 2-D tensor (got size %s)",
                        dpo_tensor_shape_str(b, sa, sizeof sa));
    if (too_big(a) || too_big(b)) return dpo_fail(e, DPO_ERR_ARG, 1, "matrix too large for BLAS");
    return batched(a, b, a, b, e);
}

dpo_tensor *dpo_matmul(const dpo_tensor *a, const dpo_tensor *b, dpo_error *e) {
    dpo_tensor va, vb, *out, *r;
    int64_t shape[DPO_MAXDIM];
    int nd;
    if (a->ndim == 0 || b->ndim == 0)
        return dpo_fail(e, DPO_ERR_SHAPE, a->ndim == 0 ? 1 : 2,
                        "matmul needs tensors of at least 1 dimension, not a scalar");
    if (too_big(a) || too_big(b)) return dpo_fail(e, DPO_ERR_ARG, 1, "matrix too large for BLAS");
    va = *a, vb = *b;
    if (a->ndim == 1) { /* [k] -> [1, k] */
        va.ndim = 2, va.shape[0] = 1, va.shape[1] = a->shape[0];
        va.stride[0] = a->shape[0], va.stride[1] = a->stride[0];
    }
    if (b->ndim == 1) { /* [k] -> [k, 1] */
        vb.ndim = 2, vb.shape[0] = b->shape[0], vb.shape[1] = 1;
        vb.stride[0] = b->stride[0], vb.stride[1] = 1;
    }
    out = batched(&va, &vb, a, b, e);
    if (!out || (a->ndim > 1 && b->ndim > 1)) return out;
    /* drop the dims added for vectors */
    nd = 0;
    for (int i = 0; i < out->ndim; i++) {
        if (a->ndim == 1 && i == out->ndim - 2) continue;
        if (b->ndim == 1 && i == out->ndim - 1) continue;
        shape[nd++] = out->shape[i];
    }
    r = dpo_tensor_view(out, nd, shape, e);
    dpo_tensor_release(out);
    return r;
}
