/*
** test_tensor.c: the engine's tensor layer without Lua: creation, views,
** copies, broadcasting arithmetic, unary maths, reductions, softmax, indexing
** and printing. Expected values come from plain loops and libm in double.
*/
#include "check.h"
#include "base/rng.h"
#include "tensor/tensor.h"

#include <omp.h>
#include <stdlib.h>

static dpo_error e;

static dpo_tensor *seq(int ndim, const int64_t *shape) {
    dpo_tensor *t = dpo_tensor_new(DPO_F32, ndim, shape, &e);
    int64_t n = dpo_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) dpo_f32(t)[i] = (float)i;
    return t;
}

static dpo_tensor *randn(int ndim, const int64_t *shape, uint64_t seed) {
    dpo_rng r;
    dpo_tensor *t = dpo_tensor_new(DPO_F32, ndim, shape, &e);
    dpo_rng_seed(&r, seed);
    dpo_rng_fill_normal(&r, t, 0, 1);
    return t;
}

static void test_views(void) {
    int64_t s23[2] = {2, 3}, s6[1] = {6}, s32[2] = {3, 2}, sm1[2] = {-1, 2};
    dpo_tensor *t = seq(2, s23), *v, *tr, *r, *n, *row;
    CHECK(dpo_tensor_numel(t) == 6);
    CHECK(t->stride[0] == 3 && t->stride[1] == 1);
    CHECK(dpo_tensor_is_contiguous(t));

    v = dpo_tensor_reshape(t, 1, s6, &e);
    CHECK(v && v->storage == t->storage);
    dpo_f32(v)[4] = 40;
    CHECK(dpo_tensor_get(t, 4) == 40);
    dpo_tensor_release(v);

    v = dpo_tensor_view(t, 2, sm1, &e);
    CHECK(v && v->shape[0] == 3 && v->shape[1] == 2);
    dpo_tensor_release(v);

    tr = dpo_tensor_transpose(t, 0, 1, &e);
    CHECK(tr && !dpo_tensor_is_contiguous(tr) && tr->shape[0] == 3);
    CHECK(dpo_tensor_get(tr, 1) == 3); /* tr[0][1] = t[1][0] */
    CHECK(dpo_tensor_view(tr, 1, s6, &e) == NULL && e.status == DPO_ERR_SHAPE);
    CHECK_STR(e.msg, "use reshape");
    r = dpo_tensor_reshape(tr, 1, s6, &e);
    CHECK(r && r->storage != t->storage);
    {
        const float want[6] = {0, 3, 1, 40, 2, 5};
        int ok = 1;
        for (int i = 0; i < 6; i++) ok &= dpo_f32(r)[i] == want[i];
        CHECK(ok);
    }
    dpo_tensor_release(r);
    r = dpo_tensor_reshape(t, 2, s32, &e);
    CHECK(r != NULL);
    dpo_tensor_release(r);

    n = dpo_tensor_narrow(t, 1, 1, 2, &e); /* columns 1..2 */
    CHECK(n && n->shape[1] == 2 && n->offset == 1);
    CHECK(dpo_tensor_get(n, 2) == 40);
    dpo_tensor_fill(n, -1);
    CHECK(dpo_tensor_get(t, 0) == 0 && dpo_tensor_get(t, 1) == -1 && dpo_tensor_get(t, 5) == -1);
    CHECK(dpo_tensor_narrow(t, 1, 2, 5, &e) == NULL && e.status == DPO_ERR_RANGE);

    row = dpo_tensor_select(t, 0, 1, &e);
    CHECK(row && row->ndim == 1 && dpo_tensor_get(row, 0) == 3);
    CHECK(dpo_tensor_select(t, 0, 2, &e) == NULL);
    CHECK_STR(e.msg, "index 3 out of range 1..2");

    /* copy broadcasts the source into a strided destination */
    {
        int64_t s3[1] = {3};
        dpo_tensor *src = seq(1, s3);
        CHECK(dpo_tensor_copy(tr, src, &e) != DPO_OK); /* 3 into 3x2: no */
        dpo_tensor_release(src);
        src = seq(1, (int64_t[]){2});
        CHECK(dpo_tensor_copy(tr, src, &e) == DPO_OK);
        /* tr[i][j] = j, so t[j][i] = j */
        CHECK(dpo_tensor_get(t, 0) == 0 && dpo_tensor_get(t, 2) == 0 && dpo_tensor_get(t, 3) == 1);
        dpo_tensor_release(src);
    }
    dpo_tensor_release(row);
    dpo_tensor_release(n);
    dpo_tensor_release(tr);
    dpo_tensor_release(t);
}

static void test_binary(void) {
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s21[2] = {2, 1}, s13[2] = {1, 3};
    dpo_tensor *a = randn(2, s23, 1), *b = randn(1, s3, 2), *c, *col, *rowv;
    c = dpo_binary(DPO_OP_ADD, a, b, &e);
    {
        int ok = 1;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                ok &= dpo_f32(c)[i * 3 + j] == dpo_f32(a)[i * 3 + j] + dpo_f32(b)[j];
        CHECK(ok);
    }
    dpo_tensor_release(c);

    col = randn(2, s21, 3), rowv = randn(2, s13, 4);
    c = dpo_binary(DPO_OP_MUL, col, rowv, &e);
    CHECK(c && c->shape[0] == 2 && c->shape[1] == 3);
    {
        int ok = 1;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                ok &= dpo_f32(c)[i * 3 + j] == dpo_f32(col)[i] * dpo_f32(rowv)[j];
        CHECK(ok);
    }
    dpo_tensor_release(c);

    /* strided operand: a transposed view */
    {
        dpo_tensor *at = dpo_tensor_transpose(a, 0, 1, &e), *bt = randn(2, (int64_t[]){3, 2}, 9);
        int ok = 1;
        c = dpo_binary(DPO_OP_SUB, at, bt, &e);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++)
                ok &= dpo_f32(c)[i * 2 + j] == dpo_f32(a)[j * 3 + i] - dpo_f32(bt)[i * 2 + j];
        CHECK(ok);
        dpo_tensor_release(c);
        dpo_tensor_release(at);
        dpo_tensor_release(bt);
    }

    /* shapes that do not broadcast: the message names both */
    {
        dpo_tensor *d = randn(1, (int64_t[]){4}, 5);
        CHECK(dpo_binary(DPO_OP_ADD, a, d, &e) == NULL);
        CHECK(e.status == DPO_ERR_SHAPE && e.arg == 2);
        CHECK_STR(e.msg, "shapes 2x3 and 4 do not broadcast");
        dpo_tensor_release(d);
    }

    /* a large broadcast runs threaded and equals the plain loop */
    {
        int64_t big[2] = {300, 1000}, brow[1] = {1000};
        dpo_tensor *x = randn(2, big, 11), *y = randn(1, brow, 12), *z;
        int ok = 1;
        z = dpo_binary(DPO_OP_DIV, x, y, &e);
        for (int64_t i = 0; i < 300 * 1000; i++)
            ok &= dpo_f32(z)[i] == dpo_f32(x)[i] / dpo_f32(y)[i % 1000];
        CHECK(ok);
        dpo_tensor_release(z);
        z = dpo_binary(DPO_OP_GT, x, y, &e);
        CHECK(z->dtype == DPO_I32);
        ok = 1;
        for (int64_t i = 0; i < 300 * 1000; i++)
            ok &= dpo_i32(z)[i] == (dpo_f32(x)[i] > dpo_f32(y)[i % 1000]);
        CHECK(ok);
        dpo_tensor_release(z);
        dpo_tensor_release(x);
        dpo_tensor_release(y);
    }

    /* int32 arithmetic stays int32 and wraps; division gives float32 */
    {
        dpo_tensor *i1 = dpo_tensor_scalar(DPO_I32, 2147483647, &e);
        dpo_tensor *i2 = dpo_tensor_scalar(DPO_I32, 1, &e), *s, *q;
        s = dpo_binary(DPO_OP_ADD, i1, i2, &e);
        CHECK(s->dtype == DPO_I32 && dpo_i32(s)[0] == INT32_MIN);
        dpo_tensor *two = dpo_tensor_scalar(DPO_I32, 2, &e);
        q = dpo_binary(DPO_OP_DIV, i2, two, &e);
        CHECK(q->dtype == DPO_F32 && dpo_f32(q)[0] == 0.5f);
        dpo_tensor_release(two);
        dpo_tensor_release(s);
        dpo_tensor_release(q);
        dpo_tensor_release(i1);
        dpo_tensor_release(i2);
    }
    dpo_tensor_release(col);
    dpo_tensor_release(rowv);
    dpo_tensor_release(a);
    dpo_tensor_release(b);
}

static void test_unary(void) {
    const float xs[9] = {-100, -20, -3, -0.5f, 0, 0.5f, 3, 20, 100};
    int64_t n = 9;
    dpo_tensor *x = dpo_tensor_new(DPO_F32, 1, &n, &e);
    for (int i = 0; i < 9; i++) dpo_f32(x)[i] = xs[i];
    for (dpo_op op = DPO_OP_NEG; op <= DPO_OP_RSQRT; op++) {
        dpo_tensor *y = dpo_unary(op, x, &e);
        for (int i = 0; i < 9; i++) {
            double v = xs[i], want;
            switch (op) {
            case DPO_OP_NEG:
                want = -v;
                break;
            case DPO_OP_EXP:
                want = exp(v);
                break;
            case DPO_OP_LOG:
                want = log(v);
                break;
            case DPO_OP_SQRT:
                want = sqrt(v);
                break;
            case DPO_OP_ABS:
                want = fabs(v);
                break;
            case DPO_OP_SIGMOID:
                want = 1 / (1 + exp(-v));
                break;
            case DPO_OP_TANH:
                want = tanh(v);
                break;
            case DPO_OP_RELU:
                want = v > 0 ? v : 0;
                break;
            case DPO_OP_GELU:
                want = 0.5 * v *
                       (1 + tanh(sqrt(2 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)));
                break;
            case DPO_OP_LOGSIGMOID:
                want = -log1p(exp(-v));
                break;
            case DPO_OP_SOFTPLUS:
                want = log1p(exp(v));
                break;
            case DPO_OP_SILU:
                want = v / (1 + exp(-v));
                break;
            case DPO_OP_RSQRT:
                want = 1 / sqrt(v);
                break;
            default:
                want = 0;
            }
            if (isinf((float)want))
                CHECK(dpo_f32(y)[i] == (float)want);
            else if (isnan(want))
                CHECK(isnan(dpo_f32(y)[i]));
            else
                CHECK_NEAR(dpo_f32(y)[i], want, 1e-6 + 1e-6 * fabs(want));
        }
        dpo_tensor_release(y);
    }
    {
        dpo_tensor *c = dpo_clamp(x, 1, -1, 1, 2, &e);
        CHECK(dpo_f32(c)[0] == -1 && dpo_f32(c)[4] == 0 && dpo_f32(c)[8] == 2);
        dpo_tensor_release(c);
        CHECK(dpo_clamp(x, 1, 3, 1, 2, &e) == NULL);
    }
    dpo_tensor_release(x);
}

static void test_reduce(void) {
    int64_t s[3] = {4, 5, 6};
    dpo_tensor *t = randn(3, s, 21), *r, *idx;
    double want;
    /* sum along dim 2 (0-based 1) with keepdim */
    r = dpo_reduce(DPO_OP_SUM, t, 1, 1, 0, NULL, &e);
    CHECK(r->ndim == 3 && r->shape[1] == 1);
    {
        int ok = 1;
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 6; k++) {
                double acc = 0;
                for (int j = 0; j < 5; j++) acc += dpo_f32(t)[i * 30 + j * 6 + k];
                ok &= fabs(dpo_f32(r)[i * 6 + k] - acc) < 1e-5;
            }
        CHECK(ok);
    }
    dpo_tensor_release(r);
    /* max along the last dim with 1-based indices */
    r = dpo_reduce(DPO_OP_MAX, t, 2, 0, 1, &idx, &e);
    CHECK(r->ndim == 2 && idx && idx->dtype == DPO_I32);
    {
        int ok = 1;
        for (int i = 0; i < 20; i++) {
            int bj = 0;
            for (int j = 1; j < 6; j++)
                if (dpo_f32(t)[i * 6 + j] > dpo_f32(t)[i * 6 + bj]) bj = j;
            ok &= dpo_i32(idx)[i] == bj + 1 && dpo_f32(r)[i] == dpo_f32(t)[i * 6 + bj];
        }
        CHECK(ok);
    }
    dpo_tensor_release(r);
    dpo_tensor_release(idx);
    /* mean of everything */
    want = 0;
    for (int i = 0; i < 120; i++) want += dpo_f32(t)[i];
    r = dpo_reduce(DPO_OP_MEAN, t, -1, 0, 0, NULL, &e);
    CHECK(r->ndim == 0);
    CHECK_NEAR(dpo_f32(r)[0], want / 120, 1e-6);
    dpo_tensor_release(r);
    dpo_tensor_release(t);

    /* a long sum: the same bits with 1 and 2 threads, close to the double sum */
    {
        int64_t n = 1000003;
        dpo_tensor *x = randn(1, &n, 33), *s1, *s2;
        double acc = 0;
        for (int64_t i = 0; i < n; i++) acc += dpo_f32(x)[i];
        omp_set_num_threads(1);
        s1 = dpo_reduce(DPO_OP_SUM, x, -1, 0, 0, NULL, &e);
        omp_set_num_threads(2);
        s2 = dpo_reduce(DPO_OP_SUM, x, -1, 0, 0, NULL, &e);
        CHECK(dpo_f32(s1)[0] == dpo_f32(s2)[0]);
        CHECK_NEAR(dpo_f32(s1)[0], acc, 1e-3);
        dpo_tensor_release(s1);
        dpo_tensor_release(s2);
        dpo_tensor_release(x);
    }
}

static void test_softmax(void) {
    int64_t s[2] = {3, 4};
    dpo_tensor *t = randn(2, s, 41), *sm, *lsm, *lse;
    dpo_f32(t)[0] = 1000, dpo_f32(t)[1] = 1001; /* must stay finite */
    sm = dpo_softmax_like(DPO_OP_SOFTMAX, t, 1, 0, &e);
    lsm = dpo_softmax_like(DPO_OP_LOG_SOFTMAX, t, 1, 0, &e);
    lse = dpo_softmax_like(DPO_OP_LOGSUMEXP, t, 1, 0, &e);
    CHECK(lse->ndim == 1 && lse->shape[0] == 3);
    for (int i = 0; i < 3; i++) {
        double mx = -INFINITY, z = 0, total = 0;
        for (int j = 0; j < 4; j++) mx = fmax(mx, dpo_f32(t)[i * 4 + j]);
        for (int j = 0; j < 4; j++) z += exp(dpo_f32(t)[i * 4 + j] - mx);
        CHECK_NEAR(dpo_f32(lse)[i], mx + log(z), 1e-4);
        for (int j = 0; j < 4; j++) {
            double p = exp(dpo_f32(t)[i * 4 + j] - mx) / z;
            CHECK_NEAR(dpo_f32(sm)[i * 4 + j], p, 1e-6);
            CHECK_NEAR(dpo_f32(lsm)[i * 4 + j], dpo_f32(t)[i * 4 + j] - mx - log(z), 1e-4);
            total += dpo_f32(sm)[i * 4 + j];
        }
        CHECK_NEAR(total, 1.0, 1e-6);
    }
    dpo_tensor_release(sm);
    dpo_tensor_release(lsm);
    dpo_tensor_release(lse);
    /* along dim 0 */
    sm = dpo_softmax_like(DPO_OP_SOFTMAX, t, 0, 0, &e);
    for (int j = 1; j < 4; j++) {
        double total = 0;
        for (int i = 0; i < 3; i++) total += dpo_f32(sm)[i * 4 + j];
        CHECK_NEAR(total, 1.0, 1e-6);
    }
    dpo_tensor_release(sm);
    dpo_tensor_release(t);
}

static void test_indexing(void) {
    int64_t s[2] = {3, 4}, is[2] = {3, 1}, n2 = 2;
    dpo_tensor *t = seq(2, s), *idx = dpo_tensor_new(DPO_I32, 2, is, &e), *g, *sel, *parts[2], *c,
               *st;
    dpo_i32(idx)[0] = 4, dpo_i32(idx)[1] = 1, dpo_i32(idx)[2] = 2; /* 1-based */
    g = dpo_gather(t, 1, idx, 1, &e);
    CHECK(g && dpo_f32(g)[0] == 3 && dpo_f32(g)[1] == 4 && dpo_f32(g)[2] == 9);
    dpo_i32(idx)[2] = 5;
    CHECK(dpo_gather(t, 1, idx, 1, &e) == NULL);
    CHECK_STR(e.msg, "index 5 out of range 1..4");
    dpo_tensor_release(g);
    dpo_tensor_release(idx);

    idx = dpo_tensor_new(DPO_I32, 1, &n2, &e);
    dpo_i32(idx)[0] = 2, dpo_i32(idx)[1] = 0; /* 0-based here */
    sel = dpo_index_select(t, 0, idx, 0, &e);
    CHECK(sel && sel->shape[0] == 2 && dpo_f32(sel)[0] == 8 && dpo_f32(sel)[4] == 0);
    dpo_tensor_release(sel);
    dpo_tensor_release(idx);

    parts[0] = t, parts[1] = seq(2, s);
    c = dpo_cat(parts, 2, 1, &e);
    CHECK(c && c->shape[0] == 3 && c->shape[1] == 8 && dpo_f32(c)[4] == 0 && dpo_f32(c)[8] == 4);
    st = dpo_stack(parts, 2, 0, &e);
    CHECK(st && st->ndim == 3 && st->shape[0] == 2 && dpo_f32(st)[12] == 0);
    dpo_tensor_release(c);
    dpo_tensor_release(st);
    dpo_tensor_release(parts[1]);

    {
        dpo_tensor *five = dpo_tensor_scalar(DPO_F32, 5, &e);
        dpo_tensor *m = dpo_binary(DPO_OP_GT, t, five, &e);
        dpo_tensor *zero = dpo_tensor_scalar(DPO_F32, 0, &e), *w;
        w = dpo_where(m, t, zero, &e);
        CHECK(w && dpo_f32(w)[5] == 0 && dpo_f32(w)[6] == 6);
        dpo_tensor_release(w);
        dpo_tensor_release(m);
        dpo_tensor_release(five);
        dpo_tensor_release(zero);
    }
    dpo_tensor_release(t);
}

static void test_print(void) {
    int64_t s[2] = {2, 3}, big = 5000;
    dpo_tensor *t = seq(2, s), *b = seq(1, &big);
    char *str = dpo_tensor_format(t, "dpo.Tensor");
    CHECK_STR(str, "[dpo.Tensor float32 of size 2x3]");
    CHECK_STR(str, "3 4 5\n");
    free(str);
    str = dpo_tensor_format(b, "dpo.Tensor");
    CHECK_STR(str, "...");
    CHECK(str && strlen(str) < 200);
    free(str);
    dpo_tensor_release(t);
    dpo_tensor_release(b);
}

int main(void) {
    test_views();
    test_binary();
    test_unary();
    test_reduce();
    test_softmax();
    test_indexing();
    test_print();
    return check_report("test_tensor");
}
