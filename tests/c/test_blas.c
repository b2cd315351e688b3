/*
** test_blas.c: matrix products through BLAS against the naive reference
** loop, for odd sizes, transposed and narrowed operands, batches, vectors.
*/
#include "check.h"
#include "base/rng.h"
#include "tensor/tensor.h"

#include <stdlib.h>

static dpo_error e;

static dpo_tensor *randn(int ndim, const int64_t *shape, uint64_t seed) {
    dpo_rng r;
    dpo_tensor *t = dpo_tensor_new(DPO_F32, ndim, shape, &e);
    dpo_rng_seed(&r, seed);
    dpo_rng_fill_normal(&r, t, 0, 1);
    return t;
}

/* max |c - ref| where ref = a b computed by dpo_mm_ref on packed copies */
static double mm_err(const dpo_tensor *a, const dpo_tensor *b, const dpo_tensor *c) {
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    float *pa = malloc(sizeof(float) * (size_t)(m * k + 1));
    float *pb = malloc(sizeof(float) * (size_t)(k * n + 1));
    float *ref = malloc(sizeof(float) * (size_t)(m * n + 1));
    double worst = 0;
    dpo_tensor_pack(a, pa);
    dpo_tensor_pack(b, pb);
    dpo_mm_ref(ref, pa, pb, m, n, k);
    for (int64_t i = 0; i < m * n; i++) {
        double d = fabs((double)dpo_f32(c)[i] - ref[i]);
        if (d > worst) worst = d;
    }
    free(pa), free(pb), free(ref);
    return worst;
}

static void test_sizes(void) {
    const int64_t sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {64, 33, 17}, {128, 128, 128}, {3, 200, 1}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t m = sizes[s][0], n = sizes[s][1], k = sizes[s][2];
        dpo_tensor *a = randn(2, (int64_t[]){m, k}, 1 + s),
                   *b = randn(2, (int64_t[]){k, n}, 50 + s);
        dpo_tensor *c = dpo_mm(a, b, &e);
        CHECK(c && c->shape[0] == m && c->shape[1] == n);
        CHECK_NEAR(mm_err(a, b, c), 0, 1e-4 * (double)k);
        dpo_tensor_release(c);
        /* transposed views as operands go to BLAS with CblasTrans */
        {
            dpo_tensor *at = randn(2, (int64_t[]){k, m}, 100 + s),
                       *bt = randn(2, (int64_t[]){n, k}, 200 + s);
            dpo_tensor *va = dpo_tensor_transpose(at, 0, 1, &e),
                       *vb = dpo_tensor_transpose(bt, 0, 1, &e);
            c = dpo_mm(va, vb, &e);
            CHECK(c != NULL);
            CHECK_NEAR(mm_err(va, vb, c), 0, 1e-4 * (double)k);
            dpo_tensor_release(c);
            dpo_tensor_release(va), dpo_tensor_release(vb);
            dpo_tensor_release(at), dpo_tensor_release(bt);
        }
        dpo_tensor_release(a);
        dpo_tensor_release(b);
    }
}

static void test_strided(void) {
    /* a narrowed block of a bigger matrix (row stride 10) and a column-narrowed one */
    dpo_tensor *big = randn(2, (int64_t[]){8, 10}, 7), *rhs = randn(2, (int64_t[]){6, 5}, 8);
    dpo_tensor *blk = dpo_tensor_narrow(big, 1, 2, 6, &e), *c = dpo_mm(blk, rhs, &e);
    CHECK(c != NULL);
    CHECK_NEAR(mm_err(blk, rhs, c), 0, 1e-4);
    dpo_tensor_release(c);
    /* every-other column: no unit stride, so packed first */
    {
        dpo_tensor *v = dpo_tensor_reshape(big, 3, (int64_t[]){8, 5, 2}, &e);
        dpo_tensor *sel = dpo_tensor_select(v, 2, 0, &e); /* 8x5, strides (10, 2) */
        dpo_tensor *r = randn(2, (int64_t[]){5, 4}, 9);
        CHECK(sel->stride[1] == 2);
        c = dpo_mm(sel, r, &e);
        CHECK(c != NULL);
        CHECK_NEAR(mm_err(sel, r, c), 0, 1e-4);
        dpo_tensor_release(c), dpo_tensor_release(r), dpo_tensor_release(sel),
            dpo_tensor_release(v);
    }
    dpo_tensor_release(blk), dpo_tensor_release(big), dpo_tensor_release(rhs);
}

static void test_matmul_forms(void) {
    dpo_tensor *a3 = randn(3, (int64_t[]){4, 3, 5}, 11), *b3 = randn(3, (int64_t[]){4, 5, 2}, 12);
    dpo_tensor *b2 = randn(2, (int64_t[]){5, 2}, 13), *v5 = randn(1, (int64_t[]){5}, 14), *c;
    /* batched 3-D */
    c = dpo_matmul(a3, b3, &e);
    CHECK(c && c->ndim == 3 && c->shape[0] == 4 && c->shape[1] == 3 && c->shape[2] == 2);
    for (int i = 0; i < 4; i++) {
        dpo_tensor *ai = dpo_tensor_select(a3, 0, i, &e), *bi = dpo_tensor_select(b3, 0, i, &e);
        dpo_tensor *ci = dpo_tensor_select(c, 0, i, &e);
        CHECK_NEAR(mm_err(ai, bi, ci), 0, 1e-4);
        dpo_tensor_release(ai), dpo_tensor_release(bi), dpo_tensor_release(ci);
    }
    dpo_tensor_release(c);
    /* 3-D x 2-D broadcasts the matrix over the batch */
    c = dpo_matmul(a3, b2, &e);
    CHECK(c && c->ndim == 3 && c->shape[0] == 4);
    {
        dpo_tensor *a1 = dpo_tensor_select(a3, 0, 1, &e), *c1 = dpo_tensor_select(c, 0, 1, &e);
        CHECK_NEAR(mm_err(a1, b2, c1), 0, 1e-4);
        dpo_tensor_release(a1), dpo_tensor_release(c1);
    }
    dpo_tensor_release(c);
    /* matrix x vector and vector . vector */
    {
        dpo_tensor *m = randn(2, (int64_t[]){3, 5}, 15);
        double d = 0;
        c = dpo_matmul(m, v5, &e);
        CHECK(c && c->ndim == 1 && c->shape[0] == 3);
        for (int j = 0; j < 5; j++) d += (double)dpo_f32(m)[5 + j] * dpo_f32(v5)[j];
        CHECK_NEAR(dpo_f32(c)[1], d, 1e-5);
        dpo_tensor_release(c);
        c = dpo_matmul(v5, v5, &e);
        CHECK(c && c->ndim == 0);
        d = 0;
        for (int j = 0; j < 5; j++) d += (double)dpo_f32(v5)[j] * dpo_f32(v5)[j];
        CHECK_NEAR(dpo_f32(c)[0], d, 1e-4);
        dpo_tensor_release(c);
        dpo_tensor_release(m);
    }
    /* errors name both shapes */
    CHECK(dpo_matmul(a3, a3, &e) == NULL);
    CHECK_STR(e.msg, "shapes 4x3x5 and 4x3x5 cannot be multiplied (5 != 3)");
    CHECK(dpo_mm(a3, b2, &e) == NULL && e.arg == 1);
    CHECK_STR(e.msg, "expected a 2-D tensor (got size 4x3x5)");
    dpo_tensor_release(a3), dpo_tensor_release(b3), dpo_tensor_release(b2), dpo_tensor_release(v5);
}

int main(void) {
    test_sizes();
    test_strided();
    test_matmul_forms();
    return check_report("test_blas");
}
