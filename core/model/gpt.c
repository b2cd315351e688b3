/*
** gpt.c: the GPT-2 model: parameters, fused forward and backward kernels,
** sequence log-probabilities as one autograd node, generation with a KV cache.
**
** Kernels follow llm.c: <layer>_forward / <layer>_backward pairs, outputs
** first, sizes last, backward accumulating into its gradient buffers. Every
** matrix product goes through cblas_sgemm; the rest is threaded with OpenMP
** (BLAS called inside a parallel region runs single-threaded). Reductions over
** tokens (bias and LayerNorm parameter gradients, embedding scatter) are split
** over columns so each sum is done in one order: results do not depend on
** scheduling, only on the thread count BLAS uses.
**
** Adapters (lora.h) ride inside the same kernels: after each of the four
** linear products of a block its adapter adds s * B (A x), and after each
** input gradient its backward; with adapters the base is frozen, and no
** base weight gradient is computed (no dW, db, LayerNorm or embedding sums),
** so the backward is the input-gradient chain plus rank-r products, and the
** head's input gradient is prepared in the forward (head.h).
**
** Shapes: Nt tokens in the packed batch, C = n_embd, NH heads of HS = C / NH,
** V = vocab size, S scored positions. Per row n of the batch, Tn tokens of
** its prefix are processed (up to the row's last scored token).
*/
#include "model/gpt.h"
#include "model/head.h"
#include "tensor/autograd.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows of the vocabulary projection at a time: as many as fit in this many
   floats (16M, 64 MB), at least 64; big chunks keep the products efficient. */
#define LOGIT_BUDGET ((size_t)16 << 20)
#define PER_LAYER    12 /* parameter tensors in a block */
#define MIN_SHARE    16 /* shortest shared prefix worth packing once */
#define ATT_BLOCK    64 /* query rows per block of causal attention */

/* Parameter tensors of a block, in Hugging Face order. */
enum {
    P_LN1_W,
    P_LN1_B,
    P_QKV_W,
    P_QKV_B,
    P_PROJ_W,
    P_PROJ_B,
    P_LN2_W,
    P_LN2_B,
    P_FC_W,
    P_FC_B,
    P_FCP_W,
    P_FCP_B
};

/* The linear modules of a block that can carry adapters, in Hugging Face order. */
enum { LIN_QKV, LIN_PROJ, LIN_FC, LIN_FCP, LIN_COUNT };
static const char *const lin_names[LIN_COUNT] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                 "mlp.c_proj"};
static const int lin_param[LIN_COUNT] = {P_QKV_W, P_PROJ_W, P_FC_W, P_FCP_W};

/* Activations of one block, for Nt tokens (pointers into the arena). */
typedef struct {
    float *ln1;               /* [Nt, C] */
    float *ln1_mean;          /* [Nt] */
    float *ln1_rstd;          /* [Nt] */
    float *qkv;               /* [Nt, 3C] */
    float *att;               /* [sum_n NH * Tn * Tn] softmax probabilities */
    float *atty;              /* [Nt, C] attention output before the projection */
    float *res2;              /* [Nt, C] residual after attention */
    float *ln2;               /* [Nt, C] */
    float *ln2_mean;          /* [Nt] */
    float *ln2_rstd;          /* [Nt] */
    float *fch;               /* [Nt, 4C] */
    float *fch_gelu;          /* [Nt, 4C] one buffer for all blocks: recomputed in backward */
    float *res3;              /* [Nt, C] residual after the MLP: the block's output */
    unsigned char *mask;      /* dropout masks, or NULL: [Nt*C] attn out, [Nt*C] mlp out */
    uint64_t att_seed;        /* seed of this block's attention-dropout masks */
    float *lora_u[LIN_COUNT]; /* [r, Nt] each: (A x)^T of the adapters, or NULL */
} block_acts;

struct dpo_gpt {
    int refcount;
    dpo_gpt_config cfg;
    int ntensors;
    dpo_gpt_param *info;
    int chunk;     /* rows of logits computed at a time */
    size_t total;  /* floats in the parameter arena */
    float *params; /* [total] */
    float *grads;  /* [total], NULL when frozen or when adapters train instead */
    int frozen;
    int training;
    dpo_rng drop_rng;
    dpo_lora *lora; /* adapters, or NULL */
    int *lora_site; /* [L * LIN_COUNT] the adapter site of each linear module, or -1 */

    /* activation arena, reused; sized for the largest batch seen */
    float *acts;
    size_t acts_cap; /* floats */
    int keep_layers; /* how many blocks the last forward kept (L, or 1 without record) */
    /* the last forward: its packing, for backward */
    uint64_t run; /* increments with every forward that records */
    int N, Nt, S;
    int *row_start, *row_len; /* [N] first packed row and number of own tokens of each row */
    int *row_pre, *row_par;   /* [N] positions shared with a parent row, and that row */
    int *att_off;             /* [N] offset of each row's attention block */
    int *row_full;            /* [N] positions each row processes (pre + len) */
    int *plan;                /* [3N] scratch for planning the packing */
    size_t plan_cap;
    size_t att_size;
    int *tok, *pos; /* [Nt] token id and position of each packed token */
    int *sc_row, *sc_tok,
        *sc_seq; /* [S] packed row, target id, batch row of each scored position */
    size_t ints_cap;
    float *ones; /* [max(Nt, S)] for bias gradients through sgemv */
    block_acts *blocks;
    float *encoded, *lnf, *lnf_mean, *lnf_rstd, *hs, *lse, *logits;
    unsigned char *emb_mask;
    int lora_on;    /* the last forward ran the adapters */
    int lora_drop;  /* ... with dropout on their inputs */
    float *lora_xd; /* [Nt, 4C] dropped adapter input, or its gradient */
    float *lora_du; /* [r, Nt] */
    int head_unit;  /* dhs holds the head's input gradients but for dlogps (head.h) */
    /* backward scratch */
    float *dres, *dln, *dbig, *dqkv, *datty, *dhs, *datt_scratch;
    size_t scratch_per_thread;
};

/* ---- parameters -------------------------------------------------------------------- */

static void add_param(dpo_gpt *m, const char *name, int ndim, int64_t d0, int64_t d1) {
    dpo_gpt_param *p = &m->info[m->ntensors++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    p->offset = m->total;
    m->total += p->numel;
}

static int check_config(const dpo_gpt_config *c, dpo_error *e) {
    if (c->vocab_size < 1 || c->vocab_size > 10000000)
        return dpo_fail(e, DPO_ERR_ARG, 1, "vocab_size must be in 1..10000000 (got %d)",
                        c->vocab_size),
               -1;
    if (c->n_ctx < 1 || c->n_ctx > 1048576)
        return dpo_fail(e, DPO_ERR_ARG, 1, "n_ctx must be in 1..1048576 (got %d)", c->n_ctx), -1;
    if (c->n_layer < 1 || c->n_layer > 1000)
        return dpo_fail(e, DPO_ERR_ARG, 1, "n_layer must be in 1..1000 (got %d)", c->n_layer), -1;
    if (c->n_embd < 1 || c->n_embd > 65536)
        return dpo_fail(e, DPO_ERR_ARG, 1, "n_embd must be in 1..65536 (got %d)", c->n_embd), -1;
    if (c->n_head < 1 || c->n_embd % c->n_head != 0)
        return dpo_fail(e, DPO_ERR_ARG, 1, "n_head (%d) must divide n_embd (%d)", c->n_head,
                        c->n_embd),
               -1;
    if (!(c->dropout >= 0 && c->dropout < 1))
        return dpo_fail(e, DPO_ERR_ARG, 1, "dropout must be in [0, 1) (got %g)",
                        (double)c->dropout),
               -1;
    if (!(c->eps > 0)) return dpo_fail(e, DPO_ERR_ARG, 1, "layer_norm_epsilon must be > 0"), -1;
    {
        double n = (double)c->vocab_size * c->n_embd + (double)c->n_ctx * c->n_embd +
                   (double)c->n_layer * 12.0 * c->n_embd * c->n_embd;
        if (n > 4e9) return dpo_fail(e, DPO_ERR_ARG, 1, "model too large (%.3g parameters)", n), -1;
    }
    return 0;
}

/* The shell of a model: the parameter table, arenas not yet filled. */
static dpo_gpt *gpt_shell(const dpo_gpt_config *cfg, int with_grads, dpo_error *e) {
    dpo_gpt *m;
    int L = cfg->n_layer;
    int64_t C = cfg->n_embd;
    char name[64];
    if (check_config(cfg, e)) return NULL;
    m = (dpo_gpt *)calloc(1, sizeof *m);
    if (m) m->info = (dpo_gpt_param *)calloc((size_t)(4 + PER_LAYER * L), sizeof *m->info);
    if (m) m->blocks = (block_acts *)calloc((size_t)L, sizeof *m->blocks);
    if (!m || !m->info || !m->blocks) goto oom;
    m->refcount = 1;
    m->cfg = *cfg;
    add_param(m, "transformer.wte.weight", 2, cfg->vocab_size, C);
    add_param(m, "transformer.wpe.weight", 2, cfg->n_ctx, C);
    for (int l = 0; l < L; l++) {
#define P(suffix, nd, d0, d1)                                                                      \
    snprintf(name, sizeof name, "transformer.h.%d.%s", l, suffix);                                 \
    add_param(m, name, nd, d0, d1)
        P("ln_1.weight", 1, C, 0);
        P("ln_1.bias", 1, C, 0);
        P("attn.c_attn.weight", 2, C, 3 * C);
        P("attn.c_attn.bias", 1, 3 * C, 0);
        P("attn.c_proj.weight", 2, C, C);
        P("attn.c_proj.bias", 1, C, 0);
        P("ln_2.weight", 1, C, 0);
        P("ln_2.bias", 1, C, 0);
        P("mlp.c_fc.weight", 2, C, 4 * C);
        P("mlp.c_fc.bias", 1, 4 * C, 0);
        P("mlp.c_proj.weight", 2, 4 * C, C);
        P("mlp.c_proj.bias", 1, C, 0);
#undef P
    }
    add_param(m, "transformer.ln_f.weight", 1, C, 0);
    add_param(m, "transformer.ln_f.bias", 1, C, 0);
    m->params = (float *)dpo_alloc(m->total * sizeof(float));
    if (!m->params) goto oom;
    if (with_grads) {
        m->grads = (float *)dpo_alloc(m->total * sizeof(float));
        if (!m->grads) goto oom;
        memset(m->grads, 0, m->total * sizeof(float));
    } else {
        m->frozen = 1;
    }
    dpo_rng_seed(&m->drop_rng, 0);
    return m;
oom:
    if (m) {
        dpo_free(m->params);
        free(m->info);
        free(m->blocks);
        free(m);
    }
    return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory allocating the model");
}

dpo_gpt *dpo_gpt_new(const dpo_gpt_config *cfg, uint64_t seed, dpo_error *e) {
    dpo_gpt *m = gpt_shell(cfg, 1, e);
    dpo_rng r;
    if (!m) return NULL;
    dpo_rng_seed(&r, seed);
    dpo_rng_seed(&m->drop_rng, seed ^ 0x9e3779b97f4a7c15ULL);
    /* GPT-2: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)),
       biases 0, LayerNorm weights 1 */
    for (int i = 0; i < m->ntensors; i++) {
        const dpo_gpt_param *p = &m->info[i];
        float *w = m->params + p->offset;
        size_t len = strlen(p->name);
        int is_ln = strstr(p->name, "ln_") != NULL;
        int is_bias = len > 5 && strcmp(p->name + len - 5, ".bias") == 0;
        if (is_ln && !is_bias) {
            for (size_t k = 0; k < p->numel; k++) w[k] = 1.0f;
        } else if (is_bias) {
            memset(w, 0, p->numel * sizeof(float));
        } else {
            double std = 0.02;
            if (strstr(p->name, "c_proj.weight")) std = 0.02 / sqrt(2.0 * cfg->n_layer);
            for (size_t k = 0; k < p->numel; k++) w[k] = (float)(std * dpo_rng_normal(&r));
        }
    }
    return m;
}

dpo_gpt *dpo_gpt_clone(const dpo_gpt *src, int freeze, dpo_error *e) {
    dpo_gpt *m = gpt_shell(&src->cfg, !freeze && !src->lora, e);
    if (!m) return NULL;
    m->frozen = freeze != 0;
    if (src->lora) {
        size_t n = (size_t)src->cfg.n_layer * LIN_COUNT;
        m->lora_site = (int *)malloc(n * sizeof(int));
        m->lora = m->lora_site ? dpo_lora_clone(src->lora, !freeze, e) : NULL;
        if (!m->lora) {
            if (!m->lora_site) dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
            dpo_gpt_release(m);
            return NULL;
        }
        memcpy(m->lora_site, src->lora_site, n * sizeof(int));
    }
    memcpy(m->params, src->params, m->total * sizeof(float));
    m->training = freeze ? 0 : src->training;
    m->drop_rng = src->drop_rng;
    return m;
}

void dpo_gpt_retain(dpo_gpt *m) {
    if (m) m->refcount++;
}

static void free_acts(dpo_gpt *m) {
    dpo_free(m->acts);
    m->acts = NULL;
    m->acts_cap = 0;
    free(m->row_start);
    m->row_start = NULL;
    m->ints_cap = 0;
    free(m->plan);
    m->plan = NULL;
    m->plan_cap = 0;
}

void dpo_gpt_release(dpo_gpt *m) {
    if (!m || --m->refcount > 0) return;
    free_acts(m);
    dpo_free(m->params);
    dpo_free(m->grads);
    dpo_lora_release(m->lora);
    free(m->lora_site);
    free(m->info);
    free(m->blocks);
    free(m);
}

const dpo_gpt_config *dpo_gpt_cfg(const dpo_gpt *m) {
    return &m->cfg;
}
int dpo_gpt_num_tensors(const dpo_gpt *m) {
    return m->ntensors;
}
const dpo_gpt_param *dpo_gpt_param_info(const dpo_gpt *m, int i) {
    return (i >= 0 && i < m->ntensors) ? &m->info[i] : NULL;
}
size_t dpo_gpt_num_params(const dpo_gpt *m) {
    return m->total;
}
float *dpo_gpt_params(dpo_gpt *m) {
    return m->params;
}
int dpo_gpt_frozen(const dpo_gpt *m) {
    return m->frozen;
}
void dpo_gpt_set_training(dpo_gpt *m, int on) {
    m->training = on != 0;
}
int dpo_gpt_training(const dpo_gpt *m) {
    return m->training;
}
void dpo_gpt_seed_dropout(dpo_gpt *m, uint64_t seed) {
    dpo_rng_seed(&m->drop_rng, seed);
}
dpo_rng *dpo_gpt_dropout_rng(dpo_gpt *m) {
    return &m->drop_rng;
}

void dpo_gpt_freeze(dpo_gpt *m) {
    m->frozen = 1;
    m->run++; /* a pending backward can no longer run */
}

int dpo_gpt_base_trainable(const dpo_gpt *m) {
    return m->grads != NULL;
}

dpo_lora *dpo_gpt_lora(dpo_gpt *m) {
    return m->lora;
}

/* The weight [in, out] of linear module k of block l, its name and sizes. */
static const dpo_gpt_param *linear_param(const dpo_gpt *m, int l, int k) {
    return &m->info[2 + PER_LAYER * l + lin_param[k]];
}

dpo_status dpo_gpt_lora_apply(dpo_gpt *m, const dpo_lora_config *c, int n,
                              const char *const *targets, dpo_error *e) {
    int L = m->cfg.n_layer, nlin = L * LIN_COUNT, *dims, *site;
    const char **names;
    char(*full)[96];
    if (m->lora) {
        dpo_fail(e, DPO_ERR_ARG, 1, "the model has adapters already (merge them first)");
        return DPO_ERR_ARG;
    }
    names = (const char **)malloc((size_t)nlin * sizeof *names);
    dims = (int *)malloc(2 * (size_t)nlin * sizeof *dims);
    site = (int *)malloc((size_t)nlin * sizeof *site);
    full = (char(*)[96])malloc((size_t)nlin * sizeof *full);
    if (!names || !dims || !site || !full) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        goto fail;
    }
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            int j = l * LIN_COUNT + k;
            snprintf(full[j], sizeof full[0], "transformer.h.%d.%s", l, lin_names[k]);
            names[j] = full[j];
            dims[j] = (int)linear_param(m, l, k)->shape[0];        /* in */
            dims[nlin + j] = (int)linear_param(m, l, k)->shape[1]; /* out */
        }
    m->lora =
        dpo_lora_on_modules(c, nlin, names, dims, dims + nlin, n, targets,
                            "GPT-2 has c_attn, c_proj, c_fc in each block", !m->frozen, site, e);
    if (!m->lora) goto fail;
    m->lora_site = site;
    dpo_free(m->grads); /* the base is frozen: adapters train instead */
    m->grads = NULL;
    m->run++; /* a pending backward would write base gradients */
    free(names);
    free(dims);
    free(full);
    return DPO_OK;
fail:
    free(names);
    free(dims);
    free(site);
    free(full);
    return e ? e->status : DPO_ERR_MEM;
}

dpo_status dpo_gpt_lora_merge(dpo_gpt *m, dpo_error *e) {
    float *g = NULL;
    if (!m->lora) {
        dpo_fail(e, DPO_ERR_ARG, 1, "the model has no adapters to merge");
        return DPO_ERR_ARG;
    }
    if (!m->frozen) {
        g = (float *)dpo_alloc(m->total * sizeof(float));
        if (!g) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for the base gradients");
            return DPO_ERR_MEM;
        }
        memset(g, 0, m->total * sizeof(float));
    }
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            int s = m->lora_site[l * LIN_COUNT + k];
            if (s >= 0) dpo_lora_merge(m->lora, s, m->params + linear_param(m, l, k)->offset, 1);
        }
    dpo_lora_release(m->lora);
    m->lora = NULL;
    free(m->lora_site);
    m->lora_site = NULL;
    m->grads = g;
    m->run++;
    return DPO_OK;
}

static void release_model(void *ctx) {
    dpo_gpt_release((dpo_gpt *)ctx);
}

dpo_tensor *dpo_gpt_param_tensor(dpo_gpt *m, int i, int grad, dpo_error *e) {
    const dpo_gpt_param *p = dpo_gpt_param_info(m, i);
    float *base = grad ? m->grads : m->params;
    dpo_tensor *t;
    if (!p) return dpo_fail(e, DPO_ERR_RANGE, 2, "no parameter %d", i + 1);
    if (!base) return NULL;
    dpo_gpt_retain(m);
    t = dpo_tensor_wrap(DPO_F32, p->ndim, p->shape, base + p->offset, release_model, m, e);
    if (!t) dpo_gpt_release(m);
    return t;
}

/* ---- kernels ----------------------------------------------------------------------- */

/* out = layernorm(inp) * w + b over rows of C; keeps mean and 1/std per row */
static void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int Nt, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        double s = 0, v = 0;
        float mu, rs;
        for (int i = 0; i < C; i++) s += x[i];
        mu = (float)(s / C);
        for (int i = 0; i < C; i++) {
            float d = x[i] - mu;
            v += (double)d * d;
        }
        rs = (float)(1.0 / sqrt(v / C + eps));
        for (int i = 0; i < C; i++) o[i] = (x[i] - mu) * rs * w[i] + b[i];
        if (mean) mean[r] = mu, rstd[r] = rs;
    }
}

/* dinp += d layernorm; dw, db += over rows (summed per column, in row order), unless NULL */
static void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int Nt, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *x = inp + (size_t)r * C, *g = dout + (size_t)r * C;
        float *dx = dinp + (size_t)r * C;
        float mu = mean[r], rs = rstd[r];
        double a = 0, bsum = 0;
        float ma, mb;
        for (int i = 0; i < C; i++) {
            float n = (x[i] - mu) * rs, dn = g[i] * w[i];
            a += dn;
            bsum += (double)dn * n;
        }
        ma = (float)(a / C), mb = (float)(bsum / C);
        for (int i = 0; i < C; i++) {
            float n = (x[i] - mu) * rs, dn = g[i] * w[i];
            dx[i] += (dn - ma - n * mb) * rs;
        }
    }
    if (!dw) return;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++) {
        double sw = 0, sb = 0;
        for (int r = 0; r < Nt; r++) {
            float g = dout[(size_t)r * C + i];
            sw += (double)g * (inp[(size_t)r * C + i] - mean[r]) * rstd[r];
            sb += g;
        }
        dw[i] += (float)sw;
        db[i] += (float)sb;
    }
}

/* out [Nt, OC] = inp [Nt, C] @ w [C, OC] + b [OC] (Conv1D layout) */
static void matmul_forward(float *out, const float *inp, const float *w, const float *b, int Nt,
                           int C, int OC) {
    if (Nt == 0) return;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) memcpy(out + (size_t)r * OC, b, sizeof(float) * (size_t)OC);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Nt, OC, C, 1.0f, inp, C, w, OC, 1.0f,
                out, OC);
}

/* dinp = dout @ w^T (overwritten); dw += inp^T @ dout; db += column sums of dout
   (dw, db NULL: a frozen weight, no gradient; dinp NULL: not needed) */
static void matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *ones, int Nt, int C, int OC) {
    if (Nt == 0) return;
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Nt, C, OC, 1.0f, dout, OC, w, OC, 0.0f,
                    dinp, C);
    if (!dw) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, Nt, 1.0f, inp, C, dout, OC, 1.0f,
                dw, OC);
    cblas_sgemv(CblasRowMajor, CblasTrans, Nt, OC, 1.0f, dout, OC, ones, 1, 1.0f, db, 1);
}

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */

/*
** expf for loops that vectorize: with GCC and glibc, the same expf declared
** with its SIMD variants, so `omp simd` loops call libmvec's vector expf
** (the same results within 1 ulp, 2-4 times the speed). Elsewhere plain expf.
*/
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
float vexpf(float) __asm__("expf") __attribute__((simd("notinbranch")));
#else
#define vexpf expf
#endif

/*
** tanh through expf: tanh(u) = 1 - 2 / (1 + e^(2u)), within 3e-7 of tanhf
** and several times faster (glibc's tanhf goes through expm1f); exact at
** the ends (+-1 for large |u|).
*/
static inline float fast_tanh(float u) {
    return 1.0f - 2.0f / (1.0f + vexpf(2.0f * u));
}

static void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + fast_tanh(GELU_C * (x + 0.044715f * x * x * x)));
    }
}

/* dx = dout * gelu'(x), in place over dout */
static void gelu_backward(float *dinout, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], u = GELU_C * (x + 0.044715f * x * x * x), t = fast_tanh(u);
        float d =
            0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 0.134145f * x * x);
        dinout[i] *= d;
    }
}

/*
** How the rows of a batch lie in the packed token dimension. Row n's own
** tokens are packed rows start[n] .. start[n] + len[n] - 1, holding its
** positions pre[n] .. pre[n] + len[n] - 1; its first pre[n] positions are the
** same tokens as those of row par[n] (a row with pre == 0, the parent of at
** most one child), whose packed rows they share. Its attention probabilities
** are [len, pre + len] per head, at att_off[n] + h * len * (pre + len).
*/
typedef struct {
    int N;
    const int *start, *len, *pre, *par, *att_off;
    float drop;     /* dropout probability on the attention weights, 0: none */
    uint64_t seed;  /* this block's dropout seed */
    float *scratch; /* [Tmax, Tmax] x 2 per thread when drop > 0 */
    size_t scratch_per_thread;
} packing;

/*
** The attention-dropout factor of element idx of a block's probabilities:
** 0 or 1 / (1 - p), from a hash of (seed, idx), so the backward regenerates
** the forward's mask without storing it and threads need no shared generator.
*/
static inline float att_keep(uint64_t seed, size_t idx, float p) {
    uint64_t z = seed + (uint64_t)(idx + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 >= p ? 1.0f / (1.0f - p) : 0.0f;
}

/* Pd = P with dropout applied, into out [T, W] (visible columns; zeros beyond). */
static void att_dropped(float *out, const float *P, int T, int K, int W, size_t base,
                        const packing *pk) {
    for (int t = 0; t < T; t++) {
        int last = K + t;
        for (int j = 0; j <= last; j++) {
            size_t i = (size_t)t * W + j;
            out[i] = P[i] * att_keep(pk->seed, base + i, pk->drop);
        }
        for (int j = last + 1; j < W; j++) out[(size_t)t * W + j] = 0.0f;
    }
}

/*
** Causal attention per row n and head h over the packed qkv [Nt, 3C]:
** P = softmax(Q K^T / sqrt(HS)) over the prefix (the parent's keys first, then
** the row's own, causally), y = P V into atty [Nt, C].
*/
static void attention_forward(float *atty, float *att, const float *qkv, const packing *pk, int C,
                              int NH) {
    int HS = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(dynamic)
    for (int k = 0; k < pk->N * NH; k++) {
        int n = k / NH, h = k % NH, T = pk->len[n], K = pk->pre[n], W = K + T;
        const float *q, *kk, *v, *kp = NULL, *vp = NULL;
        float *P, *y;
        if (T == 0) continue;
        q = qkv + (size_t)pk->start[n] * C3 + h * HS;
        kk = q + C;
        v = q + 2 * C;
        y = atty + (size_t)pk->start[n] * C + h * HS;
        P = att + pk->att_off[n] + (size_t)h * T * W;
        if (K > 0) {
            kp = qkv + (size_t)pk->start[pk->par[n]] * C3 + C + h * HS;
            vp = kp + C;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, K, HS, scale, q, C3, kp, C3,
                        0.0f, P, W);
        }
        /* own keys, causally: query rows [t0, t1) see own keys [0, t1) */
        for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
            int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, t1, HS, scale,
                        q + (size_t)t0 * C3, C3, kk, C3, 0.0f, P + (size_t)t0 * W + K, W);
        }
        for (int t = 0; t < T; t++) {
            float *row = P + (size_t)t * W, mx = -INFINITY;
            int last = K + t; /* columns 0..last are visible */
            double s = 0;
            float inv;
            for (int j = 0; j <= last; j++)
                if (row[j] > mx) mx = row[j];
#pragma omp simd reduction(+ : s)
            for (int j = 0; j <= last; j++) {
                row[j] = vexpf(row[j] - mx);
                s += row[j];
            }
            inv = (float)(1.0 / s);
            for (int j = 0; j <= last; j++) row[j] *= inv;
            for (int j = last + 1; j < W; j++) row[j] = 0.0f;
        }
        if (pk->drop > 0) { /* P stays as computed, for the backward; y uses dropped P */
            float *Pd = pk->scratch + (size_t)omp_get_thread_num() * pk->scratch_per_thread;
            att_dropped(Pd, P, T, K, W, (size_t)pk->att_off[n] + (size_t)h * T * W, pk);
            P = Pd;
        }
        if (K > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, K, 1.0f, P, W, vp, C3,
                        0.0f, y, C);
        for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
            int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, HS, t1, 1.0f,
                        P + (size_t)t0 * W + K, W, v, C3, K > 0 ? 1.0f : 0.0f, y + (size_t)t0 * C,
                        C);
        }
    }
}

/* The backward of one (row, head); dK and dV of a parent's rows accumulate. */
static void attention_backward_one(float *dqkv, const float *datty, const float *att,
                                   const float *qkv, const packing *pk, int n, int h, int C, int NH,
                                   float *dP, float *Pd_scratch) {
    int HS = C / NH, C3 = 3 * C, T = pk->len[n], K = pk->pre[n], W = K + T;
    float scale = 1.0f / sqrtf((float)HS);
    size_t base = (size_t)pk->start[n] * C3 + (size_t)h * HS;
    const float *q = qkv + base, *kk = q + C, *v = q + 2 * C, *kp = NULL, *vp = NULL;
    const float *dy = datty + (size_t)pk->start[n] * C + h * HS;
    const float *P = att + pk->att_off[n] + (size_t)h * T * W, *Pd = P;
    size_t pbase = (size_t)pk->att_off[n] + (size_t)h * T * W;
    float *dq = dqkv + base, *dk = dq + C, *dv = dq + 2 * C, *dkp = NULL, *dvp = NULL;
    if (T == 0) return;
    if (pk->drop > 0) { /* y = (P * mask) V: dV through the dropped P, dP through the mask */
        att_dropped(Pd_scratch, P, T, K, W, pbase, pk);
        Pd = Pd_scratch;
    }
    if (K > 0) {
        size_t pb = (size_t)pk->start[pk->par[n]] * C3 + (size_t)h * HS;
        kp = qkv + pb + C, vp = kp + C;
        dkp = dqkv + pb + C, dvp = dkp + C;
    }
    /* dP = dY V^T ; dV = P^T dY (the parent's part accumulates) */
    if (K > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, K, HS, 1.0f, dy, C, vp, C3, 0.0f,
                    dP, W);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, HS, T, 1.0f, Pd, W, dy, C, 1.0f,
                    dvp, C3);
    }
    for (int t = 0; t < T; t++) { /* the own dK, dV accumulate over query blocks */
        memset(dk + (size_t)t * C3, 0, sizeof(float) * (size_t)HS);
        memset(dv + (size_t)t * C3, 0, sizeof(float) * (size_t)HS);
    }
    for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
        int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, t1, HS, 1.0f,
                    dy + (size_t)t0 * C, C, v, C3, 0.0f, dP + (size_t)t0 * W + K, W);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t1, HS, t1 - t0, 1.0f,
                    Pd + (size_t)t0 * W + K, W, dy + (size_t)t0 * C, C, 1.0f, dv, C3);
    }
    /* dS = P * (dP - sum_j P dP) * scale over the visible columns */
    for (int t = 0; t < T; t++) {
        const float *p = P + (size_t)t * W;
        float *d = dP + (size_t)t * W;
        int last = K + t;
        double s = 0;
        if (pk->drop > 0)
            for (int j = 0; j <= last; j++)
                d[j] *= att_keep(pk->seed, pbase + (size_t)t * W + j, pk->drop);
        for (int j = 0; j <= last; j++) s += (double)p[j] * d[j];
        for (int j = 0; j <= last; j++) d[j] = p[j] * (d[j] - (float)s) * scale;
        for (int j = last + 1; j < W; j++) d[j] = 0.0f;
    }
    /* dQ = dS K ; dK = dS^T Q (the parent's part accumulates) */
    if (K > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, K, 1.0f, dP, W, kp, C3, 0.0f,
                    dq, C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, HS, T, 1.0f, dP, W, q, C3, 1.0f,
                    dkp, C3);
    }
    for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
        int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, HS, t1, 1.0f,
                    dP + (size_t)t0 * W + K, W, kk, C3, K > 0 ? 1.0f : 0.0f, dq + (size_t)t0 * C3,
                    C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t1, HS, t1 - t0, 1.0f,
                    dP + (size_t)t0 * W + K, W, q + (size_t)t0 * C3, C3, 1.0f, dk, C3);
    }
}

/*
** dqkv [Nt, 3C] from datty [Nt, C]. Rows without a parent go first (they
** write their dK, dV); then rows with one, which add into their parent's
** (each parent has one child, so the second phase has no two writers).
** scratch: [Tmax, Tmax] x 2 per thread (dP, and the dropped P).
*/
static void attention_backward(float *dqkv, const float *datty, const float *att, const float *qkv,
                               const packing *pk, int C, int NH, float *scratch,
                               size_t scratch_per_thread) {
    for (int phase = 0; phase < 2; phase++) {
#pragma omp parallel for schedule(dynamic)
        for (int k = 0; k < pk->N * NH; k++) {
            int n = k / NH;
            if ((pk->pre[n] > 0) != phase) continue;
            float *mine = scratch + (size_t)omp_get_thread_num() * scratch_per_thread;
            attention_backward_one(dqkv, datty, att, qkv, pk, n, k % NH, C, NH, mine,
                                   mine + scratch_per_thread / 2);
        }
    }
}

/* Dropout: out = x * mask / (1 - p) with a fresh mask (bytes, 1 = kept). */
static void dropout_forward(float *x, unsigned char *mask, size_t n, float p, dpo_rng *r) {
    float scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++) {
        mask[i] = dpo_rng_uniform(r) >= p;
        x[i] = mask[i] ? x[i] * scale : 0.0f;
    }
}

static void dropout_backward(float *dx, const unsigned char *mask, size_t n, float p) {
    float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dx[i] = mask[i] ? dx[i] * scale : 0.0f;
}

/* ---- the activation arena ---------------------------------------------------------- */

/*
** Lay out the activation arena for N rows, Nt packed tokens, S scored
** positions, A attention floats per block and Tmax the longest row; nb blocks
** are kept (L when recording for backward, else 1, reused by every block).
** lora: the adapters run (their rank-r activations and scratch are laid out).
** Reallocates only when the arena is too small. Returns 0, or -1 (e filled).
*/
static int ensure_arena(dpo_gpt *m, int N, int Nt, int S, size_t A, int Tmax, int nb, int backward,
                        int dropout, int lora, dpo_error *e) {
    size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size, nt = (size_t)Nt;
    size_t per_block = 12 * nt * C + 4 * nt + A;
    size_t nthreads = (size_t)omp_get_max_threads();
    size_t masks = dropout ? (2 * (size_t)nb + 1) * nt * C : 0;
    size_t ints = 6 * (size_t)N + 2 * nt + 3 * (size_t)S + 1;
    size_t floats;
    float *f;
    m->chunk = (int)(LOGIT_BUDGET / V > 64 ? LOGIT_BUDGET / V : 64);
    if (m->chunk > S && S > 0) m->chunk = S;
    if (m->chunk < 1) m->chunk = 1;
    floats = nb * per_block + 4 * nt * C + 2 * nt * C + 2 * nt + (size_t)S * C + (size_t)S +
             (size_t)m->chunk * V + (nt > (size_t)S ? nt : (size_t)S) + 1;
    size_t scratch = (backward || dropout) ? nthreads * 2 * (size_t)Tmax * (size_t)Tmax : 0;
    if (backward) floats += 4 * nt * C + 4 * nt * C + 3 * nt * C + (size_t)S * C;
    floats += scratch;
    size_t r = lora ? (size_t)dpo_lora_cfg(m->lora)->r : 0;
    if (lora) floats += (size_t)nb * LIN_COUNT * nt * r + 4 * nt * C + nt * r;
    floats += (masks + 3) / 4; /* dropout masks ride at the end, as bytes */
    if (floats > m->acts_cap) {
        dpo_free(m->acts);
        m->acts = (float *)dpo_alloc(floats * sizeof(float));
        m->acts_cap = m->acts ? floats : 0;
        if (!m->acts) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for activations (%.1f MB)",
                     floats * 4.0 / 1e6);
            return -1;
        }
    }
    if (ints > m->ints_cap) {
        free(m->row_start);
        m->row_start = (int *)malloc(ints * sizeof(int));
        m->ints_cap = m->row_start ? ints : 0;
        if (!m->row_start) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for the batch layout");
            return -1;
        }
    }
    m->row_len = m->row_start + N;
    m->row_pre = m->row_len + N;
    m->row_par = m->row_pre + N;
    m->row_full = m->row_par + N;
    m->att_off = m->row_full + N;
    m->tok = m->att_off + N;
    m->pos = m->tok + Nt;
    m->sc_row = m->pos + Nt;
    m->sc_tok = m->sc_row + S;
    m->sc_seq = m->sc_tok + S;
    f = m->acts;
#define TAKE(ptr, count) (ptr = f, f += (count))
    for (int l = 0; l < nb; l++) {
        block_acts *b = &m->blocks[l];
        TAKE(b->ln1, nt * C);
        TAKE(b->ln1_mean, nt);
        TAKE(b->ln1_rstd, nt);
        TAKE(b->qkv, 3 * nt * C);
        TAKE(b->att, A);
        TAKE(b->atty, nt * C);
        TAKE(b->res2, nt * C);
        TAKE(b->ln2, nt * C);
        TAKE(b->ln2_mean, nt);
        TAKE(b->ln2_rstd, nt);
        TAKE(b->fch, 4 * nt * C);
        TAKE(b->res3, nt * C);
        for (int k = 0; k < LIN_COUNT; k++) {
            b->lora_u[k] = NULL;
            if (lora) TAKE(b->lora_u[k], nt * r);
        }
    }
    for (int l = nb; l < m->cfg.n_layer; l++) m->blocks[l] = m->blocks[0];
    TAKE(m->blocks[0].fch_gelu, 4 * nt * C);
    for (int l = 1; l < m->cfg.n_layer; l++) m->blocks[l].fch_gelu = m->blocks[0].fch_gelu;
    TAKE(m->encoded, nt * C);
    TAKE(m->lnf, nt * C);
    TAKE(m->lnf_mean, nt);
    TAKE(m->lnf_rstd, nt);
    TAKE(m->hs, (size_t)S * C);
    TAKE(m->lse, (size_t)S);
    TAKE(m->logits, (size_t)m->chunk * V);
    TAKE(m->ones, (nt > (size_t)S ? nt : (size_t)S) + 1);
    if (backward) {
        TAKE(m->dres, nt * C);
        TAKE(m->dln, nt * C);
        TAKE(m->dbig, 4 * nt * C);
        TAKE(m->datty, 2 * nt * C); /* datty, then the branch gradient */
        TAKE(m->dqkv, 3 * nt * C);
        TAKE(m->dhs, (size_t)S * C);
    }
    TAKE(m->datt_scratch, scratch); /* attention: dP and dropped P, per thread */
    m->lora_xd = m->lora_du = NULL;
    if (lora) {
        TAKE(m->lora_xd, 4 * nt * C);
        TAKE(m->lora_du, nt * r);
    }
    m->scratch_per_thread = 2 * (size_t)Tmax * (size_t)Tmax;
#undef TAKE
    {
        unsigned char *mb = (unsigned char *)f;
        m->emb_mask = dropout ? mb : NULL;
        for (int l = 0; l < m->cfg.n_layer; l++)
            m->blocks[l].mask =
                dropout ? mb + nt * C * (1 + 2 * (size_t)(l < nb ? l : nb - 1)) : NULL;
    }
    for (size_t i = 0; i < (nt > (size_t)S ? nt : (size_t)S) + 1; i++) m->ones[i] = 1.0f;
    m->N = N, m->Nt = Nt, m->S = S, m->att_size = A;
    m->keep_layers = nb;
    m->lora_on = lora;
    m->lora_drop = lora && m->training && dpo_lora_cfg(m->lora)->dropout > 0;
    return 0;
}

/* ---- forward and backward of the packed batch ----------------------------------------- */

static packing packing_of(const dpo_gpt *m) {
    packing pk;
    pk.N = m->N;
    pk.start = m->row_start;
    pk.len = m->row_len;
    pk.pre = m->row_pre;
    pk.par = m->row_par;
    pk.att_off = m->att_off;
    pk.drop = 0;
    pk.seed = 0;
    pk.scratch = m->datt_scratch;
    pk.scratch_per_thread = m->scratch_per_thread;
    return pk;
}

static float *P_(dpo_gpt *m, int l, int which) {
    return m->params + m->info[2 + PER_LAYER * l + which].offset;
}
/* The gradient of a block's parameter, or NULL when the base is frozen. */
static float *G_(dpo_gpt *m, int l, int which) {
    return m->grads ? m->grads + m->info[2 + PER_LAYER * l + which].offset : NULL;
}

/* y [Nt, out] += the adapter of linear module k of block l on x, when it has one. */
static void lora_fwd(dpo_gpt *m, int l, int k, float *y, const float *x) {
    int s = m->lora_on ? m->lora_site[l * LIN_COUNT + k] : -1;
    if (s >= 0)
        dpo_lora_forward(m->lora, s, y, x, m->blocks[l].lora_u[k], m->lora_xd, m->Nt,
                         m->lora_drop ? &m->drop_rng : NULL);
}

/* dx += the adapter's input gradient for dy; its A, B gradients accumulate. */
static void lora_bwd(dpo_gpt *m, int l, int k, float *dx, const float *dy, const float *x) {
    int s = m->lora_on ? m->lora_site[l * LIN_COUNT + k] : -1;
    if (s >= 0)
        dpo_lora_backward(m->lora, s, dx, dy, x, m->blocks[l].lora_u[k], m->lora_du, m->lora_xd,
                          m->Nt, m->lora_drop);
}

/* The hidden states lnf [Nt, C] of the packed tokens; drop: apply dropout masks. */
static void forward_hidden(dpo_gpt *m, int drop) {
    int Nt = m->Nt, C = m->cfg.n_embd, NH = m->cfg.n_head, L = m->cfg.n_layer;
    float eps = m->cfg.eps, p = m->cfg.dropout;
    packing pk = packing_of(m);
    const float *wte = m->params, *wpe = m->params + m->info[1].offset;
    float *lnfw = m->params + m->info[m->ntensors - 2].offset;
    float *lnfb = m->params + m->info[m->ntensors - 1].offset;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *a = wte + (size_t)m->tok[r] * C, *b = wpe + (size_t)m->pos[r] * C;
        float *o = m->encoded + (size_t)r * C;
        for (int i = 0; i < C; i++) o[i] = a[i] + b[i];
    }
    if (drop) dropout_forward(m->encoded, m->emb_mask, (size_t)Nt * C, p, &m->drop_rng);
    for (int l = 0; l < L; l++) {
        block_acts *b = &m->blocks[l];
        const float *x = l == 0 ? m->encoded : m->blocks[l - 1].res3;
        size_t n = (size_t)Nt * C;
        layernorm_forward(b->ln1, b->ln1_mean, b->ln1_rstd, x, P_(m, l, P_LN1_W), P_(m, l, P_LN1_B),
                          Nt, C, eps);
        matmul_forward(b->qkv, b->ln1, P_(m, l, P_QKV_W), P_(m, l, P_QKV_B), Nt, C, 3 * C);
        lora_fwd(m, l, LIN_QKV, b->qkv, b->ln1);
        if (drop) {
            b->att_seed = dpo_rng_next(&m->drop_rng);
            pk.drop = p, pk.seed = b->att_seed;
        }
        attention_forward(b->atty, b->att, b->qkv, &pk, C, NH);
        matmul_forward(b->res2, b->atty, P_(m, l, P_PROJ_W), P_(m, l, P_PROJ_B), Nt, C, C);
        lora_fwd(m, l, LIN_PROJ, b->res2, b->atty);
        if (drop) dropout_forward(b->res2, b->mask, n, p, &m->drop_rng);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->res2[i] += x[i];
        layernorm_forward(b->ln2, b->ln2_mean, b->ln2_rstd, b->res2, P_(m, l, P_LN2_W),
                          P_(m, l, P_LN2_B), Nt, C, eps);
        matmul_forward(b->fch, b->ln2, P_(m, l, P_FC_W), P_(m, l, P_FC_B), Nt, C, 4 * C);
        lora_fwd(m, l, LIN_FC, b->fch, b->ln2);
        gelu_forward(b->fch_gelu, b->fch, 4 * n);
        matmul_forward(b->res3, b->fch_gelu, P_(m, l, P_FCP_W), P_(m, l, P_FCP_B), Nt, 4 * C, C);
        lora_fwd(m, l, LIN_FCP, b->res3, b->fch_gelu);
        if (drop) dropout_forward(b->res3, b->mask + n, n, p, &m->drop_rng);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->res3[i] += b->res2[i];
    }
    layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, m->blocks[L - 1].res3, lnfw, lnfb, Nt, C,
                      eps);
}

/* The head over the batch's scored positions: the tied wte. */
static dpo_head head_of(dpo_gpt *m) {
    dpo_head h;
    h.C = m->cfg.n_embd, h.V = m->cfg.vocab_size, h.N = m->N, h.S = m->S, h.chunk = m->chunk;
    h.W = m->params;
    h.hidden = m->lnf;
    h.row = m->sc_row, h.tok = m->sc_tok, h.seq = m->sc_seq;
    h.hs = m->hs, h.lse = m->lse, h.logits = m->logits;
    return h;
}

/* The fused backward: dlogps [N] -> every parameter gradient (accumulated). */
static void backward_all(dpo_gpt *m, const float *dlogps) {
    int Nt = m->Nt, C = m->cfg.n_embd, L = m->cfg.n_layer;
    int NH = m->cfg.n_head, drop = m->emb_mask != NULL;
    float p = m->cfg.dropout;
    size_t n = (size_t)Nt * C;
    float *G = m->grads; /* NULL: a frozen base, only the adapters' gradients */
    float *dwte = G, *dwpe = G ? G + m->info[1].offset : NULL;
    float *dlnfw = G ? G + m->info[m->ntensors - 2].offset : NULL;
    float *dlnfb = G ? G + m->info[m->ntensors - 1].offset : NULL;
    const float *lnfw = m->params + m->info[m->ntensors - 2].offset;
    float *dbranch = m->datty + n;
    int lowest = 0; /* the lowest block whose input gradient is needed */
    packing pk = packing_of(m);
    if (!G) {
        lowest = L - 1;
        for (int l = 0; l < L; l++)
            for (int k = 0; k < LIN_COUNT; k++)
                if (m->lora_site[l * LIN_COUNT + k] >= 0 && l < lowest) lowest = l;
    }

    /* LM head (its weight, the tied wte, gets its gradient there) */
    memset(m->dln, 0, n * sizeof(float));
    {
        dpo_head h = head_of(m);
        dpo_head_backward(&h, dlogps, m->dhs, m->head_unit, dwte, m->dln);
    }

    /* final LayerNorm */
    memset(m->dres, 0, n * sizeof(float));
    layernorm_backward(m->dres, dlnfw, dlnfb, m->dln, m->blocks[L - 1].res3, lnfw, m->lnf_mean,
                       m->lnf_rstd, Nt, C);

    for (int l = L - 1; l >= lowest; l--) {
        block_acts *b = &m->blocks[l];
        const float *x = l == 0 ? m->encoded : m->blocks[l - 1].res3;
        const float *g = m->dres;
        /* MLP branch: res3 = res2 + drop(fcproj(gelu(fc(ln2(res2))))) */
        if (drop) {
            memcpy(dbranch, m->dres, n * sizeof(float));
            dropout_backward(dbranch, b->mask + n, n, p);
            g = dbranch;
        }
        gelu_forward(b->fch_gelu, b->fch, 4 * n); /* not kept: recomputed */
        matmul_backward(m->dbig, G_(m, l, P_FCP_W), G_(m, l, P_FCP_B), g, b->fch_gelu,
                        P_(m, l, P_FCP_W), m->ones, Nt, 4 * C, C);
        lora_bwd(m, l, LIN_FCP, m->dbig, g, b->fch_gelu);
        gelu_backward(m->dbig, b->fch, 4 * n);
        matmul_backward(m->dln, G_(m, l, P_FC_W), G_(m, l, P_FC_B), m->dbig, b->ln2,
                        P_(m, l, P_FC_W), m->ones, Nt, C, 4 * C);
        lora_bwd(m, l, LIN_FC, m->dln, m->dbig, b->ln2);
        if (l == lowest && !G && m->lora_site[l * LIN_COUNT + LIN_QKV] < 0 &&
            m->lora_site[l * LIN_COUNT + LIN_PROJ] < 0)
            return; /* no adapter below this point */
        layernorm_backward(m->dres, G_(m, l, P_LN2_W), G_(m, l, P_LN2_B), m->dln, b->res2,
                           P_(m, l, P_LN2_W), b->ln2_mean, b->ln2_rstd, Nt, C);
        /* attention branch: res2 = x + drop(proj(attn(qkv(ln1(x))))) */
        g = m->dres;
        if (drop) {
            memcpy(dbranch, m->dres, n * sizeof(float));
            dropout_backward(dbranch, b->mask, n, p);
            g = dbranch;
        }
        matmul_backward(m->datty, G_(m, l, P_PROJ_W), G_(m, l, P_PROJ_B), g, b->atty,
                        P_(m, l, P_PROJ_W), m->ones, Nt, C, C);
        lora_bwd(m, l, LIN_PROJ, m->datty, g, b->atty);
        if (drop) pk.drop = p, pk.seed = b->att_seed;
        attention_backward(m->dqkv, m->datty, b->att, b->qkv, &pk, C, NH, m->datt_scratch,
                           m->scratch_per_thread);
        if (l == lowest && !G) { /* nothing below needs a gradient: the adapter's own only */
            lora_bwd(m, l, LIN_QKV, NULL, m->dqkv, b->ln1);
            return;
        }
        matmul_backward(m->dln, G_(m, l, P_QKV_W), G_(m, l, P_QKV_B), m->dqkv, b->ln1,
                        P_(m, l, P_QKV_W), m->ones, Nt, C, 3 * C);
        lora_bwd(m, l, LIN_QKV, m->dln, m->dqkv, b->ln1);
        layernorm_backward(m->dres, G_(m, l, P_LN1_W), G_(m, l, P_LN1_B), m->dln, x,
                           P_(m, l, P_LN1_W), b->ln1_mean, b->ln1_rstd, Nt, C);
    }
    if (!G) return;
    if (drop) dropout_backward(m->dres, m->emb_mask, n, p);
        /* embeddings: scatter-add by columns so repeated tokens sum in one order */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++)
        for (int r = 0; r < Nt; r++) {
            float d = m->dres[(size_t)r * C + i];
            dwte[(size_t)m->tok[r] * C + i] += d;
            dwpe[(size_t)m->pos[r] * C + i] += d;
        }
}

/* ---- log-probabilities as an autograd node ------------------------------------------- */

typedef struct {
    dpo_gpt *m;
    uint64_t run;
} logps_ctx;

static void logps_release(void *ctx) {
    logps_ctx *c = (logps_ctx *)ctx;
    dpo_gpt_release(c->m);
    free(c);
}

static dpo_status logps_backward(void *ctx, const dpo_tensor *gout, dpo_error *e) {
    logps_ctx *c = (logps_ctx *)ctx;
    dpo_gpt *m = c->m;
    if (m->run != c->run || m->keep_layers != m->cfg.n_layer || (!m->grads && !m->lora_on)) {
        dpo_fail(e, DPO_ERR_ARG, 1,
                 "the model ran another batch (or was frozen) after these logps were computed; "
                 "call backward() before the next forward, or score all rows in one logps call");
        return DPO_ERR_ARG;
    }
    backward_all(m, dpo_f32(gout));
    m->run++; /* the activations are spent */
    return DPO_OK;
}

/* Elements of the mask, as a truth value, whatever its dtype. */
static int mask_at(const dpo_tensor *mask, int64_t i) {
    return dpo_tensor_get(mask, i) != 0;
}

dpo_tensor *dpo_gpt_logps(dpo_gpt *m, const dpo_tensor *ids_in, const dpo_tensor *mask, int record,
                          dpo_tensor **counts_out, dpo_error *e) {
    char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
    dpo_tensor *ids, *logps = NULL, *counts = NULL;
    int N, T, V = m->cfg.vocab_size, Nt = 0, S = 0, Tmax = 0, lora;
    size_t A = 0;
    int64_t nshape;
    if (ids_in->dtype != DPO_I32 || ids_in->ndim != 2)
        return dpo_fail(e, DPO_ERR_TYPE, 1, "ids must be an int32 tensor [N, T] (got %s %s)",
                        dpo_dtype_name(ids_in->dtype), dpo_tensor_shape_str(ids_in, a, sizeof a));
    if (!dpo_tensor_same_shape(ids_in, mask))
        return dpo_fail(e, DPO_ERR_SHAPE, 2, "mask of size %s does not match ids of size %s",
                        dpo_tensor_shape_str(mask, a, sizeof a),
                        dpo_tensor_shape_str(ids_in, b, sizeof b));
    N = (int)ids_in->shape[0];
    T = (int)ids_in->shape[1];
    ids = dpo_tensor_contiguous((dpo_tensor *)ids_in, e);
    if (!ids) return NULL;
    if ((size_t)3 * N > m->plan_cap) {
        free(m->plan);
        m->plan = (int *)malloc(sizeof(int) * 3 * (size_t)(N + 1));
        m->plan_cap = m->plan ? 3 * (size_t)N : 0;
        if (!m->plan) {
            dpo_tensor_release(ids);
            return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        }
    }
    {
        int *lastv = m->plan, *pre = m->plan + N, *par = m->plan + 2 * N;
        const int32_t *id = dpo_i32(ids);
        /* first pass: the positions each row needs (up to its last scored token), and validation */
        for (int n = 0; n < N; n++) {
            int last = 0, cnt = 0;
            for (int t = 1; t < T; t++)
                if (mask_at(mask, (int64_t)n * T + t)) last = t, cnt++;
            for (int t = 0; t <= last; t++) {
                int32_t v = id[(size_t)n * T + t];
                if (v < 0 || v >= V) {
                    dpo_tensor_release(ids);
                    return dpo_fail(e, DPO_ERR_RANGE, 1,
                                    "token id %d at row %d, position %d is out of range 0..%d", v,
                                    n + 1, t + 1, V - 1);
                }
            }
            if (last > m->cfg.n_ctx) {
                dpo_tensor_release(ids);
                return dpo_fail(e, DPO_ERR_SHAPE, 1,
                                "row %d scores a token at position %d but the model's n_ctx is %d",
                                n + 1, last + 1, m->cfg.n_ctx);
            }
            lastv[n] = last, pre[n] = 0, par[n] = -1;
            S += cnt;
            if (last > Tmax) Tmax = last;
        }
        /* rows that begin with another row's tokens (a DPO pair's shared prompt) reuse that
           row's computation of them; a row lends its prefix to at most one other row */
        for (int n = 1; n < N; n++) {
            int best = 0, who = -1;
            for (int p = 0; p < n; p++) {
                int k = 0, lim = lastv[n] < lastv[p] ? lastv[n] : lastv[p];
                if (par[p] != -1) continue; /* has a parent, or lends already */
                while (k < lim && id[(size_t)n * T + k] == id[(size_t)p * T + k]) k++;
                if (k > best) best = k, who = p;
            }
            if (best >= MIN_SHARE) {
                pre[n] = best, par[n] = who;
                par[who] = -2; /* taken */
            }
        }
        for (int n = 0; n < N; n++) {
            int len = lastv[n] - pre[n];
            Nt += len;
            A += (size_t)m->cfg.n_head * len * lastv[n];
            if ((double)A > 2147483647.0 || Nt > 100000000) {
                dpo_tensor_release(ids);
                return dpo_fail(e, DPO_ERR_SHAPE, 1, "batch too large (%d rows of up to %d tokens)",
                                N, T);
            }
        }
        lora = m->lora && dpo_lora_enabled(m->lora);
        record = record && !m->frozen && (m->grads || (lora && dpo_lora_grads(m->lora)));
        if (ensure_arena(m, N, Nt, S, A, Tmax, record ? m->cfg.n_layer : 1, record,
                         m->training && m->cfg.dropout > 0, lora, e)) {
            dpo_tensor_release(ids);
            return NULL;
        }
        /* second pass: the packing */
        {
            int r = 0, sc = 0;
            size_t off = 0;
            for (int n = 0; n < N; n++) {
                int K = pre[n], last = lastv[n];
                m->row_start[n] = r;
                m->row_len[n] = last - K;
                m->row_pre[n] = K;
                m->row_par[n] = K > 0 ? par[n] : -1;
                m->row_full[n] = last;
                m->att_off[n] = (int)off;
                off += (size_t)m->cfg.n_head * (last - K) * last;
                for (int t = K; t < last; t++, r++) {
                    m->tok[r] = id[(size_t)n * T + t];
                    m->pos[r] = t;
                }
            }
            for (int n = 0; n < N; n++)
                for (int t = 1; t <= lastv[n]; t++)
                    if (mask_at(mask, (int64_t)n * T + t)) {
                        /* the hidden state at t-1: in the parent's rows when shared */
                        m->sc_row[sc] = t - 1 < m->row_pre[n]
                                            ? m->row_start[m->row_par[n]] + t - 1
                                            : m->row_start[n] + t - 1 - m->row_pre[n];
                        m->sc_tok[sc] = id[(size_t)n * T + t];
                        m->sc_seq[sc] = n;
                        sc++;
                    }
        }
    }
    dpo_tensor_release(ids);
    nshape = N;
    logps = dpo_tensor_new(DPO_F32, 1, &nshape, e);
    counts = logps ? dpo_tensor_zeros(DPO_F32, 1, &nshape, e) : NULL;
    if (!counts) {
        dpo_tensor_release(logps);
        return NULL;
    }
    if (Nt > 0) forward_hidden(m, m->training && m->cfg.dropout > 0);
    {
        dpo_head h = head_of(m);
        m->head_unit = record && !m->grads; /* see head.h */
        dpo_head_forward(&h, dpo_f32(logps), dpo_f32(counts), m->head_unit ? m->dhs : NULL);
    }
    if (record) {
        logps_ctx *c = (logps_ctx *)malloc(sizeof *c);
        dpo_custom cu;
        if (!c) {
            dpo_tensor_release(logps);
            dpo_tensor_release(counts);
            return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        }
        m->run++;
        c->m = m;
        c->run = m->run;
        dpo_gpt_retain(m);
        cu.backward = logps_backward;
        cu.release = logps_release;
        cu.ctx = c;
        if (dpo_ag_record_custom(logps, DPO_OP_GPT_LOGPS, &cu, e) != DPO_OK) {
            dpo_tensor_release(logps);
            dpo_tensor_release(counts);
            return NULL;
        }
    } else {
        m->run++; /* any pending backward is stale now */
    }
    if (counts_out)
        *counts_out = counts;
    else
        dpo_tensor_release(counts);
    return logps;
}

/* ---- next-token logits and generation ------------------------------------------------ */

dpo_status dpo_gpt_next_logits(dpo_gpt *m, const int32_t *ids, int n, float *logits, dpo_error *e) {
    int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    if (n < 1 || n > m->cfg.n_ctx) {
        dpo_fail(e, DPO_ERR_SHAPE, 1, "a context of %d tokens (the model takes 1..%d)", n,
                 m->cfg.n_ctx);
        return DPO_ERR_SHAPE;
    }
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= V) {
            dpo_fail(e, DPO_ERR_RANGE, 1, "token id %d at position %d is out of range 0..%d",
                     ids[t], t + 1, V - 1);
            return DPO_ERR_RANGE;
        }
    if (ensure_arena(m, 1, n, 1, (size_t)m->cfg.n_head * n * n, n, 1, 0, 0,
                     m->lora && dpo_lora_enabled(m->lora), e))
        return e ? e->status : DPO_ERR_MEM;
    m->row_start[0] = 0, m->row_len[0] = n, m->att_off[0] = 0;
    m->row_pre[0] = 0, m->row_par[0] = -1, m->row_full[0] = n;
    m->lora_drop = 0;
    for (int t = 0; t < n; t++) m->tok[t] = ids[t], m->pos[t] = t;
    m->run++;
    forward_hidden(m, 0);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.0f, m->params, C, m->lnf + (size_t)(n - 1) * C,
                1, 0.0f, logits, 1);
    return DPO_OK;
}

/* y [out] += the adapter of linear module k of block l on one position x, using u [r]. */
static void lora_one(dpo_gpt *m, int l, int k, float *y, const float *x, float *u) {
    int s = m->lora && dpo_lora_enabled(m->lora) ? m->lora_site[l * LIN_COUNT + k] : -1;
    if (s >= 0) dpo_lora_forward(m->lora, s, y, x, u, NULL, 1, NULL);
}

/* One position through the model with a KV cache [L][n_ctx][2C]; logits [V] out.
   w: [10C + n_ctx + r] work space (r: the adapters' rank, 0 without). */
static void cached_step(dpo_gpt *m, float *cache, int token, int pos, float *logits, float *w) {
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, L = m->cfg.n_layer, NH = m->cfg.n_head;
    int HS = C / NH, ctx = m->cfg.n_ctx;
    float eps = m->cfg.eps, scale = 1.0f / sqrtf((float)HS);
    float *x = w, *h = x + C, *qkv = h + C, *y = qkv + 3 * C, *fc = y + C, *att = fc + 4 * C;
    float *u = att + ctx;
    const float *wte = m->params, *wpe = m->params + m->info[1].offset;
    for (int i = 0; i < C; i++) x[i] = wte[(size_t)token * C + i] + wpe[(size_t)pos * C + i];
    for (int l = 0; l < L; l++) {
        float *kv = cache + (size_t)l * ctx * 2 * C;
        layernorm_forward(h, NULL, NULL, x, P_(m, l, P_LN1_W), P_(m, l, P_LN1_B), 1, C, eps);
        memcpy(qkv, P_(m, l, P_QKV_B), sizeof(float) * 3 * (size_t)C);
        cblas_sgemv(CblasRowMajor, CblasTrans, C, 3 * C, 1.0f, P_(m, l, P_QKV_W), 3 * C, h, 1, 1.0f,
                    qkv, 1);
        lora_one(m, l, LIN_QKV, qkv, h, u);
        memcpy(kv + (size_t)pos * 2 * C, qkv + C, sizeof(float) * 2 * (size_t)C);
        for (int hd = 0; hd < NH; hd++) {
            const float *q = qkv + hd * HS;
            float mx = -INFINITY;
            double s = 0;
            for (int j = 0; j <= pos; j++) {
                const float *k = kv + (size_t)j * 2 * C + hd * HS;
                float d = 0;
                for (int i = 0; i < HS; i++) d += q[i] * k[i];
                att[j] = d * scale;
                if (att[j] > mx) mx = att[j];
            }
            for (int j = 0; j <= pos; j++) {
                att[j] = expf(att[j] - mx);
                s += att[j];
            }
            for (int i = 0; i < HS; i++) y[hd * HS + i] = 0;
            for (int j = 0; j <= pos; j++) {
                const float *v = kv + (size_t)j * 2 * C + C + hd * HS;
                float pj = (float)(att[j] / s);
                for (int i = 0; i < HS; i++) y[hd * HS + i] += pj * v[i];
            }
        }
        cblas_sgemv(CblasRowMajor, CblasTrans, C, C, 1.0f, P_(m, l, P_PROJ_W), C, y, 1, 1.0f, x, 1);
        lora_one(m, l, LIN_PROJ, x, y, u);
        for (int i = 0; i < C; i++) x[i] += P_(m, l, P_PROJ_B)[i];
        layernorm_forward(h, NULL, NULL, x, P_(m, l, P_LN2_W), P_(m, l, P_LN2_B), 1, C, eps);
        memcpy(fc, P_(m, l, P_FC_B), sizeof(float) * 4 * (size_t)C);
        cblas_sgemv(CblasRowMajor, CblasTrans, C, 4 * C, 1.0f, P_(m, l, P_FC_W), 4 * C, h, 1, 1.0f,
                    fc, 1);
        lora_one(m, l, LIN_FC, fc, h, u);
        gelu_forward(fc, fc, 4 * (size_t)C);
        cblas_sgemv(CblasRowMajor, CblasTrans, 4 * C, C, 1.0f, P_(m, l, P_FCP_W), C, fc, 1, 1.0f, x,
                    1);
        lora_one(m, l, LIN_FCP, x, fc, u);
        for (int i = 0; i < C; i++) x[i] += P_(m, l, P_FCP_B)[i];
    }
    layernorm_forward(h, NULL, NULL, x, m->params + m->info[m->ntensors - 2].offset,
                      m->params + m->info[m->ntensors - 1].offset, 1, C, eps);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.0f, m->params, C, h, 1, 0.0f, logits, 1);
}

typedef struct {
    float v;
    int i;
} scored;

static int by_value_desc(const void *a, const void *b) {
    const scored *x = (const scored *)a, *y = (const scored *)b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i - y->i;
}

/* Pick the next token from logits [V] (modified). */
static int sample(float *logits, int V, const dpo_gen_opts *o, dpo_rng *r, scored *buf) {
    int best = 0, n = V;
    double u, acc = 0, total = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (o->temperature <= 0) return best;
    for (int v = 0; v < V; v++) buf[v].v = logits[v] / (float)o->temperature, buf[v].i = v;
    qsort(buf, (size_t)V, sizeof *buf, by_value_desc);
    if (o->top_k > 0 && o->top_k < n) n = o->top_k;
    {
        float mx = buf[0].v;
        for (int k = 0; k < n; k++) {
            buf[k].v = expf(buf[k].v - mx);
            total += buf[k].v;
        }
    }
    if (o->top_p > 0 && o->top_p < 1) { /* the smallest prefix with mass >= top_p */
        double mass = 0;
        for (int k = 0; k < n; k++) {
            mass += buf[k].v / total;
            if (mass >= o->top_p) {
                n = k + 1;
                break;
            }
        }
        total = 0;
        for (int k = 0; k < n; k++) total += buf[k].v;
    }
    u = dpo_rng_uniform(r) * total;
    for (int k = 0; k < n; k++) {
        acc += buf[k].v;
        if (u < acc) return buf[k].i;
    }
    return buf[n - 1].i;
}

int dpo_gen_pick(float *logits, int V, const dpo_gen_opts *o, dpo_rng *r, void *scratch) {
    return sample(logits, V, o, r, (scored *)scratch);
}

int32_t *dpo_gpt_generate(dpo_gpt *m, const int32_t *prompt, int n_prompt, const dpo_gen_opts *o,
                          int *n_out, dpo_error *e) {
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, ctx = m->cfg.n_ctx, total;
    float *cache = NULL, *work = NULL, *logits = NULL;
    int32_t *seq = NULL, *out = NULL;
    scored *buf = NULL;
    dpo_rng r;
    int made = 0;
    *n_out = 0;
    if (n_prompt < 1) return dpo_fail(e, DPO_ERR_SHAPE, 1, "the prompt needs at least one token");
    if (o->max_new_tokens < 0) return dpo_fail(e, DPO_ERR_ARG, 2, "max_new_tokens must be >= 0");
    if (n_prompt > ctx || o->max_new_tokens > ctx - n_prompt) /* no int overflow in the sum */
        return dpo_fail(e, DPO_ERR_ARG, 2,
                        "prompt (%d tokens) + max_new_tokens (%d) exceeds the model's n_ctx (%d)",
                        n_prompt, o->max_new_tokens, ctx);
    total = n_prompt + o->max_new_tokens;
    for (int t = 0; t < n_prompt; t++)
        if (prompt[t] < 0 || prompt[t] >= V)
            return dpo_fail(e, DPO_ERR_RANGE, 1, "token id %d at position %d is out of range 0..%d",
                            prompt[t], t + 1, V - 1);
    seq = (int32_t *)malloc(sizeof(int32_t) * (size_t)(total + 1));
    out = (int32_t *)malloc(sizeof(int32_t) * (size_t)(o->max_new_tokens + 1));
    logits = (float *)malloc(sizeof(float) * (size_t)V);
    buf = (scored *)malloc(sizeof(scored) * (size_t)V);
    if (o->use_cache) {
        cache = (float *)dpo_alloc(sizeof(float) * (size_t)m->cfg.n_layer * ctx * 2 * C);
        size_t rank = m->lora ? (size_t)dpo_lora_cfg(m->lora)->r : 0;
        work = (float *)malloc(sizeof(float) * ((size_t)10 * C + (size_t)ctx + rank));
    }
    if (!seq || !out || !logits || !buf || (o->use_cache && (!cache || !work))) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for generation");
        goto done;
    }
    memcpy(seq, prompt, sizeof(int32_t) * (size_t)n_prompt);
    dpo_rng_seed(&r, o->seed);
    if (o->use_cache)
        for (int t = 0; t < n_prompt; t++) cached_step(m, cache, seq[t], t, logits, work);
    for (int k = 0; k < o->max_new_tokens; k++) {
        int next, len = n_prompt + k, stop = 0;
        if (!o->use_cache && dpo_gpt_next_logits(m, seq, len, logits, e) != DPO_OK) goto done;
        next = sample(logits, V, o, &r, buf);
        seq[len] = next;
        out[made++] = next;
        for (int s = 0; s < o->n_stop; s++)
            if (o->stop_ids[s] == next) stop = 1;
        if (stop || k + 1 == o->max_new_tokens) break;
        if (o->use_cache) cached_step(m, cache, next, len, logits, work);
    }
    *n_out = made;
    free(seq);
    free(logits);
    free(buf);
    dpo_free(cache);
    free(work);
    return out;
done:
    free(seq);
    free(out);
    free(logits);
    free(buf);
    dpo_free(cache);
    free(work);
    return NULL;
}
