/*
** optim.h: the optimizers' update rules, one fused loop per parameter tensor.
**
** Each step function applies one update of torch.optim's single-tensor rule
** (same hyperparameter names, same order of float32 operations) to a
** parameter in place, reading its gradient and updating its state buffers
** in place. Parameters, gradients and state are float32, contiguous and of
** one shape (parameters may be views into a larger arena). Hyperparameters
** arrive as doubles; the scalars torch computes in Python (bias corrections,
** step sizes, 1 - beta) are computed here in double, then cast to float32
** where torch hands them to a float32 kernel.
**
** The raw kernels (dpo_*_kernel) work on plain arrays of n floats, for
** callers that own their buffers (a model's parameter and gradient arenas);
** the tensor functions check shapes, dtypes and contiguity, then call them.
** Nothing here allocates. Policy (defaults, validation of option values,
** lazy state, the step count) lives in lua/dpo/optim.lua.
*/
#ifndef DPO_OPTIM_H
#define DPO_OPTIM_H

#include "tensor/tensor.h"

/* ---- SGD ------------------------------------------------------------------
** g = (maximize ? -grad : grad) + weight_decay * p
** momentum != 0: buf = first ? g : momentum * buf + (1 - dampening) * g
**                g = nesterov ? g + momentum * buf : buf
** p -= lr * g
*/
typedef struct dpo_sgd_opts {
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize;
} dpo_sgd_opts;

/* buf: [n], may be NULL when momentum == 0; first: buf holds nothing yet. */
void dpo_sgd_kernel(float *p, const float *g, float *buf, int64_t n, int first,
                    const dpo_sgd_opts *o);
dpo_status dpo_sgd_step(dpo_tensor *param, const dpo_tensor *grad, dpo_tensor *buf, int first,
                        const dpo_sgd_opts *o, dpo_error *e);

/* ---- AdamW (decoupled weight decay) ------------------------------------------
** p *= 1 - lr * weight_decay
** m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
** amsgrad: vmax = max(vmax, v), used in place of v below
** p += -(lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
*/
typedef struct dpo_adamw_opts {
    double lr, beta1, beta2, eps, weight_decay;
    int amsgrad, maximize;
} dpo_adamw_opts;

/* m, v: [n]; vmax: [n] when amsgrad, else unused (may be NULL); step >= 1 counts
** this update. */
void dpo_adamw_kernel(float *p, const float *g, float *m, float *v, float *vmax, int64_t n,
                      int64_t step, const dpo_adamw_opts *o);
dpo_status dpo_adamw_step(dpo_tensor *param, const dpo_tensor *grad, dpo_tensor *exp_avg,
                          dpo_tensor *exp_avg_sq, dpo_tensor *max_exp_avg_sq, int64_t step,
                          const dpo_adamw_opts *o, dpo_error *e);

/* ---- RMSprop ------------------------------------------------------------------
** g = (maximize ? -grad : grad) + weight_decay * p
** sq = alpha * sq + (1 - alpha) * g * g
** centered: ga = lerp(ga, g, 1 - alpha); avg = sqrt(sq - ga * ga) + eps
** else:     avg = sqrt(sq) + eps
** momentum > 0: buf = momentum * buf + g / avg; p -= lr * buf
** else:         p -= lr * g / avg
*/
typedef struct dpo_rmsprop_opts {
    double lr, alpha, eps, weight_decay, momentum;
    int centered, maximize;
} dpo_rmsprop_opts;

/* sq: [n]; ga: [n] when centered (else may be NULL); buf: [n] when momentum > 0
** (else may be NULL). */
void dpo_rmsprop_kernel(float *p, const float *g, float *sq, float *ga, float *buf, int64_t n,
                        const dpo_rmsprop_opts *o);
dpo_status dpo_rmsprop_step(dpo_tensor *param, const dpo_tensor *grad, dpo_tensor *square_avg,
                            dpo_tensor *grad_avg, dpo_tensor *momentum_buf,
                            const dpo_rmsprop_opts *o, dpo_error *e);

/* ---- gradient norms ---------------------------------------------------------------
** The norm_type-norm of all elements of grads[0..n) taken together, as
** torch.nn.utils.clip_grad_norm_ measures it: (sum |g|^p)^(1/p) for p > 0,
** max |g| for p = INFINITY. Accumulated in double, in fixed-size blocks
** summed in a fixed order, so the result does not depend on the thread count.
** NULL entries are skipped. norm_type must be > 0 (or infinite).
*/
dpo_status dpo_grad_norm(dpo_tensor *const *grads, int n, double norm_type, double *norm,
                         dpo_error *e);

/* Multiply every element of grads[0..n) (NULL entries skipped) by (float)coef. */
dpo_status dpo_grad_scale(dpo_tensor *const *grads, int n, double coef, dpo_error *e);

/* The factor clip_grad_norm_ multiplies the gradients by: max_norm / (norm + 1e-6),
** clamped to at most 1. */
double dpo_clip_coef(double norm, double max_norm);

#endif
