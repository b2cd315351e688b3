/*
** optim.c: SGD, AdamW and RMSprop updates and the global gradient norm
** (see optim.h for the rules). Owns no memory: every buffer belongs to the
** caller. Each update is one pass over the n elements of a parameter,
** reading the gradient and state and writing parameter and state back;
** large tensors are split across OpenMP threads. Elementwise updates give
** the same bits for any thread count; the norm sums fixed blocks in a fixed
** order for the same reason.
*/
#include "model/optim.h"

#include <math.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

#define PAR_MIN    32768 /* elements below which a loop stays on one thread */
#define BLOCK      8192  /* elements per unit of parallel work, and per partial sum of a norm */
#define TILE       256   /* elements per pass of an update that takes square roots */
#define NORM_CHUNK 256   /* partial sums computed in parallel at a time */

/*
** The update loops are written so that the compiler vectorizes them: the
** options that decide which buffers are read and written become constant
** arguments of an always-inlined loop body (one specialized loop per
** combination), the other options are selects. A call of sqrtf may set
** errno, which keeps a loop from being vectorized; so AdamW and RMSprop
** take their square roots in a pass of their own over a tile of TILE
** elements, with the hardware's square root (correctly rounded, as sqrtf).
** The float32 operations and their order are the same as in one pass.
*/
#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

/* torch's lerp(self, end, weight) for a float32 tensor and a scalar weight,
** the formula picked by `small` = |weight| < 0.5. */
INLINE float lerpf(float self, float end, float w, int small) {
    float a = self + w * (end - self), b = end - (end - self) * (1.0f - w);
    return small ? a : b;
}

/* x[i] = sqrtf(x[i]) for i in [0, n). */
static void sqrt_tile(float *x, int64_t n) {
    int64_t i = 0;
#if defined(__SSE__)
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#elif defined(__ARM_NEON) && defined(__aarch64__)
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vsqrtq_f32(vld1q_f32(x + i)));
#endif
    for (; i < n; i++) x[i] = sqrtf(x[i]);
}

/* ---- checks shared by the tensor-level steps --------------------------------- */

static dpo_status fail_st(dpo_error *e, dpo_status s, int arg, const char *fn, const char *what,
                          const dpo_tensor *t, const dpo_tensor *ref) {
    char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
    if (s == DPO_ERR_SHAPE)
        dpo_fail(e, s, arg, "%s: %s has size %s, expected %s (the parameter's)", fn, what,
                 dpo_tensor_shape_str(t, a, sizeof a), dpo_tensor_shape_str(ref, b, sizeof b));
    else if (s == DPO_ERR_TYPE)
        dpo_fail(e, s, arg, "%s: %s is %s, expected float32", fn, what, dpo_dtype_name(t->dtype));
    else
        dpo_fail(e, s, arg, "%s: %s is not contiguous", fn, what);
    return s;
}

/*
** Check that t (operand number arg, called `what`) is a float32 contiguous
** tensor of param's shape. A NULL t is accepted only when `optional`.
*/
static dpo_status check_buf(const dpo_tensor *t, const dpo_tensor *param, int arg, int optional,
                            const char *fn, const char *what, dpo_error *e) {
    if (t == NULL) {
        if (optional) return DPO_OK;
        dpo_fail(e, DPO_ERR_ARG, arg, "%s: %s is missing", fn, what);
        return DPO_ERR_ARG;
    }
    if (t->dtype != DPO_F32) return fail_st(e, DPO_ERR_TYPE, arg, fn, what, t, param);
    if (t != param && !dpo_tensor_same_shape(t, param))
        return fail_st(e, DPO_ERR_SHAPE, arg, fn, what, t, param);
    if (!dpo_tensor_is_contiguous(t)) return fail_st(e, DPO_ERR_ARG, arg, fn, what, t, param);
    return DPO_OK;
}

/* ---- SGD ----------------------------------------------------------------------- */

/* The float32 constants of an SGD step. */
typedef struct sgd_c {
    int use_wd, nesterov, neg;
    float wd, mom, damp1, neg_lr;
} sgd_c;

/* mode 0: no momentum; 1: the buffer's first step (buf = g); 2: a later step */
INLINE void sgd_range(float *p, const float *g, float *buf, int64_t lo, int64_t hi, const sgd_c *c,
                      int mode) {
    for (int64_t i = lo; i < hi; i++) {
        float gi = c->neg ? -g[i] : g[i], pi = p[i];
        gi = c->use_wd ? gi + c->wd * pi : gi;
        if (mode) {
            float b = mode == 1 ? gi : buf[i] * c->mom + c->damp1 * gi;
            buf[i] = b;
            gi = c->nesterov ? gi + c->mom * b : b;
        }
        p[i] = pi + c->neg_lr * gi;
    }
}

void dpo_sgd_kernel(float *p, const float *g, float *buf, int64_t n, int first,
                    const dpo_sgd_opts *o) {
    const sgd_c c = {o->weight_decay != 0,   o->nesterov,        o->maximize,
                     (float)o->weight_decay, (float)o->momentum, (float)(1.0 - o->dampening),
                     (float)(-o->lr)};
    const int mode = o->momentum == 0 ? 0 : first ? 1 : 2;
    const int64_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * BLOCK, hi = n - lo < BLOCK ? n : lo + BLOCK;
        if (mode == 0)
            sgd_range(p, g, buf, lo, hi, &c, 0);
        else if (mode == 1)
            sgd_range(p, g, buf, lo, hi, &c, 1);
        else
            sgd_range(p, g, buf, lo, hi, &c, 2);
    }
}

dpo_status dpo_sgd_step(dpo_tensor *param, const dpo_tensor *grad, dpo_tensor *buf, int first,
                        const dpo_sgd_opts *o, dpo_error *e) {
    static const char fn[] = "sgd_step";
    dpo_status st;
    if ((st = check_buf(param, param, 1, 0, fn, "param", e)) != DPO_OK) return st;
    if ((st = check_buf(grad, param, 2, 0, fn, "grad", e)) != DPO_OK) return st;
    if ((st = check_buf(buf, param, 3, o->momentum == 0, fn, "momentum_buffer", e)) != DPO_OK)
        return st;
    if (o->nesterov && (o->momentum <= 0 || o->dampening != 0)) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: Nesterov momentum requires a momentum and zero dampening",
                 fn);
        return DPO_ERR_ARG;
    }
    dpo_sgd_kernel(dpo_f32(param), dpo_f32(grad), buf ? dpo_f32(buf) : NULL,
                   dpo_tensor_numel(param), first, o);
    return DPO_OK;
}

/* ---- AdamW --------------------------------------------------------------------- */

/* The float32 constants of an AdamW step. */
typedef struct adamw_c {
    int use_wd, neg, small;
    float decay, w1, b2, w2, bc2_sqrt, eps, neg_step;
} adamw_c;

/* Pass 1 over [lo, hi): the moments; t[i - lo] gets the second moment used. */
INLINE void adamw_moments(const float *g, float *m, float *v, float *vmax, float *t, int64_t lo,
                          int64_t hi, const adamw_c *c, int ams) {
    for (int64_t i = lo; i < hi; i++) {
        float gi = c->neg ? -g[i] : g[i], vi;
        m[i] = lerpf(m[i], gi, c->w1, c->small);
        vi = v[i] * c->b2;
        vi = vi + c->w2 * gi * gi;
        v[i] = vi;
        if (ams) {
            float mx = vmax[i];
            mx = ((mx != mx) | (mx >= vi)) ? mx : vi; /* torch.maximum: NaN wins */
            vmax[i] = mx;
            vi = mx;
        }
        t[i - lo] = vi;
    }
}

/* Pass 3: the parameters, t[i - lo] holding sqrt of the second moment. */
INLINE void adamw_params(float *p, const float *m, const float *t, int64_t lo, int64_t hi,
                         const adamw_c *c) {
    for (int64_t i = lo; i < hi; i++) {
        float pi = c->use_wd ? p[i] * c->decay : p[i];
        float denom = t[i - lo] / c->bc2_sqrt + c->eps;
        p[i] = pi + c->neg_step * m[i] / denom;
    }
}

void dpo_adamw_kernel(float *p, const float *g, float *m, float *v, float *vmax, int64_t n,
                      int64_t step, const dpo_adamw_opts *o) {
    const double bc1 = 1.0 - pow(o->beta1, (double)step);
    const double bc2 = 1.0 - pow(o->beta2, (double)step);
    const float w1 = (float)(1.0 - o->beta1);
    const adamw_c c = {o->weight_decay != 0,
                       o->maximize,
                       fabsf(w1) < 0.5f,
                       (float)(1.0 - o->lr * o->weight_decay),
                       w1,
                       (float)o->beta2,
                       (float)(1.0 - o->beta2),
                       (float)sqrt(bc2),
                       (float)o->eps,
                       (float)(-(o->lr / bc1))};
    const int ams = o->amsgrad;
    const int64_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t end = n - b * BLOCK < BLOCK ? n : b * BLOCK + BLOCK;
        float t[TILE];
        for (int64_t lo = b * BLOCK; lo < end; lo += TILE) {
            int64_t hi = end - lo < TILE ? end : lo + TILE;
            if (ams)
                adamw_moments(g, m, v, vmax, t, lo, hi, &c, 1);
            else
                adamw_moments(g, m, v, vmax, t, lo, hi, &c, 0);
            sqrt_tile(t, hi - lo);
            adamw_params(p, m, t, lo, hi, &c);
        }
    }
}

dpo_status dpo_adamw_step(dpo_tensor *param, const dpo_tensor *grad, dpo_tensor *exp_avg,
                          dpo_tensor *exp_avg_sq, dpo_tensor *max_exp_avg_sq, int64_t step,
                          const dpo_adamw_opts *o, dpo_error *e) {
    static const char fn[] = "adamw_step";
    dpo_status st;
    if ((st = check_buf(param, param, 1, 0, fn, "param", e)) != DPO_OK) return st;
    if ((st = check_buf(grad, param, 2, 0, fn, "grad", e)) != DPO_OK) return st;
    if ((st = check_buf(exp_avg, param, 3, 0, fn, "exp_avg", e)) != DPO_OK) return st;
    if ((st = check_buf(exp_avg_sq, param, 4, 0, fn, "exp_avg_sq", e)) != DPO_OK) return st;
    if ((st = check_buf(max_exp_avg_sq, param, 5, !o->amsgrad, fn, "max_exp_avg_sq", e)) != DPO_OK)
        return st;
    if (step < 1) {
        dpo_fail(e, DPO_ERR_ARG, 6, "%s: step must be >= 1 (got %lld)", fn, (long long)step);
        return DPO_ERR_ARG;
    }
    dpo_adamw_kernel(dpo_f32(param), dpo_f32(grad), dpo_f32(exp_avg), dpo_f32(exp_avg_sq),
                     o->amsgrad ? dpo_f32(max_exp_avg_sq) : NULL, dpo_tensor_numel(param), step, o);
    return DPO_OK;
}

/* ---- RMSprop ------------------------------------------------------------------- */

/* The float32 constants of an RMSprop step. */
typedef struct rmsprop_c {
    int use_wd, neg, small;
    float wd, alpha, w, eps, mom, neg_lr;
} rmsprop_c;

/* The gradient RMSprop uses at i, weight decay included. */
INLINE float rmsprop_grad(const float *p, const float *g, int64_t i, const rmsprop_c *c) {
    float gi = c->neg ? -g[i] : g[i];
    return c->use_wd ? gi + c->wd * p[i] : gi;
}

/* Pass 1 over [lo, hi): the averages; t[i - lo] gets what avg is the root of. */
INLINE void rmsprop_averages(const float *p, const float *g, float *sq, float *ga, float *t,
                             int64_t lo, int64_t hi, const rmsprop_c *c, int centered) {
    for (int64_t i = lo; i < hi; i++) {
        float gi = rmsprop_grad(p, g, i, c), si;
        si = sq[i] * c->alpha;
        si = si + c->w * gi * gi;
        sq[i] = si;
        if (centered) {
            float a = lerpf(ga[i], gi, c->w, c->small);
            ga[i] = a;
            si = si + -1.0f * a * a;
        }
        t[i - lo] = si;
    }
}

/* Pass 3: momentum and parameters, t[i - lo] holding sqrt(...). */
INLINE void rmsprop_params(float *p, const float *g, float *buf, const float *t, int64_t lo,
                           int64_t hi, const rmsprop_c *c, int use_mom) {
    for (int64_t i = lo; i < hi; i++) {
        float gi = rmsprop_grad(p, g, i, c), avg = t[i - lo] + c->eps;
        if (use_mom) {
            float b = buf[i] * c->mom;
            b = b + gi / avg;
            buf[i] = b;
            p[i] = p[i] + c->neg_lr * b;
        } else {
            p[i] = p[i] + c->neg_lr * gi / avg;
        }
    }
}

void dpo_rmsprop_kernel(float *p, const float *g, float *sq, float *ga, float *buf, int64_t n,
                        const dpo_rmsprop_opts *o) {
    const float w = (float)(1.0 - o->alpha);
    const rmsprop_c c = {o->weight_decay != 0,   o->maximize,        fabsf(w) < 0.5f,
                         (float)o->weight_decay, (float)o->alpha,    w,
                         (float)o->eps,          (float)o->momentum, (float)(-o->lr)};
    const int centered = o->centered, use_mom = o->momentum > 0;
    const int64_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t end = n - b * BLOCK < BLOCK ? n : b * BLOCK + BLOCK;
        float t[TILE];
        for (int64_t lo = b * BLOCK; lo < end; lo += TILE) {
            int64_t hi = end - lo < TILE ? end : lo + TILE;
            if (centered)
                rmsprop_averages(p, g, sq, ga, t, lo, hi, &c, 1);
            else
                rmsprop_averages(p, g, sq, ga, t, lo, hi, &c, 0);
            sqrt_tile(t, hi - lo);
            if (use_mom)
                rmsprop_params(p, g, buf, t, lo, hi, &c, 1);
            else
                rmsprop_params(p, g, buf, t, lo, hi, &c, 0);
        }
    }
}

dpo_status dpo_rmsprop_step(dpo_tensor *param, const dpo_tensor *grad, dpo_tensor *square_avg,
                            dpo_tensor *grad_avg, dpo_tensor *momentum_buf,
                            const dpo_rmsprop_opts *o, dpo_error *e) {
    static const char fn[] = "rmsprop_step";
    dpo_status st;
    if ((st = check_buf(param, param, 1, 0, fn, "param", e)) != DPO_OK) return st;
    if ((st = check_buf(grad, param, 2, 0, fn, "grad", e)) != DPO_OK) return st;
    if ((st = check_buf(square_avg, param, 3, 0, fn, "square_avg", e)) != DPO_OK) return st;
    if ((st = check_buf(grad_avg, param, 4, !o->centered, fn, "grad_avg", e)) != DPO_OK) return st;
    if ((st = check_buf(momentum_buf, param, 5, !(o->momentum > 0), fn, "momentum_buffer", e)) !=
        DPO_OK)
        return st;
    dpo_rmsprop_kernel(dpo_f32(param), dpo_f32(grad), dpo_f32(square_avg),
                       o->centered ? dpo_f32(grad_avg) : NULL,
                       o->momentum > 0 ? dpo_f32(momentum_buf) : NULL, dpo_tensor_numel(param), o);
    return DPO_OK;
}

/* ---- gradient norms ---------------------------------------------------------------- */

/* The contribution of x[0..n) to a p-norm: sum |x|^p, or max |x| for kind 3. */
static double norm_part(const float *x, int64_t n, int kind, double p) {
    double s = 0;
    switch (kind) {
    case 1:
        for (int64_t i = 0; i < n; i++) s += fabs((double)x[i]);
        break;
    case 2:
        for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
        break;
    case 3:
        for (int64_t i = 0; i < n; i++) {
            double a = fabs((double)x[i]);
            if (a > s || isnan(a)) s = a;
            if (isnan(s)) break;
        }
        break;
    default:
        for (int64_t i = 0; i < n; i++) s += pow(fabs((double)x[i]), p);
        break;
    }
    return s;
}

dpo_status dpo_grad_norm(dpo_tensor *const *grads, int n, double norm_type, double *norm,
                         dpo_error *e) {
    int kind;
    double total = 0;
    if (!(norm_type > 0)) {
        dpo_fail(e, DPO_ERR_ARG, 3, "grad_norm: norm_type must be > 0 or inf (got %g)", norm_type);
        return DPO_ERR_ARG;
    }
    kind = isinf(norm_type) ? 3 : norm_type == 1 ? 1 : norm_type == 2 ? 2 : 0;
    for (int k = 0; k < n; k++) {
        const dpo_tensor *t = grads[k];
        if (t == NULL) continue;
        if (t->dtype != DPO_F32 || !dpo_tensor_is_contiguous(t)) {
            dpo_fail(e, DPO_ERR_ARG, 1, "grad_norm: gradient %d is not a contiguous float32 tensor",
                     k + 1);
            return DPO_ERR_ARG;
        }
    }
    for (int k = 0; k < n; k++) {
        const float *x;
        int64_t len, nblocks;
        if (grads[k] == NULL) continue;
        x = dpo_f32(grads[k]);
        len = dpo_tensor_numel(grads[k]);
        nblocks = (len + BLOCK - 1) / BLOCK;
        for (int64_t b0 = 0; b0 < nblocks; b0 += NORM_CHUNK) {
            double part[NORM_CHUNK];
            int64_t nb = nblocks - b0 < NORM_CHUNK ? nblocks - b0 : NORM_CHUNK;
#pragma omp parallel for if (nb > 1 && len > PAR_MIN) schedule(static)
            for (int64_t b = 0; b < nb; b++) {
                int64_t start = (b0 + b) * BLOCK;
                int64_t cnt = len - start < BLOCK ? len - start : BLOCK;
                part[b] = norm_part(x + start, cnt, kind, norm_type);
            }
            for (int64_t b = 0; b < nb; b++) {
                if (kind == 3) {
                    if (part[b] > total || isnan(part[b])) total = part[b];
                } else {
                    total += part[b];
                }
            }
        }
    }
    if (kind == 2)
        total = sqrt(total);
    else if (kind == 0)
        total = pow(total, 1.0 / norm_type);
    *norm = total;
    return DPO_OK;
}

dpo_status dpo_grad_scale(dpo_tensor *const *grads, int n, double coef, dpo_error *e) {
    const float c = (float)coef;
    for (int k = 0; k < n; k++) {
        const dpo_tensor *t = grads[k];
        if (t == NULL) continue;
        if (t->dtype != DPO_F32 || !dpo_tensor_is_contiguous(t)) {
            dpo_fail(e, DPO_ERR_ARG, 1,
                     "grad_scale: gradient %d is not a contiguous float32 tensor", k + 1);
            return DPO_ERR_ARG;
        }
    }
    for (int k = 0; k < n; k++) {
        float *x;
        int64_t len;
        if (grads[k] == NULL) continue;
        x = dpo_f32(grads[k]);
        len = dpo_tensor_numel(grads[k]);
#pragma omp parallel for if (len > PAR_MIN) schedule(static)
        for (int64_t i = 0; i < len; i++) x[i] = x[i] * c;
    }
    return DPO_OK;
}

double dpo_clip_coef(double norm, double max_norm) {
    double c = max_norm / (norm + 1e-6);
    return (c < 1 || isnan(c)) ? c : 1.0;
}
