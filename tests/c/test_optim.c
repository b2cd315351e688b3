/*
** test_optim.c: each update step against a naive double-precision loop
** written from the published torch.optim rules, over several option
** combinations and several steps, on a small tensor and on one large enough
** to be split across threads; the gradient norm against a direct sum; and
** the errors of the tensor-level steps.
*/
#include "check.h"
#include "model/optim.h"

#include <omp.h>
#include <stdlib.h>

#define NSTEPS 5

/* A deterministic value in [-1, 1) for position i of sequence s. */
static double val(int64_t i, int s) {
    uint64_t x = (uint64_t)i * 2654435761u + (uint64_t)s * 40503u + 12345u;
    x ^= x >> 13, x *= 0x5bd1e995u, x ^= x >> 15;
    return (double)(x % 20000) / 10000.0 - 1.0;
}

static dpo_tensor *vec(int64_t n, int s, double scale) {
    dpo_error e;
    dpo_tensor *t = dpo_tensor_new(DPO_F32, 1, &n, &e);
    for (int64_t i = 0; i < n; i++) dpo_f32(t)[i] = (float)(val(i, s) * scale);
    return t;
}

static dpo_tensor *zeros(int64_t n) {
    dpo_error e;
    return dpo_tensor_zeros(DPO_F32, 1, &n, &e);
}

static double *dcopy(const dpo_tensor *t) {
    int64_t n = dpo_tensor_numel(t);
    double *d = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) d[i] = dpo_f32(t)[i];
    return d;
}

static double *dzeros(int64_t n) {
    return calloc((size_t)(n ? n : 1), sizeof(double));
}

/* Largest |got - want| / (|want| + floor) over n elements; floor is the scale
   of the values, so results that cancel to near zero are judged fairly. */
static double maxrel(const float *got, const double *want, int64_t n, double floor) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = fabs((double)got[i] - want[i]) / (fabs(want[i]) + floor);
        if (!(r <= worst)) worst = r;
    }
    return worst;
}

/* ---- SGD -------------------------------------------------------------------- */

static void sgd_case(int64_t n, double lr, double mom, double damp, double wd, int nesterov,
                     int maximize) {
    dpo_sgd_opts o = {lr, mom, damp, wd, nesterov, maximize};
    dpo_tensor *p = vec(n, 1, 1.0), *buf = zeros(n);
    double *rp = dcopy(p), *rb = dzeros(n);
    dpo_error e;
    for (int s = 0; s < NSTEPS; s++) {
        dpo_tensor *g = vec(n, 10 + s, 0.5);
        CHECK(dpo_sgd_step(p, g, mom != 0 ? buf : NULL, s == 0, &o, &e) == DPO_OK);
        for (int64_t i = 0; i < n; i++) {
            double gi = dpo_f32(g)[i];
            if (maximize) gi = -gi;
            gi += wd * rp[i];
            if (mom != 0) {
                rb[i] = s == 0 ? gi : mom * rb[i] + (1 - damp) * gi;
                gi = nesterov ? gi + mom * rb[i] : rb[i];
            }
            rp[i] -= lr * gi;
        }
        dpo_tensor_release(g);
    }
    CHECK_NEAR(maxrel(dpo_f32(p), rp, n, 1.0), 0, 1e-6);
    if (mom != 0) CHECK_NEAR(maxrel(dpo_f32(buf), rb, n, 1.0), 0, 1e-6);
    dpo_tensor_release(p), dpo_tensor_release(buf);
    free(rp), free(rb);
}

/* ---- AdamW ------------------------------------------------------------------ */

static void adamw_case(int64_t n, double lr, double b1, double b2, double eps, double wd,
                       int amsgrad, int maximize) {
    dpo_adamw_opts o = {lr, b1, b2, eps, wd, amsgrad, maximize};
    dpo_tensor *p = vec(n, 2, 1.0), *m = zeros(n), *v = zeros(n), *vmax = zeros(n);
    double *rp = dcopy(p), *rm = dzeros(n), *rv = dzeros(n), *rx = dzeros(n);
    dpo_error e;
    for (int s = 1; s <= NSTEPS; s++) {
        /* a gradient that shrinks at later steps, so amsgrad's max matters */
        dpo_tensor *g = vec(n, 20 + s, s <= 2 ? 1.0 : 0.1);
        double bc1 = 1 - pow(b1, s), bc2 = 1 - pow(b2, s);
        CHECK(dpo_adamw_step(p, g, m, v, amsgrad ? vmax : NULL, s, &o, &e) == DPO_OK);
        for (int64_t i = 0; i < n; i++) {
            double gi = dpo_f32(g)[i], vv;
            if (maximize) gi = -gi;
            rp[i] *= 1 - lr * wd;
            rm[i] = b1 * rm[i] + (1 - b1) * gi;
            rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
            vv = rv[i];
            if (amsgrad) vv = rx[i] = rx[i] > rv[i] ? rx[i] : rv[i];
            rp[i] -= lr / bc1 * rm[i] / (sqrt(vv) / sqrt(bc2) + eps);
        }
        dpo_tensor_release(g);
    }
    CHECK_NEAR(maxrel(dpo_f32(p), rp, n, 1.0), 0, 1e-6);
    CHECK_NEAR(maxrel(dpo_f32(m), rm, n, 1.0), 0, 1e-6);
    CHECK_NEAR(maxrel(dpo_f32(v), rv, n, 1e-6), 0, 2e-6);
    if (amsgrad) CHECK_NEAR(maxrel(dpo_f32(vmax), rx, n, 1e-6), 0, 2e-6);
    dpo_tensor_release(p), dpo_tensor_release(m), dpo_tensor_release(v);
    dpo_tensor_release(vmax);
    free(rp), free(rm), free(rv), free(rx);
}

/* ---- RMSprop ------------------------------------------------------------------ */

static void rmsprop_case(int64_t n, double lr, double alpha, double eps, double wd, double mom,
                         int centered, int maximize) {
    dpo_rmsprop_opts o = {lr, alpha, eps, wd, mom, centered, maximize};
    dpo_tensor *p = vec(n, 3, 1.0), *sq = zeros(n), *ga = zeros(n), *buf = zeros(n);
    double *rp = dcopy(p), *rs = dzeros(n), *rg = dzeros(n), *rb = dzeros(n);
    dpo_error e;
    for (int s = 0; s < NSTEPS; s++) {
        dpo_tensor *g = vec(n, 30 + s, 1.0);
        CHECK(dpo_rmsprop_step(p, g, sq, centered ? ga : NULL, mom > 0 ? buf : NULL, &o, &e) ==
              DPO_OK);
        for (int64_t i = 0; i < n; i++) {
            double gi = dpo_f32(g)[i], avg;
            if (maximize) gi = -gi;
            gi += wd * rp[i];
            rs[i] = alpha * rs[i] + (1 - alpha) * gi * gi;
            if (centered) {
                rg[i] = alpha * rg[i] + (1 - alpha) * gi;
                avg = sqrt(rs[i] - rg[i] * rg[i]) + eps;
            } else {
                avg = sqrt(rs[i]) + eps;
            }
            if (mom > 0) {
                rb[i] = mom * rb[i] + gi / avg;
                rp[i] -= lr * rb[i];
            } else {
                rp[i] -= lr * gi / avg;
            }
        }
        dpo_tensor_release(g);
    }
    CHECK_NEAR(maxrel(dpo_f32(p), rp, n, 1.0), 0, 1e-6);
    CHECK_NEAR(maxrel(dpo_f32(sq), rs, n, 1e-6), 0, 2e-6);
    if (centered) CHECK_NEAR(maxrel(dpo_f32(ga), rg, n, 1.0), 0, 1e-6);
    /* g / avg is of the order of 1 / sqrt(1 - alpha): the buffer's scale */
    if (mom > 0) CHECK_NEAR(maxrel(dpo_f32(buf), rb, n, 1 / sqrt(1 - alpha)), 0, 1e-6);
    dpo_tensor_release(p), dpo_tensor_release(sq), dpo_tensor_release(ga);
    dpo_tensor_release(buf);
    free(rp), free(rs), free(rg), free(rb);
}

/* ---- norms ------------------------------------------------------------------- */

static void norm_checks(void) {
    dpo_error e;
    dpo_tensor *a = vec(100003, 4, 1.0), *b = vec(7, 5, 3.0), *gs[3];
    double s1 = 0, s2 = 0, s3 = 0, mx = 0, got;
    gs[0] = a, gs[1] = NULL, gs[2] = b;
    for (int k = 0; k < 3; k++) {
        if (!gs[k]) continue;
        for (int64_t i = 0; i < dpo_tensor_numel(gs[k]); i++) {
            double x = fabs((double)dpo_f32(gs[k])[i]);
            s1 += x, s2 += x * x, s3 += x * x * x;
            if (x > mx) mx = x;
        }
    }
    CHECK(dpo_grad_norm(gs, 3, 2, &got, &e) == DPO_OK);
    CHECK_NEAR(got, sqrt(s2), 1e-9 * sqrt(s2));
    CHECK(dpo_grad_norm(gs, 3, 1, &got, &e) == DPO_OK);
    CHECK_NEAR(got, s1, 1e-9 * s1);
    CHECK(dpo_grad_norm(gs, 3, 3, &got, &e) == DPO_OK);
    CHECK_NEAR(got, cbrt(s3), 1e-9 * cbrt(s3));
    CHECK(dpo_grad_norm(gs, 3, INFINITY, &got, &e) == DPO_OK);
    CHECK(got == mx);
    CHECK(dpo_grad_norm(gs, 3, 0, &got, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "norm_type must be > 0");
    CHECK(dpo_grad_norm(gs, 0, 2, &got, &e) == DPO_OK && got == 0);

    /* the same bits for any thread count */
    {
        double one, many;
        int old = omp_get_max_threads();
        omp_set_num_threads(1);
        dpo_grad_norm(gs, 3, 2, &one, &e);
        omp_set_num_threads(4);
        dpo_grad_norm(gs, 3, 2, &many, &e);
        omp_set_num_threads(old);
        CHECK(one == many);
    }

    /* scaling, and the clip coefficient */
    {
        float b0 = dpo_f32(b)[0], a5 = dpo_f32(a)[5];
        CHECK(dpo_grad_scale(gs, 3, 0.5, &e) == DPO_OK);
        CHECK(dpo_f32(b)[0] == b0 * 0.5f);
        CHECK(dpo_f32(a)[5] == a5 * 0.5f);
    }
    CHECK_NEAR(dpo_clip_coef(10, 1), 1 / (10 + 1e-6), 1e-15);
    CHECK(dpo_clip_coef(0.5, 1) == 1);
    CHECK(dpo_clip_coef(0, 0) == 0);
    CHECK(isnan(dpo_clip_coef(NAN, 1)));
    dpo_tensor_release(a), dpo_tensor_release(b);
}

/* ---- errors -------------------------------------------------------------------- */

static void error_checks(void) {
    dpo_error e;
    int64_t sh[2] = {2, 3}, sh2[2] = {3, 2};
    dpo_tensor *p = dpo_tensor_zeros(DPO_F32, 2, sh, &e), *g = dpo_tensor_zeros(DPO_F32, 2, sh, &e);
    dpo_tensor *bad = dpo_tensor_zeros(DPO_F32, 2, sh2, &e);
    dpo_tensor *ints = dpo_tensor_zeros(DPO_I32, 2, sh, &e);
    dpo_tensor *tr = dpo_tensor_transpose(bad, 0, 1, &e); /* 2x3, not contiguous */
    dpo_tensor *m = dpo_tensor_zeros(DPO_F32, 2, sh, &e), *v = dpo_tensor_zeros(DPO_F32, 2, sh, &e);
    dpo_sgd_opts so = {0.1, 0.9, 0, 0, 0, 0};
    dpo_adamw_opts ao = {1e-3, 0.9, 0.999, 1e-8, 0, 0, 0};
    dpo_rmsprop_opts ro = {1e-2, 0.99, 1e-8, 0, 0, 1, 0};

    CHECK(dpo_sgd_step(p, bad, m, 1, &so, &e) == DPO_ERR_SHAPE);
    CHECK_STR(e.msg, "sgd_step: grad has size 3x2, expected 2x3");
    CHECK(e.arg == 2);
    CHECK(dpo_sgd_step(p, g, NULL, 1, &so, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "momentum_buffer is missing");
    CHECK(dpo_sgd_step(ints, g, m, 1, &so, &e) == DPO_ERR_TYPE);
    CHECK_STR(e.msg, "param is int32, expected float32");
    CHECK(dpo_sgd_step(tr, g, m, 1, &so, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "param is not contiguous");
    so.nesterov = 1, so.dampening = 0.1;
    CHECK(dpo_sgd_step(p, g, m, 1, &so, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "Nesterov momentum requires a momentum and zero dampening");

    CHECK(dpo_adamw_step(p, g, m, v, NULL, 0, &ao, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "step must be >= 1");
    ao.amsgrad = 1;
    CHECK(dpo_adamw_step(p, g, m, v, NULL, 1, &ao, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "max_exp_avg_sq is missing");
    CHECK(dpo_adamw_step(p, g, m, tr, v, 1, &ao, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "exp_avg_sq is not contiguous");

    CHECK(dpo_rmsprop_step(p, g, m, NULL, NULL, &ro, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "rmsprop_step: grad_avg is missing");
    CHECK(dpo_rmsprop_step(p, g, ints, v, NULL, &ro, &e) == DPO_ERR_TYPE);

    dpo_tensor_release(p), dpo_tensor_release(g), dpo_tensor_release(bad);
    dpo_tensor_release(ints), dpo_tensor_release(tr), dpo_tensor_release(m);
    dpo_tensor_release(v);
}

static int same_bits(const dpo_tensor *a, const dpo_tensor *b) {
    return memcmp(dpo_f32(a), dpo_f32(b), sizeof(float) * (size_t)dpo_tensor_numel(a)) == 0;
}

/* The same bits for any thread count (the steps are elementwise). */
static void thread_checks(void) {
    const int64_t n = 100003;
    dpo_adamw_opts o = {1e-3, 0.9, 0.999, 1e-8, 1e-2, 1, 0};
    dpo_rmsprop_opts r = {1e-2, 0.9, 1e-8, 0.01, 0.5, 1, 0};
    dpo_tensor *g = vec(n, 40, 1.0), *t[2][8];
    int old = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        dpo_tensor **x = t[k];
        omp_set_num_threads(k == 0 ? 1 : 4);
        x[0] = vec(n, 41, 1.0), x[1] = vec(n, 42, 1.0);
        for (int j = 2; j < 8; j++) x[j] = zeros(n);
        for (int s = 1; s <= 3; s++) {
            dpo_adamw_kernel(dpo_f32(x[0]), dpo_f32(g), dpo_f32(x[2]), dpo_f32(x[3]), dpo_f32(x[4]),
                             n, s, &o);
            dpo_rmsprop_kernel(dpo_f32(x[1]), dpo_f32(g), dpo_f32(x[5]), dpo_f32(x[6]),
                               dpo_f32(x[7]), n, &r);
        }
    }
    omp_set_num_threads(old);
    for (int j = 0; j < 8; j++) {
        CHECK(same_bits(t[0][j], t[1][j]));
        dpo_tensor_release(t[0][j]), dpo_tensor_release(t[1][j]);
    }
    dpo_tensor_release(g);
}

int main(void) {
    /* one element; one thread with a partial tile; split across threads */
    const int64_t sizes[3] = {1, 37, 100003};
    for (int k = 0; k < 3; k++) {
        int64_t n = sizes[k];
        sgd_case(n, 0.1, 0, 0, 0, 0, 0);
        sgd_case(n, 0.1, 0.9, 0, 0, 0, 0);
        sgd_case(n, 0.05, 0.9, 0.3, 0.01, 0, 0);
        sgd_case(n, 0.1, 0.8, 0, 0.1, 1, 0);
        sgd_case(n, 0.1, 0.5, 0, 0, 1, 1);

        adamw_case(n, 1e-3, 0.9, 0.999, 1e-8, 1e-2, 0, 0);
        adamw_case(n, 1e-2, 0.8, 0.99, 1e-6, 0, 0, 0);
        adamw_case(n, 5e-3, 0.9, 0.999, 1e-8, 0.1, 1, 0);
        adamw_case(n, 1e-2, 0.5, 0.9, 1e-3, 0.05, 1, 1);

        rmsprop_case(n, 1e-2, 0.99, 1e-8, 0, 0, 0, 0);
        rmsprop_case(n, 1e-2, 0.9, 1e-8, 0.1, 0, 0, 0);
        rmsprop_case(n, 1e-3, 0.99, 1e-6, 0, 0.9, 0, 0);
        rmsprop_case(n, 1e-2, 0.9, 1e-8, 0.01, 0.5, 1, 0);
        rmsprop_case(n, 1e-2, 0.8, 1e-8, 0, 0, 1, 1);
    }
    thread_checks();
    norm_checks();
    error_checks();
    return check_report("test_optim");
}
