/*
** autograd.c: the tape and every op's backward rule.
**
** Contract: nodes are refcounted; an output holds its node, a node holds its
** inputs, so a graph lives exactly as long as some tensor computed from it.
** Backward is iterative (an explicit stack, no recursion) so graphs as long as
** a training loop cannot overflow the C stack. Gradients are computed with
** the engine's own kernels; nothing here records (backward is not itself
** differentiated).
*/
#include "tensor/autograd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int grad_on = 1;

int dpo_grad_enabled(void) {
    return grad_on;
}

void dpo_set_grad_enabled(int on) {
    grad_on = on != 0;
}

int dpo_op_differentiable(dpo_op op) {
    switch (op) {
    case DPO_OP_ADD:
    case DPO_OP_SUB:
    case DPO_OP_MUL:
    case DPO_OP_DIV:
    case DPO_OP_POW:
    case DPO_OP_MAXIMUM:
    case DPO_OP_MINIMUM:
    case DPO_OP_NEG:
    case DPO_OP_EXP:
    case DPO_OP_LOG:
    case DPO_OP_SQRT:
    case DPO_OP_ABS:
    case DPO_OP_SIGMOID:
    case DPO_OP_TANH:
    case DPO_OP_RELU:
    case DPO_OP_GELU:
    case DPO_OP_LOGSIGMOID:
    case DPO_OP_SOFTPLUS:
    case DPO_OP_SILU:
    case DPO_OP_RSQRT:
    case DPO_OP_CLAMP:
    case DPO_OP_MATMUL:
    case DPO_OP_SUM:
    case DPO_OP_MEAN:
    case DPO_OP_MAX:
    case DPO_OP_MIN:
    case DPO_OP_SOFTMAX:
    case DPO_OP_LOG_SOFTMAX:
    case DPO_OP_LOGSUMEXP:
    case DPO_OP_GATHER:
    case DPO_OP_INDEX_SELECT:
    case DPO_OP_CAT:
    case DPO_OP_STACK:
    case DPO_OP_WHERE:
    case DPO_OP_NARROW:
    case DPO_OP_RESHAPE:
    case DPO_OP_TRANSPOSE:
    case DPO_OP_SELECT:
    case DPO_OP_COPY:
    case DPO_OP_GPT_LOGPS:
    case DPO_OP_LLAMA_LOGPS:
        return 1;
    default:
        return 0;
    }
}

/* Ops whose backward reads the output's values. */
static int keeps_output(dpo_op op) {
    return op == DPO_OP_EXP || op == DPO_OP_SQRT || op == DPO_OP_RSQRT || op == DPO_OP_SIGMOID ||
           op == DPO_OP_TANH || op == DPO_OP_POW || op == DPO_OP_DIV || op == DPO_OP_SOFTMAX ||
           op == DPO_OP_LOG_SOFTMAX || op == DPO_OP_LOGSUMEXP;
}

int dpo_ag_wants(dpo_tensor *const *in, int n) {
    if (!grad_on) return 0;
    for (int i = 0; i < n; i++)
        if (in[i] && in[i]->requires_grad) return 1;
    return 0;
}

static void node_clear(dpo_node *n) {
    for (int i = 0; i < n->ninputs; i++) dpo_tensor_release(n->inputs[i]);
    free(n->inputs);
    n->inputs = NULL;
    n->ninputs = 0;
    dpo_tensor_release(n->output);
    n->output = NULL;
    dpo_tensor_release(n->p.saved);
    n->p.saved = NULL;
    dpo_tensor_release(n->gout);
    n->gout = NULL;
    if (n->custom.release) n->custom.release(n->custom.ctx);
    n->custom.release = NULL;
    n->custom.backward = NULL;
    n->custom.ctx = NULL;
}

void dpo_node_release(dpo_node *n) {
    if (!n || --n->refcount > 0) return;
    node_clear(n);
    free(n);
}

dpo_status dpo_ag_record(dpo_tensor *out, dpo_op op, dpo_tensor *const *in, int n,
                         const dpo_ag_params *p, dpo_error *e) {
    dpo_node *node;
    if (!dpo_ag_wants(in, n) || !dpo_op_differentiable(op) || out->dtype != DPO_F32) return DPO_OK;
    node = (dpo_node *)calloc(1, sizeof *node);
    if (node) node->inputs = (dpo_tensor **)calloc((size_t)n, sizeof(dpo_tensor *));
    if (!node || !node->inputs) {
        free(node);
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory recording '%s'", dpo_op_name(op));
        return DPO_ERR_MEM;
    }
    node->op = op;
    node->refcount = 1;
    node->ninputs = n;
    for (int i = 0; i < n; i++) {
        node->inputs[i] = in[i];
        dpo_tensor_retain(in[i]);
    }
    if (p) node->p = *p;
    dpo_tensor_retain(node->p.saved);
    node->out_ndim = out->ndim;
    memcpy(node->out_shape, out->shape, sizeof node->out_shape);
    if (keeps_output(op)) {
        node->output = dpo_tensor_view(out, out->ndim, out->shape, e);
        if (!node->output) {
            dpo_node_release(node);
            return e ? e->status : DPO_ERR_MEM;
        }
    }
    if (out->node) dpo_node_release(out->node);
    out->node = node;
    out->requires_grad = 1;
    return DPO_OK;
}

dpo_status dpo_ag_record_custom(dpo_tensor *out, dpo_op op, const dpo_custom *custom,
                                dpo_error *e) {
    dpo_node *node = (dpo_node *)calloc(1, sizeof *node);
    if (!node) {
        if (custom->release) custom->release(custom->ctx);
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory recording '%s'", dpo_op_name(op));
        return DPO_ERR_MEM;
    }
    node->op = op;
    node->refcount = 1;
    node->custom = *custom;
    node->out_ndim = out->ndim;
    memcpy(node->out_shape, out->shape, sizeof node->out_shape);
    if (out->node) dpo_node_release(out->node);
    out->node = node;
    out->requires_grad = 1;
    return DPO_OK;
}

/* ---- helpers for the rules ------------------------------------------------------ */

/* g summed down to like's shape (undoing broadcasting); a new reference. */
static dpo_tensor *sum_to(dpo_tensor *g, const dpo_tensor *like, dpo_error *e) {
    dpo_tensor *cur = g, *next;
    int lead = g->ndim - like->ndim;
    dpo_tensor_retain(cur);
    for (int k = 0; k < lead && cur; k++) {
        next = dpo_reduce(DPO_OP_SUM, cur, 0, 0, 0, NULL, e);
        dpo_tensor_release(cur);
        cur = next;
    }
    for (int i = 0; i < like->ndim && cur; i++) {
        if (like->shape[i] == 1 && cur->shape[i] != 1) {
            next = dpo_reduce(DPO_OP_SUM, cur, i, 1, 0, NULL, e);
            dpo_tensor_release(cur);
            cur = next;
        }
    }
    return cur;
}

static dpo_tensor *zeros_like(const dpo_tensor *t, dpo_error *e) {
    return dpo_tensor_zeros(DPO_F32, t->ndim, t->shape, e);
}

/* Float32, contiguous version of t; a new reference. */
static dpo_tensor *dense(dpo_tensor *t, dpo_error *e) {
    dpo_tensor *f = dpo_tensor_cast(t, DPO_F32, e), *c;
    if (!f) return NULL;
    c = dpo_tensor_contiguous(f, e);
    dpo_tensor_release(f);
    return c;
}

/* *slot += g (g has slot's shape); takes over g when *slot is empty. */
static dpo_status accumulate(dpo_tensor **slot, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *c;
    if (*slot == NULL) {
        /* own it outright: a fresh, contiguous, unshared buffer */
        if (g->refcount == 1 && g->storage->refcount == 1 && dpo_tensor_is_contiguous(g) &&
            g->node == NULL && g->offset == 0) {
            dpo_tensor_retain(g);
            *slot = g;
            return DPO_OK;
        }
        *slot = dpo_tensor_clone(g, e);
        return *slot ? DPO_OK : (e ? e->status : DPO_ERR_MEM);
    }
    c = dense(g, e);
    if (!c) return e ? e->status : DPO_ERR_MEM;
    {
        float *d = dpo_f32(*slot);
        const float *s = dpo_f32(c);
        int64_t n = dpo_tensor_numel(c);
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
    }
    dpo_tensor_release(c);
    return DPO_OK;
}

/* g broadcast to shape; a new reference. */
static dpo_tensor *expand_to(const dpo_tensor *g, int ndim, const int64_t *shape, dpo_error *e) {
    dpo_tensor *out = dpo_tensor_new(DPO_F32, ndim, shape, e);
    if (out && dpo_tensor_copy(out, g, e) != DPO_OK) {
        dpo_tensor_release(out);
        return NULL;
    }
    return out;
}

static dpo_tensor *binop(dpo_op op, const dpo_tensor *a, const dpo_tensor *b, dpo_error *e) {
    return (a && b) ? dpo_binary(op, a, b, e) : NULL;
}

/* [outer, n, inner] around dim */
static void split3(const int64_t *shape, int ndim, int dim, int64_t *outer, int64_t *n,
                   int64_t *inner) {
    *outer = 1, *inner = 1;
    for (int i = 0; i < dim; i++) *outer *= shape[i];
    *n = shape[dim];
    for (int i = dim + 1; i < ndim; i++) *inner *= shape[i];
}

/* ---- the rules --------------------------------------------------------------------- */

/* dL/dx for the elementwise ops, from x, the output y and the incoming g. */
static dpo_tensor *unary_grad(const dpo_node *nd, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *x = dense(nd->inputs[0], e), *y = NULL, *out = NULL;
    int64_t n;
    if (!x) return NULL;
    if (nd->output) y = dense(nd->output, e);
    out = dpo_tensor_new(DPO_F32, x->ndim, x->shape, e);
    if (out && (!nd->output || y)) {
        const float *xs = dpo_f32(x), *gs = dpo_f32(g), *ys = y ? dpo_f32(y) : NULL;
        float *o = dpo_f32(out);
        const float c = 0.7978845608028654f, k = 0.044715f;
        n = dpo_tensor_numel(x);
        for (int64_t i = 0; i < n; i++) {
            float v = xs[i], gi = gs[i], d;
            switch (nd->op) {
            case DPO_OP_NEG:
                d = -1;
                break;
            case DPO_OP_EXP:
                d = ys[i];
                break;
            case DPO_OP_LOG:
                d = 1 / v;
                break;
            case DPO_OP_SQRT:
                d = 0.5f / ys[i];
                break;
            case DPO_OP_ABS:
                d = (float)((v > 0) - (v < 0));
                break;
            case DPO_OP_SIGMOID:
                d = ys[i] * (1 - ys[i]);
                break;
            case DPO_OP_TANH:
                d = 1 - ys[i] * ys[i];
                break;
            case DPO_OP_RELU:
                d = v > 0 ? 1.0f : 0.0f;
                break;
            case DPO_OP_GELU: {
                float t = tanhf(c * (v + k * v * v * v));
                d = 0.5f * (1 + t) + 0.5f * v * (1 - t * t) * c * (1 + 3 * k * v * v);
                break;
            }
            case DPO_OP_LOGSIGMOID: /* sigmoid(-v) */
                d = v >= 0 ? expf(-v) / (1 + expf(-v)) : 1 / (1 + expf(v));
                break;
            case DPO_OP_SOFTPLUS: /* sigmoid(v) */
                d = v >= 0 ? 1 / (1 + expf(-v)) : expf(v) / (1 + expf(v));
                break;
            case DPO_OP_SILU: { /* s (1 + v (1 - s)), s = sigmoid(v) */
                float s = v >= 0 ? 1 / (1 + expf(-v)) : expf(v) / (1 + expf(v));
                d = s * (1 + v * (1 - s));
                break;
            }
            case DPO_OP_RSQRT: /* -y^3 / 2 */
                d = -0.5f * ys[i] * ys[i] * ys[i];
                break;
            case DPO_OP_CLAMP:
                d = ((!nd->p.has_lo || v >= nd->p.lo) && (!nd->p.has_hi || v <= nd->p.hi)) ? 1.0f
                                                                                           : 0.0f;
                break;
            default:
                d = 0;
            }
            o[i] = gi * d;
        }
    }
    dpo_tensor_release(x);
    dpo_tensor_release(y);
    return out;
}

/* Grad of a softmax-family op along p.dim. */
static dpo_tensor *softmax_grad(const dpo_node *nd, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *x = dense(nd->inputs[0], e), *y = dense(nd->output, e), *out = NULL;
    int64_t outer, n, inner;
    if (x && y) out = dpo_tensor_new(DPO_F32, x->ndim, x->shape, e);
    if (out) {
        const float *xs = dpo_f32(x), *ys = dpo_f32(y), *gs = dpo_f32(g);
        float *o = dpo_f32(out);
        split3(x->shape, x->ndim, nd->p.dim, &outer, &n, &inner);
        for (int64_t oi = 0; oi < outer; oi++)
            for (int64_t ii = 0; ii < inner; ii++) {
                int64_t base = oi * n * inner + ii;
                double s = 0;
                if (nd->op == DPO_OP_LOGSUMEXP) {
                    /* y and g have the reduced shape: one value per (oi, ii) */
                    float gv = gs[oi * inner + ii], yv = ys[oi * inner + ii];
                    for (int64_t j = 0; j < n; j++)
                        o[base + j * inner] = gv * expf(xs[base + j * inner] - yv);
                    continue;
                }
                for (int64_t j = 0; j < n; j++) {
                    int64_t q = base + j * inner;
                    s += nd->op == DPO_OP_SOFTMAX ? (double)gs[q] * ys[q] : (double)gs[q];
                }
                for (int64_t j = 0; j < n; j++) {
                    int64_t q = base + j * inner;
                    if (nd->op == DPO_OP_SOFTMAX)
                        o[q] = ys[q] * (gs[q] - (float)s);
                    else
                        o[q] = gs[q] - expf(ys[q]) * (float)s;
                }
            }
    }
    dpo_tensor_release(x);
    dpo_tensor_release(y);
    return out;
}

/* Grad of sum/mean/max/min: g spread back over the reduced positions. */
static dpo_tensor *reduce_grad(const dpo_node *nd, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *x = nd->inputs[0], *out = NULL, *idx = NULL;
    int dim = nd->p.dim;
    if (nd->op == DPO_OP_SUM || nd->op == DPO_OP_MEAN) {
        double scale = 1;
        if (dim < 0) {
            out = expand_to(g, x->ndim, x->shape, e);
            scale = (double)dpo_tensor_numel(x);
        } else {
            int64_t ks[DPO_MAXDIM];
            dpo_tensor *gk;
            memcpy(ks, x->shape, sizeof ks);
            ks[dim] = 1;
            gk = dpo_tensor_reshape(g, x->ndim, ks, e);
            if (gk) out = expand_to(gk, x->ndim, x->shape, e);
            dpo_tensor_release(gk);
            scale = (double)x->shape[dim];
        }
        if (out && nd->op == DPO_OP_MEAN && scale > 0) {
            float *o = dpo_f32(out), f = (float)(1.0 / scale);
            int64_t n = dpo_tensor_numel(out);
            for (int64_t i = 0; i < n; i++) o[i] *= f;
        }
        return out;
    }
    /* max / min: the gradient goes to the chosen position */
    out = zeros_like(x, e);
    if (!out) return NULL;
    if (dim < 0) {
        dpo_tensor *am =
            dpo_reduce(nd->op == DPO_OP_MAX ? DPO_OP_ARGMAX : DPO_OP_ARGMIN, x, -1, 0, 0, NULL, e);
        if (!am) {
            dpo_tensor_release(out);
            return NULL;
        }
        dpo_f32(out)[dpo_i32(am)[0]] = dpo_f32(g)[0];
        dpo_tensor_release(am);
        return out;
    }
    idx = dpo_tensor_contiguous(nd->p.saved, e);
    if (!idx) {
        dpo_tensor_release(out);
        return NULL;
    }
    {
        int64_t outer, n, inner;
        split3(x->shape, x->ndim, dim, &outer, &n, &inner);
        for (int64_t oi = 0; oi < outer; oi++)
            for (int64_t ii = 0; ii < inner; ii++) {
                int64_t k = oi * inner + ii, j = dpo_i32(idx)[k] - nd->p.index_base;
                if (j >= 0 && j < n) dpo_f32(out)[oi * n * inner + j * inner + ii] += dpo_f32(g)[k];
            }
    }
    dpo_tensor_release(idx);
    return out;
}

/* Grad of gather: scatter-add g at the gathered positions. */
static dpo_tensor *gather_grad(const dpo_node *nd, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *x = nd->inputs[0], *out = zeros_like(x, e), *idx;
    if (!out) return NULL;
    idx = dpo_tensor_contiguous(nd->p.saved, e);
    if (!idx) {
        dpo_tensor_release(out);
        return NULL;
    }
    {
        int64_t n = dpo_tensor_numel(idx);
        for (int64_t k = 0; k < n; k++) {
            int64_t rem = k, pos = 0, st = 1, j = dpo_i32(idx)[k] - nd->p.index_base;
            for (int d = idx->ndim - 1; d >= 0; d--) {
                int64_t coord = rem % idx->shape[d];
                rem /= idx->shape[d];
                pos += (d == nd->p.dim ? j : coord) * st;
                st *= x->shape[d];
            }
            dpo_f32(out)[pos] += dpo_f32(g)[k];
        }
    }
    dpo_tensor_release(idx);
    return out;
}

static dpo_tensor *index_select_grad(const dpo_node *nd, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *x = nd->inputs[0], *out = zeros_like(x, e), *idx;
    int64_t outer, n, inner, m;
    if (!out) return NULL;
    idx = dpo_tensor_contiguous(nd->p.saved, e);
    if (!idx) {
        dpo_tensor_release(out);
        return NULL;
    }
    split3(x->shape, x->ndim, nd->p.dim, &outer, &n, &inner);
    m = idx->shape[0];
    for (int64_t o = 0; o < outer; o++)
        for (int64_t k = 0; k < m; k++) {
            float *dst = dpo_f32(out) + (o * n + dpo_i32(idx)[k] - nd->p.index_base) * inner;
            const float *src = dpo_f32(g) + (o * m + k) * inner;
            for (int64_t i = 0; i < inner; i++) dst[i] += src[i];
        }
    dpo_tensor_release(idx);
    return out;
}

/* Grad of narrow / select: g placed into zeros at the view's position. */
static dpo_tensor *slice_grad(const dpo_node *nd, dpo_tensor *g, dpo_error *e) {
    dpo_tensor *x = nd->inputs[0], *out = zeros_like(x, e), *v;
    if (!out) return NULL;
    if (nd->op == DPO_OP_NARROW)
        v = dpo_tensor_narrow(out, nd->p.dim, nd->p.start, g->ndim ? g->shape[nd->p.dim] : 1, e);
    else
        v = dpo_tensor_select(out, nd->p.dim, nd->p.start, e);
    if (!v || dpo_tensor_copy(v, g, e) != DPO_OK) {
        dpo_tensor_release(v);
        dpo_tensor_release(out);
        return NULL;
    }
    dpo_tensor_release(v);
    return out;
}

/* Grads of a (possibly batched, possibly vector) matrix product. */
static dpo_status matmul_grad(const dpo_node *nd, dpo_tensor *g, dpo_tensor **ga, dpo_tensor **gb,
                              dpo_error *e) {
    dpo_tensor *a = nd->inputs[0], *b = nd->inputs[1];
    dpo_tensor va = *a, vb = *b, *g2 = NULL, *t = NULL, *r = NULL;
    int64_t shape[DPO_MAXDIM];
    int bd, na, nb;
    va.node = NULL, vb.node = NULL, va.grad = NULL, vb.grad = NULL;
    if (a->ndim == 1) {
        va.ndim = 2, va.shape[0] = 1, va.shape[1] = a->shape[0];
        va.stride[0] = a->shape[0], va.stride[1] = a->stride[0];
    }
    if (b->ndim == 1) {
        vb.ndim = 2, vb.shape[0] = b->shape[0], vb.shape[1] = 1;
        vb.stride[0] = b->stride[0], vb.stride[1] = 1;
    }
    na = va.ndim, nb = vb.ndim;
    bd = (na > nb ? na : nb) - 2;
    for (int i = 0; i < bd; i++) {
        int ia = na - 2 - bd + i, ib = nb - 2 - bd + i;
        int64_t sa = ia >= 0 ? va.shape[ia] : 1, sb = ib >= 0 ? vb.shape[ib] : 1;
        shape[i] = sa == 1 ? sb : sa;
    }
    shape[bd] = va.shape[na - 2], shape[bd + 1] = vb.shape[nb - 1];
    g2 = dpo_tensor_reshape(g, bd + 2, shape, e);
    if (!g2) return e ? e->status : DPO_ERR_SHAPE;
    *ga = *gb = NULL;
    if (a->requires_grad) {
        t = dpo_tensor_transpose(&vb, nb - 2, nb - 1, e);
        r = t ? dpo_matmul(g2, t, e) : NULL; /* [.., m, k] */
        dpo_tensor_release(t);
        t = r ? sum_to(r, &va, e) : NULL;
        dpo_tensor_release(r);
        *ga = t ? dpo_tensor_reshape(t, a->ndim, a->shape, e) : NULL;
        dpo_tensor_release(t);
        if (!*ga) goto fail;
    }
    if (b->requires_grad) {
        t = dpo_tensor_transpose(&va, na - 2, na - 1, e);
        r = t ? dpo_matmul(t, g2, e) : NULL; /* [.., k, n] */
        dpo_tensor_release(t);
        t = r ? sum_to(r, &vb, e) : NULL;
        dpo_tensor_release(r);
        *gb = t ? dpo_tensor_reshape(t, b->ndim, b->shape, e) : NULL;
        dpo_tensor_release(t);
        if (!*gb) goto fail;
    }
    dpo_tensor_release(g2);
    return DPO_OK;
fail:
    dpo_tensor_release(g2);
    dpo_tensor_release(*ga);
    *ga = NULL;
    return e ? e->status : DPO_ERR_MEM;
}

/*
** The gradients of node nd's inputs given g = dL/d(output). grads[i] gets a
** new reference, or NULL for inputs that need none. Returns a status.
*/
static dpo_status node_backward(const dpo_node *nd, dpo_tensor *g, dpo_tensor **grads,
                                dpo_error *e) {
    dpo_tensor *const *in = nd->inputs;
    dpo_tensor *a = in[0], *b = nd->ninputs > 1 ? in[1] : NULL, *t = NULL, *u = NULL;
#define WANT(i) (in[i]->requires_grad)
#define FAIL_IF(x)                                                                                 \
    do {                                                                                           \
        if (!(x)) goto fail;                                                                       \
    } while (0)
    switch (nd->op) {
    case DPO_OP_ADD:
    case DPO_OP_SUB:
        if (WANT(0)) FAIL_IF(grads[0] = sum_to(g, a, e));
        if (WANT(1)) {
            if (nd->op == DPO_OP_SUB) {
                FAIL_IF(t = dpo_unary(DPO_OP_NEG, g, e));
                FAIL_IF(grads[1] = sum_to(t, b, e));
            } else {
                FAIL_IF(grads[1] = sum_to(g, b, e));
            }
        }
        break;
    case DPO_OP_MUL:
        if (WANT(0)) FAIL_IF((t = binop(DPO_OP_MUL, g, b, e)) && (grads[0] = sum_to(t, a, e)));
        dpo_tensor_release(t), t = NULL;
        if (WANT(1)) FAIL_IF((t = binop(DPO_OP_MUL, g, a, e)) && (grads[1] = sum_to(t, b, e)));
        break;
    case DPO_OP_DIV:
        if (WANT(0)) FAIL_IF((t = binop(DPO_OP_DIV, g, b, e)) && (grads[0] = sum_to(t, a, e)));
        dpo_tensor_release(t), t = NULL;
        if (WANT(1)) { /* -g * y / b */
            FAIL_IF(u = binop(DPO_OP_MUL, g, nd->output, e));
            FAIL_IF(t = binop(DPO_OP_DIV, u, b, e));
            dpo_tensor_release(u);
            FAIL_IF(u = dpo_unary(DPO_OP_NEG, t, e));
            FAIL_IF(grads[1] = sum_to(u, b, e));
        }
        break;
    case DPO_OP_POW:
        if (WANT(0)) { /* g * b * a^(b-1) */
            dpo_tensor *one = dpo_tensor_scalar(DPO_F32, 1, e);
            FAIL_IF(one);
            t = binop(DPO_OP_SUB, b, one, e);
            dpo_tensor_release(one);
            FAIL_IF(t);
            FAIL_IF(u = binop(DPO_OP_POW, a, t, e));
            dpo_tensor_release(t);
            FAIL_IF(t = binop(DPO_OP_MUL, u, b, e));
            dpo_tensor_release(u);
            FAIL_IF(u = binop(DPO_OP_MUL, t, g, e));
            FAIL_IF(grads[0] = sum_to(u, a, e));
            dpo_tensor_release(t), dpo_tensor_release(u);
            t = u = NULL;
        }
        if (WANT(1)) { /* g * y * log(a) */
            FAIL_IF(t = dpo_unary(DPO_OP_LOG, a, e));
            FAIL_IF(u = binop(DPO_OP_MUL, t, nd->output, e));
            dpo_tensor_release(t);
            FAIL_IF(t = binop(DPO_OP_MUL, u, g, e));
            FAIL_IF(grads[1] = sum_to(t, b, e));
        }
        break;
    case DPO_OP_MAXIMUM:
    case DPO_OP_MINIMUM: {
        dpo_tensor *zero = dpo_tensor_scalar(DPO_F32, 0, e);
        FAIL_IF(zero);
        t = binop(nd->op == DPO_OP_MAXIMUM ? DPO_OP_GE : DPO_OP_LE, a, b, e); /* ties go to a */
        if (t && WANT(0)) {
            u = dpo_where(t, g, zero, e);
            grads[0] = u ? sum_to(u, a, e) : NULL;
            dpo_tensor_release(u), u = NULL;
        }
        if (t && WANT(1)) {
            u = dpo_where(t, zero, g, e);
            grads[1] = u ? sum_to(u, b, e) : NULL;
        }
        dpo_tensor_release(zero);
        FAIL_IF(t && (!WANT(0) || grads[0]) && (!WANT(1) || grads[1]));
        break;
    }
    case DPO_OP_NEG:
    case DPO_OP_EXP:
    case DPO_OP_LOG:
    case DPO_OP_SQRT:
    case DPO_OP_ABS:
    case DPO_OP_SIGMOID:
    case DPO_OP_TANH:
    case DPO_OP_RELU:
    case DPO_OP_GELU:
    case DPO_OP_LOGSIGMOID:
    case DPO_OP_SOFTPLUS:
    case DPO_OP_SILU:
    case DPO_OP_RSQRT:
    case DPO_OP_CLAMP:
        FAIL_IF(grads[0] = unary_grad(nd, g, e));
        break;
    case DPO_OP_MATMUL:
        if (matmul_grad(nd, g, &grads[0], &grads[1], e) != DPO_OK) goto fail;
        break;
    case DPO_OP_SUM:
    case DPO_OP_MEAN:
    case DPO_OP_MAX:
    case DPO_OP_MIN:
        FAIL_IF(grads[0] = reduce_grad(nd, g, e));
        break;
    case DPO_OP_SOFTMAX:
    case DPO_OP_LOG_SOFTMAX:
    case DPO_OP_LOGSUMEXP:
        FAIL_IF(grads[0] = softmax_grad(nd, g, e));
        break;
    case DPO_OP_GATHER:
        FAIL_IF(grads[0] = gather_grad(nd, g, e));
        break;
    case DPO_OP_INDEX_SELECT:
        FAIL_IF(grads[0] = index_select_grad(nd, g, e));
        break;
    case DPO_OP_CAT: {
        int64_t off = 0;
        for (int i = 0; i < nd->ninputs; i++) {
            int64_t len = in[i]->shape[nd->p.dim];
            if (WANT(i)) {
                FAIL_IF(t = dpo_tensor_narrow(g, nd->p.dim, off, len, e));
                grads[i] = dpo_tensor_contiguous(t, e);
                dpo_tensor_release(t), t = NULL;
                FAIL_IF(grads[i]);
            }
            off += len;
        }
        break;
    }
    case DPO_OP_STACK:
        for (int i = 0; i < nd->ninputs; i++)
            if (WANT(i)) {
                FAIL_IF(t = dpo_tensor_select(g, nd->p.dim, i, e));
                grads[i] = dpo_tensor_contiguous(t, e);
                dpo_tensor_release(t), t = NULL;
                FAIL_IF(grads[i]);
            }
        break;
    case DPO_OP_NARROW:
    case DPO_OP_SELECT:
        FAIL_IF(grads[0] = slice_grad(nd, g, e));
        break;
    case DPO_OP_RESHAPE:
        FAIL_IF(grads[0] = dpo_tensor_reshape(g, a->ndim, a->shape, e));
        break;
    case DPO_OP_TRANSPOSE:
        FAIL_IF(t = dpo_tensor_transpose(g, nd->p.dim, nd->p.dim2, e));
        FAIL_IF(grads[0] = dpo_tensor_contiguous(t, e));
        break;
    case DPO_OP_COPY:
        FAIL_IF(grads[0] = sum_to(g, a, e));
        break;
    case DPO_OP_WHERE: {
        dpo_tensor *zero = dpo_tensor_scalar(DPO_F32, 0, e);
        FAIL_IF(zero);
        if (WANT(0)) {
            t = dpo_where(nd->p.saved, g, zero, e);
            grads[0] = t ? sum_to(t, a, e) : NULL;
            dpo_tensor_release(t), t = NULL;
        }
        if (WANT(1)) {
            t = dpo_where(nd->p.saved, zero, g, e);
            grads[1] = t ? sum_to(t, b, e) : NULL;
        }
        dpo_tensor_release(zero);
        FAIL_IF((!WANT(0) || grads[0]) && (!WANT(1) || grads[1]));
        break;
    }
    default:
        dpo_fail(e, DPO_ERR_ARG, 0, "no backward for '%s'", dpo_op_name(nd->op));
        return DPO_ERR_ARG;
    }
    dpo_tensor_release(t);
    dpo_tensor_release(u);
    return DPO_OK;
fail:
    dpo_tensor_release(t);
    dpo_tensor_release(u);
    for (int i = 0; i < nd->ninputs; i++) {
        dpo_tensor_release(grads[i]);
        grads[i] = NULL;
    }
    if (e && e->status == DPO_OK)
        dpo_fail(e, DPO_ERR_MEM, 0, "backward of '%s' failed", dpo_op_name(nd->op));
    return e ? e->status : DPO_ERR_MEM;
#undef WANT
#undef FAIL_IF
}

/* ---- the walk -------------------------------------------------------------------- */

typedef struct {
    dpo_node **v;
    size_t n, cap;
} nodevec;

static int nv_push(nodevec *s, dpo_node *x) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        dpo_node **nv = (dpo_node **)realloc(s->v, nc * sizeof *nv);
        if (!nv) return 0;
        s->v = nv, s->cap = nc;
    }
    s->v[s->n++] = x;
    return 1;
}

/*
** Nodes reachable from root in topological order (inputs before users),
** by an iterative depth-first search; marks are reset by the caller.
*/
static int topo_order(dpo_node *root, nodevec *order) {
    nodevec stack = {0}, child = {0};
    int ok = 1;
    /* stack holds nodes; child[i] counts how many inputs of stack[i] were visited */
    if (!nv_push(&stack, root) || !nv_push(&child, NULL)) ok = 0;
    root->mark = 1;
    while (ok && stack.n > 0) {
        dpo_node *top = stack.v[stack.n - 1];
        size_t k = (size_t)(uintptr_t)child.v[child.n - 1];
        if (k < (size_t)top->ninputs) {
            dpo_node *c = top->inputs[k]->node;
            child.v[child.n - 1] = (dpo_node *)(uintptr_t)(k + 1);
            if (c && !c->mark && top->inputs[k]->requires_grad) {
                c->mark = 1;
                if (!nv_push(&stack, c) || !nv_push(&child, NULL)) ok = 0;
            }
        } else {
            if (!nv_push(order, top)) ok = 0;
            stack.n--, child.n--;
        }
    }
    free(stack.v);
    free(child.v);
    return ok;
}

dpo_status dpo_backward(dpo_tensor *root, const dpo_tensor *grad, dpo_error *e) {
    nodevec order = {0};
    dpo_tensor *seed;
    dpo_status st = DPO_OK;
    if (!root->requires_grad) {
        dpo_fail(e, DPO_ERR_ARG, 1, "tensor does not require grad and has no grad_fn");
        return DPO_ERR_ARG;
    }
    if (grad) {
        char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
        if (!dpo_tensor_same_shape(grad, root)) {
            dpo_fail(e, DPO_ERR_SHAPE, 2, "gradient of size %s for a tensor of size %s",
                     dpo_tensor_shape_str(grad, a, sizeof a),
                     dpo_tensor_shape_str(root, b, sizeof b));
            return DPO_ERR_SHAPE;
        }
        seed = dense((dpo_tensor *)grad, e);
    } else {
        char a[DPO_SHAPELEN];
        if (dpo_tensor_numel(root) != 1) {
            dpo_fail(e, DPO_ERR_SHAPE, 1,
                     "backward() without a gradient needs a one-element tensor (got size %s)",
                     dpo_tensor_shape_str(root, a, sizeof a));
            return DPO_ERR_SHAPE;
        }
        seed = dpo_tensor_new(DPO_F32, root->ndim, root->shape, e);
        if (seed) dpo_f32(seed)[0] = 1;
    }
    if (!seed) return e ? e->status : DPO_ERR_MEM;
    if (!root->node) { /* a leaf */
        st = accumulate(&root->grad, seed, e);
        dpo_tensor_release(seed);
        return st;
    }
    if (root->node->freed) {
        dpo_tensor_release(seed);
        dpo_fail(e, DPO_ERR_ARG, 1,
                 "the graph was freed by an earlier backward(); run the forward pass again");
        return DPO_ERR_ARG;
    }
    if (!topo_order(root->node, &order)) {
        for (size_t i = 0; i < order.n; i++) order.v[i]->mark = 0;
        free(order.v);
        dpo_tensor_release(seed);
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory in backward");
        return DPO_ERR_MEM;
    }
    root->node->gout = seed;
    for (size_t i = order.n; i-- > 0 && st == DPO_OK;) {
        dpo_node *nd = order.v[i];
        dpo_tensor *grads[256] = {0}, **gs = grads, *g;
        if (nd->freed) {
            dpo_fail(e, DPO_ERR_ARG, 1,
                     "part of the graph was freed by an earlier backward(); run the forward "
                     "pass again");
            st = DPO_ERR_ARG;
            break;
        }
        if (!nd->gout) continue; /* no gradient flows here */
        if (nd->ninputs > 256) gs = (dpo_tensor **)calloc((size_t)nd->ninputs, sizeof *gs);
        g = gs ? dense(nd->gout, e) : NULL;
        if (!g) {
            if (gs != grads) free(gs);
            st = e ? e->status : DPO_ERR_MEM;
            break;
        }
        if (nd->custom.backward)
            st = nd->custom.backward(nd->custom.ctx, g, e);
        else
            st = node_backward(nd, g, gs, e);
        dpo_tensor_release(g);
        for (int k = 0; k < nd->ninputs; k++) {
            dpo_tensor *x = nd->inputs[k];
            if (st == DPO_OK && gs[k]) {
                if (x->node)
                    st = accumulate(&x->node->gout, gs[k], e);
                else if (x->requires_grad)
                    st = accumulate(&x->grad, gs[k], e);
            }
            dpo_tensor_release(gs[k]);
        }
        if (gs != grads) free(gs);
        dpo_tensor_release(nd->gout);
        nd->gout = NULL;
    }
    /* the graph has been used: free what it held */
    for (size_t i = 0; i < order.n; i++) {
        dpo_node *nd = order.v[i];
        nd->mark = 0;
        node_clear(nd);
        nd->freed = 1;
    }
    free(order.v);
    return st;
}
