/*
** llama.c: the Llama-family decoder: parameters, fused forward and backward
** kernels, sequence log-probabilities as one autograd node, generation with a
** KV cache. The same design as gpt.c (read that first): llm.c-style kernel
** pairs, every product through cblas_sgemm, OpenMP elsewhere, reductions over
** tokens split by columns so each sum has one order.
**
** What differs from GPT-2: RMSNorm; rotary embeddings applied to q and k
** after their projection (and after Qwen3's per-head q_norm / k_norm); grouped
** key/value heads; SwiGLU. The q, k, v weights are laid out one after another
** in the arena, so the three projections are one product with a [QKV, C]
** matrix; gate and up likewise ([2 FF, C]). Parameter names are Hugging Face's.
**
** Shapes: Nt packed tokens, C = hidden_size, NH query heads and KV key/value
** heads of D = head_dim, Q = NH * D, KVD = KV * D, QKV = Q + 2 * KVD,
** FF = intermediate_size (not I: complex.h's macro), V = vocab size, S
** scored positions. Head h reads the key/value head h / (NH / KV).
**
** Adapters (lora.h) are per module as PEFT names them (q_proj, k_proj,
** v_proj, o_proj, gate_proj, up_proj, down_proj), each on its own columns of
** the fused product; those reading one input (q, k, v; gate, up) run as a
** group whose A products batch. With adapters the base is frozen and the
** backward computes no base weight gradient, only the input-gradient chain
** down to the lowest adapted block plus the rank-r products; the head's
** input gradient is then prepared in the forward (head.h).
*/
#include "model/head.h"
#include "model/llama.h"
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
#define MIN_SHARE    16 /* shortest shared prefix worth packing once */
#define ATT_BLOCK    64 /* query rows per block of causal attention */

/* Parameter tensors of a block. Arena order is this order, so q/k/v weights
   (and biases) are contiguous, and gate/up weights (and biases). */
enum {
    P_Q_W,
    P_K_W,
    P_V_W,
    P_Q_B,
    P_K_B,
    P_V_B,
    P_O_W,
    P_O_B,
    P_QN,
    P_KN,
    P_G_W,
    P_U_W,
    P_G_B,
    P_U_B,
    P_D_W,
    P_D_B,
    P_LN1,
    P_LN2,
    NP /* slots per block */
};

/* The linear modules of a block that can carry adapters, in Hugging Face order. */
enum { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_G, LIN_U, LIN_D, LIN_COUNT };
static const char *const lin_names[LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const int lin_param[LIN_COUNT] = {P_Q_W, P_K_W, P_V_W, P_O_W, P_G_W, P_U_W, P_D_W};

/*
** Activations of one block, for Nt tokens (pointers into the arena). The
** norms' outputs and the rotated q/k are not kept: the backward recomputes
** them (cheap, elementwise) into buffers shared by all blocks.
*/
typedef struct {
    float *rstd1;             /* [Nt] 1/rms of input_layernorm */
    float *qkv;               /* [Nt, QKV] projections (with biases) */
    float *qkn;               /* [Nt, NH + KV] 1/rms of each q and k head (Qwen3) */
    float *att;               /* [sum_n NH * Tn * Wn] softmax probabilities */
    float *atty;              /* [Nt, Q] attention output before o_proj */
    float *res2;              /* [Nt, C] residual after attention */
    float *rstd2;             /* [Nt] 1/rms of post_attention_layernorm */
    float *gu;                /* [Nt, 2I] gate, then up */
    float *res3;              /* [Nt, C] the block's output */
    float *lora_u[LIN_COUNT]; /* [r, Nt] each: (A x)^T of the adapters, or NULL */
} block_acts;

struct dpo_llama {
    int refcount;
    dpo_llama_config cfg;
    int ntensors;
    dpo_gpt_param *info;
    int *idx;           /* [L * NP] parameter index of each block slot, -1: absent */
    int i_norm, i_head; /* model.norm.weight; the LM head (embed_tokens when tied) */
    int chunk;          /* rows of logits computed at a time */
    size_t total;       /* floats in the parameter arena */
    float *params;      /* [total] */
    float *grads;       /* [total], NULL when frozen or when adapters train instead */
    int frozen;
    int training;
    dpo_rng drop_rng;
    dpo_lora *lora;             /* adapters, or NULL */
    int *lora_site;             /* [L * LIN_COUNT] the adapter site of each linear module, or -1 */
    float *rope_cos, *rope_sin; /* [rope_len, D/2] */
    int rope_len;

    /* activation arena, reused; sized for the largest batch seen */
    float *acts;
    size_t acts_cap;
    int keep_layers;
    uint64_t run;
    int N, Nt, S;
    int *row_start, *row_len, *row_pre, *row_par, *att_off, *row_full; /* [N] as in gpt.c */
    int *plan;
    size_t plan_cap;
    int *tok, *pos;                /* [Nt] */
    int *sc_row, *sc_tok, *sc_seq; /* [S] */
    size_t ints_cap;
    float *ones; /* [max(Nt, S) + 1] */
    block_acts *blocks;
    float *encoded, *lnf, *lnf_rstd, *hs, *lse, *logits;
    float *ln;  /* [Nt, C] a norm's output, one buffer for all blocks */
    float *qkr; /* [Nt, QKV] q, k normed (Qwen3) and rotated, v as is; shared */
    float *act; /* [Nt, FF] silu(gate) * up; shared */
    /* backward scratch */
    float *dres, *dln, *dbig, *dact, *datty, *dqkr, *dqkv, *dhs, *datt_scratch;
    size_t scratch_per_thread;
    int lora_on;    /* the last forward ran the adapters */
    int lora_drop;  /* ... with dropout on their inputs */
    float *lora_xd; /* [Nt, max(C, Q, FF)] dropped adapter input, or its gradient */
    float *lora_du; /* [3 r, Nt]: a group of up to three */
    int head_unit;  /* dhs holds the head's input gradients but for dlogps (head.h) */
};

/* ---- parameters -------------------------------------------------------------------- */

static void add_param(dpo_llama *m, const char *name, int ndim, int64_t d0, int64_t d1) {
    dpo_gpt_param *p = &m->info[m->ntensors++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    p->offset = m->total;
    m->total += p->numel;
}

static int check_config(const dpo_llama_config *c, dpo_error *e) {
#define BAD(...) return dpo_fail(e, DPO_ERR_ARG, 1, __VA_ARGS__), -1
    if (c->vocab_size < 1 || c->vocab_size > 10000000)
        BAD("vocab_size must be in 1..10000000 (got %d)", c->vocab_size);
    if (c->hidden_size < 1 || c->hidden_size > 65536)
        BAD("hidden_size must be in 1..65536 (got %d)", c->hidden_size);
    if (c->intermediate_size < 1 || c->intermediate_size > 1048576)
        BAD("intermediate_size must be in 1..1048576 (got %d)", c->intermediate_size);
    if (c->n_layer < 1 || c->n_layer > 1000)
        BAD("num_hidden_layers must be in 1..1000 (got %d)", c->n_layer);
    if (c->n_head < 1 || c->n_head > 4096)
        BAD("num_attention_heads must be in 1..4096 (got %d)", c->n_head);
    if (c->n_kv_head < 1 || c->n_head % c->n_kv_head != 0)
        BAD("num_key_value_heads (%d) must divide num_attention_heads (%d)", c->n_kv_head,
            c->n_head);
    if (c->head_dim < 2 || c->head_dim % 2 != 0 || c->head_dim > 4096)
        BAD("head_dim must be an even number in 2..4096 (got %d)", c->head_dim);
    if (c->n_ctx < 1 || c->n_ctx > 16777216)
        BAD("max_position_embeddings must be in 1..16777216 (got %d)", c->n_ctx);
    if (c->sliding_window < 0) BAD("sliding_window must be >= 0 (got %d)", c->sliding_window);
    if (!(c->rms_eps > 0)) BAD("rms_norm_eps must be > 0 (got %g)", (double)c->rms_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        BAD("rope_theta must be a positive number (got %g)", c->rope_theta);
    if (c->rope_type != DPO_ROPE_DEFAULT && !(c->rope_factor > 0 && isfinite(c->rope_factor)))
        BAD("rope_scaling.factor must be > 0 (got %g)", c->rope_factor);
    if (c->rope_type == DPO_ROPE_LLAMA3) {
        if (!(c->rope_low_freq_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor))
            BAD("rope_scaling needs 0 < low_freq_factor < high_freq_factor (got %g, %g)",
                c->rope_low_freq_factor, c->rope_high_freq_factor);
        if (c->rope_original_ctx < 1)
            BAD("rope_scaling.original_max_position_embeddings must be >= 1 (got %d)",
                c->rope_original_ctx);
    }
    {
        double C = c->hidden_size, Q = (double)c->n_head * c->head_dim,
               KVD = (double)c->n_kv_head * c->head_dim;
        double n =
            (double)c->vocab_size * C * (c->tie_embeddings ? 1 : 2) +
            (double)c->n_layer * (C * (Q + 2 * KVD) + Q * C + 3.0 * C * c->intermediate_size);
        if (n > 4e9) BAD("model too large (%.3g parameters)", n);
    }
    return 0;
#undef BAD
}

/* The shell of a model: the parameter table, arenas not yet filled. */
static dpo_llama *llama_shell(const dpo_llama_config *cfg, int with_grads, dpo_error *e) {
    dpo_llama *m;
    int L = cfg->n_layer;
    int64_t C = cfg->hidden_size, FF = cfg->intermediate_size, D = cfg->head_dim;
    int64_t Q = (int64_t)cfg->n_head * D, KVD = (int64_t)cfg->n_kv_head * D;
    char name[64];
    if (check_config(cfg, e)) return NULL;
    m = (dpo_llama *)calloc(1, sizeof *m);
    if (m) m->info = (dpo_gpt_param *)calloc((size_t)(3 + NP * L), sizeof *m->info);
    if (m) m->idx = (int *)malloc(sizeof(int) * (size_t)(NP * L));
    if (m) m->blocks = (block_acts *)calloc((size_t)L, sizeof *m->blocks);
    if (!m || !m->info || !m->idx || !m->blocks) goto oom;
    m->refcount = 1;
    m->cfg = *cfg;
    add_param(m, "model.embed_tokens.weight", 2, cfg->vocab_size, C);
    for (int l = 0; l < L; l++) {
        int *ix = m->idx + (size_t)l * NP;
        for (int k = 0; k < NP; k++) ix[k] = -1;
#define P(slot, suffix, nd, d0, d1)                                                                \
    do {                                                                                           \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                              \
        ix[slot] = m->ntensors;                                                                    \
        add_param(m, name, nd, d0, d1);                                                            \
    } while (0)
        P(P_Q_W, "self_attn.q_proj.weight", 2, Q, C);
        P(P_K_W, "self_attn.k_proj.weight", 2, KVD, C);
        P(P_V_W, "self_attn.v_proj.weight", 2, KVD, C);
        if (cfg->qkv_bias) {
            P(P_Q_B, "self_attn.q_proj.bias", 1, Q, 0);
            P(P_K_B, "self_attn.k_proj.bias", 1, KVD, 0);
            P(P_V_B, "self_attn.v_proj.bias", 1, KVD, 0);
        }
        P(P_O_W, "self_attn.o_proj.weight", 2, C, Q);
        if (cfg->o_bias) P(P_O_B, "self_attn.o_proj.bias", 1, C, 0);
        if (cfg->qk_norm) {
            P(P_QN, "self_attn.q_norm.weight", 1, D, 0);
            P(P_KN, "self_attn.k_norm.weight", 1, D, 0);
        }
        P(P_G_W, "mlp.gate_proj.weight", 2, FF, C);
        P(P_U_W, "mlp.up_proj.weight", 2, FF, C);
        if (cfg->mlp_bias) {
            P(P_G_B, "mlp.gate_proj.bias", 1, FF, 0);
            P(P_U_B, "mlp.up_proj.bias", 1, FF, 0);
        }
        P(P_D_W, "mlp.down_proj.weight", 2, C, FF);
        if (cfg->mlp_bias) P(P_D_B, "mlp.down_proj.bias", 1, C, 0);
        P(P_LN1, "input_layernorm.weight", 1, C, 0);
        P(P_LN2, "post_attention_layernorm.weight", 1, C, 0);
#undef P
    }
    m->i_norm = m->ntensors;
    add_param(m, "model.norm.weight", 1, C, 0);
    m->i_head = 0;
    if (!cfg->tie_embeddings) {
        m->i_head = m->ntensors;
        add_param(m, "lm_head.weight", 2, cfg->vocab_size, C);
    }
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
        free(m->idx);
        free(m->blocks);
        free(m);
    }
    return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory allocating the model");
}

dpo_llama *dpo_llama_new(const dpo_llama_config *cfg, double init_std, uint64_t seed,
                         dpo_error *e) {
    dpo_llama *m;
    dpo_rng r;
    if (!(init_std >= 0 && init_std < 1e3))
        return dpo_fail(e, DPO_ERR_ARG, 1, "initializer_range must be in [0, 1000) (got %g)",
                        init_std);
    m = llama_shell(cfg, 1, e);
    if (!m) return NULL;
    dpo_rng_seed(&r, seed);
    dpo_rng_seed(&m->drop_rng, seed ^ 0x9e3779b97f4a7c15ULL);
    /* Hugging Face's _init_weights: linear and embedding weights N(0, initializer_range),
       biases 0, RMSNorm weights 1 */
    for (int i = 0; i < m->ntensors; i++) {
        const dpo_gpt_param *p = &m->info[i];
        float *w = m->params + p->offset;
        if (p->ndim == 1 && strstr(p->name, "norm.weight")) {
            for (size_t k = 0; k < p->numel; k++) w[k] = 1.0f;
        } else if (p->ndim == 1) {
            memset(w, 0, p->numel * sizeof(float));
        } else {
            for (size_t k = 0; k < p->numel; k++) w[k] = (float)(init_std * dpo_rng_normal(&r));
        }
    }
    return m;
}

dpo_llama *dpo_llama_clone(const dpo_llama *src, int freeze, dpo_error *e) {
    dpo_llama *m = llama_shell(&src->cfg, !freeze && !src->lora, e);
    if (!m) return NULL;
    m->frozen = freeze != 0;
    if (src->lora) {
        size_t n = (size_t)src->cfg.n_layer * LIN_COUNT;
        m->lora_site = (int *)malloc(n * sizeof(int));
        m->lora = m->lora_site ? dpo_lora_clone(src->lora, !freeze, e) : NULL;
        if (!m->lora) {
            if (!m->lora_site) dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
            dpo_llama_release(m);
            return NULL;
        }
        memcpy(m->lora_site, src->lora_site, n * sizeof(int));
    }
    memcpy(m->params, src->params, m->total * sizeof(float));
    m->training = freeze ? 0 : src->training;
    m->drop_rng = src->drop_rng;
    return m;
}

void dpo_llama_retain(dpo_llama *m) {
    if (m) m->refcount++;
}

void dpo_llama_release(dpo_llama *m) {
    if (!m || --m->refcount > 0) return;
    dpo_free(m->acts);
    free(m->row_start);
    free(m->plan);
    free(m->rope_cos);
    free(m->rope_sin);
    dpo_free(m->params);
    dpo_free(m->grads);
    dpo_lora_release(m->lora);
    free(m->lora_site);
    free(m->info);
    free(m->idx);
    free(m->blocks);
    free(m);
}

const dpo_llama_config *dpo_llama_cfg(const dpo_llama *m) {
    return &m->cfg;
}
int dpo_llama_num_tensors(const dpo_llama *m) {
    return m->ntensors;
}
const dpo_gpt_param *dpo_llama_param_info(const dpo_llama *m, int i) {
    return (i >= 0 && i < m->ntensors) ? &m->info[i] : NULL;
}
size_t dpo_llama_num_params(const dpo_llama *m) {
    return m->total;
}
int dpo_llama_frozen(const dpo_llama *m) {
    return m->frozen;
}
void dpo_llama_set_training(dpo_llama *m, int on) {
    m->training = on != 0;
}
int dpo_llama_training(const dpo_llama *m) {
    return m->training;
}
dpo_rng *dpo_llama_dropout_rng(dpo_llama *m) {
    return &m->drop_rng;
}

void dpo_llama_freeze(dpo_llama *m) {
    m->frozen = 1;
    m->run++; /* a pending backward can no longer run */
}

int dpo_llama_base_trainable(const dpo_llama *m) {
    return m->grads != NULL;
}

dpo_lora *dpo_llama_lora(dpo_llama *m) {
    return m->lora;
}

float *dpo_llama_params(dpo_llama *m) {
    return m->params;
}

/* The weight [out, in] of linear module k of block l. */
static const dpo_gpt_param *linear_param(const dpo_llama *m, int l, int k) {
    return &m->info[m->idx[(size_t)l * NP + lin_param[k]]];
}

dpo_status dpo_llama_lora_apply(dpo_llama *m, const dpo_lora_config *c, int n,
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
            snprintf(full[j], sizeof full[0], "model.layers.%d.%s", l, lin_names[k]);
            names[j] = full[j];
            dims[j] = (int)linear_param(m, l, k)->shape[1];        /* in */
            dims[nlin + j] = (int)linear_param(m, l, k)->shape[0]; /* out */
        }
    m->lora = dpo_lora_on_modules(
        c, nlin, names, dims, dims + nlin, n, targets,
        "a Llama has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj in each layer",
        !m->frozen, site, e);
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

dpo_status dpo_llama_lora_merge(dpo_llama *m, dpo_error *e) {
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
            if (s >= 0) dpo_lora_merge(m->lora, s, m->params + linear_param(m, l, k)->offset, 0);
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
    dpo_llama_release((dpo_llama *)ctx);
}

dpo_tensor *dpo_llama_param_tensor(dpo_llama *m, int i, int grad, dpo_error *e) {
    const dpo_gpt_param *p = dpo_llama_param_info(m, i);
    float *base = grad ? m->grads : m->params;
    dpo_tensor *t;
    if (!p) return dpo_fail(e, DPO_ERR_RANGE, 2, "no parameter %d", i + 1);
    if (!base) return NULL;
    dpo_llama_retain(m);
    t = dpo_tensor_wrap(DPO_F32, p->ndim, p->shape, base + p->offset, release_model, m, e);
    if (!t) dpo_llama_release(m);
    return t;
}

/* Parameter (or gradient) of block l's slot, or NULL when the model has none. */
static float *P_(dpo_llama *m, int l, int slot) {
    int i = m->idx[(size_t)l * NP + slot];
    return i < 0 ? NULL : m->params + m->info[i].offset;
}
static float *G_(dpo_llama *m, int l, int slot) {
    int i = m->idx[(size_t)l * NP + slot];
    return i < 0 || !m->grads ? NULL : m->grads + m->info[i].offset;
}

/* ---- rotary tables ------------------------------------------------------------------ */

/*
** The inverse frequencies of Hugging Face's rope init functions: theta^(-2i/D),
** divided by factor ("linear"), or Llama 3's piecewise scaling by wavelength.
*/
static double rope_inv_freq(const dpo_llama_config *c, int i) {
    double inv = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / c->head_dim));
    if (c->rope_type == DPO_ROPE_LINEAR) return inv / c->rope_factor;
    if (c->rope_type == DPO_ROPE_LLAMA3) {
        double lo = c->rope_original_ctx / c->rope_low_freq_factor;
        double hi = c->rope_original_ctx / c->rope_high_freq_factor;
        double wavelen = 2.0 * 3.14159265358979323846 / inv;
        if (wavelen > lo) return inv / c->rope_factor;
        if (wavelen < hi) return inv;
        {
            double s = (c->rope_original_ctx / wavelen - c->rope_low_freq_factor) /
                       (c->rope_high_freq_factor - c->rope_low_freq_factor);
            return (1.0 - s) * inv / c->rope_factor + s * inv;
        }
    }
    return inv;
}

/* cos and sin of position p * inv_freq[i] for p < n (float angles, as Hugging Face). */
static int ensure_rope(dpo_llama *m, int n, dpo_error *e) {
    int half = m->cfg.head_dim / 2;
    float *c, *s;
    if (n <= m->rope_len) return 0;
    c = (float *)malloc(sizeof(float) * (size_t)n * half);
    s = (float *)malloc(sizeof(float) * (size_t)n * half);
    if (!c || !s) {
        free(c), free(s);
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for the rotary tables");
        return -1;
    }
    for (int i = 0; i < half; i++) {
        float inv = (float)rope_inv_freq(&m->cfg, i);
        for (int p = 0; p < n; p++) {
            float a = (float)p * inv;
            c[(size_t)p * half + i] = (float)cos((double)a);
            s[(size_t)p * half + i] = (float)sin((double)a);
        }
    }
    free(m->rope_cos), free(m->rope_sin);
    m->rope_cos = c, m->rope_sin = s, m->rope_len = n;
    return 0;
}

/* ---- kernels ----------------------------------------------------------------------- */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
float vexpf(float) __asm__("expf") __attribute__((simd("notinbranch")));
#else
#define vexpf expf
#endif

/* out = x / rms(x) * w over rows of C; keeps 1/rms per row (when rstd) */
static void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int Nt,
                            int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C, rs;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
        rs = (float)(1.0 / sqrt(ss / C + eps));
        for (int i = 0; i < C; i++) o[i] = w[i] * (x[i] * rs);
        if (rstd) rstd[r] = rs;
    }
}

/* dinp += d rmsnorm; dw += over rows (per column, in row order) */
static void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                             const float *w, const float *rstd, int Nt, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *x = inp + (size_t)r * C, *g = dout + (size_t)r * C;
        float *dx = dinp + (size_t)r * C, rs = rstd[r], k;
        double a = 0;
        for (int i = 0; i < C; i++) a += (double)g[i] * w[i] * x[i];
        k = (float)(a / C) * rs * rs * rs;
        for (int i = 0; i < C; i++) dx[i] += g[i] * w[i] * rs - x[i] * k;
    }
    if (!dw) return;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++) {
        double s = 0;
        for (int r = 0; r < Nt; r++)
            s += (double)dout[(size_t)r * C + i] * inp[(size_t)r * C + i] * rstd[r];
        dw[i] += (float)s;
    }
}

/* out [Nt, OC] = inp [Nt, IC] @ w^T (w [OC, IC]) + b [OC] (b may be NULL) */
static void linear_forward(float *out, const float *inp, const float *w, const float *b, int Nt,
                           int IC, int OC) {
    if (Nt == 0) return;
    if (b) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < Nt; r++) memcpy(out + (size_t)r * OC, b, sizeof(float) * (size_t)OC);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Nt, OC, IC, 1.0f, inp, IC, w, IC,
                b ? 1.0f : 0.0f, out, OC);
}

/* dinp = dout @ w (overwritten); dw += dout^T @ inp; db += column sums of dout
   (dw, db NULL: a frozen weight, no gradient; dinp NULL: not needed) */
static void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *ones, int Nt, int IC, int OC) {
    if (Nt == 0) return;
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Nt, IC, OC, 1.0f, dout, OC, w, IC,
                    0.0f, dinp, IC);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, Nt, 1.0f, dout, OC, inp, IC,
                    1.0f, dw, IC);
    if (db) cblas_sgemv(CblasRowMajor, CblasTrans, Nt, OC, 1.0f, dout, OC, ones, 1, 1.0f, db, 1);
}

/* act [Nt, FF] = silu(gate) * up from gu [Nt, 2I] */
static void swiglu_forward(float *act, const float *gu, int Nt, int FF) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *g = gu + (size_t)r * 2 * FF, *u = g + FF;
        float *o = act + (size_t)r * FF;
#pragma omp simd
        for (int i = 0; i < FF; i++) o[i] = g[i] / (1.0f + vexpf(-g[i])) * u[i];
    }
}

/* dgu [Nt, 2I] from dact [Nt, FF] */
static void swiglu_backward(float *dgu, const float *dact, const float *gu, int Nt, int FF) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *g = gu + (size_t)r * 2 * FF, *u = g + FF, *d = dact + (size_t)r * FF;
        float *dg = dgu + (size_t)r * 2 * FF, *du = dg + FF;
#pragma omp simd
        for (int i = 0; i < FF; i++) {
            float s = 1.0f / (1.0f + vexpf(-g[i]));
            du[i] = d[i] * g[i] * s;
            dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        }
    }
}

/* Shapes of the attention part, for the kernels below. */
typedef struct {
    int NH, KV, D, Q, QKV;
    float eps;
    const float *qn, *kn; /* q_norm, k_norm weights [D], or NULL */
    const float *cos, *sin;
} heads;

/*
** qkr [Nt, QKV] from qkv: each q and k head RMS-normalised when qn (1/rms in
** qkn [Nt, NH + KV]), then rotated by its position (rotate-half: pairs i and
** i + D/2); v copied.
*/
static void rope_forward(float *qkr, float *qkn, const float *qkv, const int *pos, int Nt,
                         const heads *hd) {
    int D = hd->D, half = D / 2, nh = hd->NH + hd->KV;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *cs = hd->cos + (size_t)pos[r] * half, *sn = hd->sin + (size_t)pos[r] * half;
        for (int j = 0; j < nh; j++) {
            const float *x = qkv + (size_t)r * hd->QKV + (size_t)j * D;
            float *o = qkr + (size_t)r * hd->QKV + (size_t)j * D;
            if (hd->qn) {
                const float *w = j < hd->NH ? hd->qn : hd->kn;
                double ss = 0;
                float rs;
                for (int i = 0; i < D; i++) ss += (double)x[i] * x[i];
                rs = (float)(1.0 / sqrt(ss / D + hd->eps));
                for (int i = 0; i < D; i++) o[i] = w[i] * (x[i] * rs);
                qkn[(size_t)r * nh + j] = rs;
            } else {
                memcpy(o, x, sizeof(float) * (size_t)D);
            }
            for (int i = 0; i < half; i++) {
                float a = o[i], b = o[i + half];
                o[i] = a * cs[i] - b * sn[i];
                o[i + half] = b * cs[i] + a * sn[i];
            }
        }
        memcpy(qkr + (size_t)r * hd->QKV + (size_t)nh * D,
               qkv + (size_t)r * hd->QKV + (size_t)nh * D,
               sizeof(float) * (size_t)(hd->QKV - nh * D));
    }
}

/* dqkv [Nt, QKV] from dqkr (the rotation undone, then the norms'); dqn, dkn += */
static void rope_backward(float *dqkv, float *dqn, float *dkn, const float *dqkr, const float *qkv,
                          const float *qkn, const int *pos, int Nt, const heads *hd) {
    int D = hd->D, half = D / 2, nh = hd->NH + hd->KV;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++) {
        const float *cs = hd->cos + (size_t)pos[r] * half, *sn = hd->sin + (size_t)pos[r] * half;
        for (int j = 0; j < nh; j++) {
            const float *g = dqkr + (size_t)r * hd->QKV + (size_t)j * D;
            float *u = dqkv + (size_t)r * hd->QKV + (size_t)j * D;
            for (int i = 0; i < half; i++) {
                float a = g[i], b = g[i + half];
                u[i] = a * cs[i] + b * sn[i];
                u[i + half] = b * cs[i] - a * sn[i];
            }
        }
        memcpy(dqkv + (size_t)r * hd->QKV + (size_t)nh * D,
               dqkr + (size_t)r * hd->QKV + (size_t)nh * D,
               sizeof(float) * (size_t)(hd->QKV - nh * D));
    }
    if (!hd->qn) return;
        /* norm weights: per column, over tokens then heads in order */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < (dqn ? 2 * D : 0); i++) {
        int k = i < D; /* 1: q heads, 0: k heads */
        int c = k ? i : i - D, j0 = k ? 0 : hd->NH, j1 = k ? hd->NH : nh;
        double s = 0;
        for (int r = 0; r < Nt; r++)
            for (int j = j0; j < j1; j++) {
                size_t at = (size_t)r * hd->QKV + (size_t)j * D + c;
                s += (double)dqkv[at] * qkv[at] * qkn[(size_t)r * nh + j];
            }
        (k ? dqn : dkn)[c] += (float)s;
    }
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++)
        for (int j = 0; j < nh; j++) {
            const float *w = j < hd->NH ? hd->qn : hd->kn;
            const float *x = qkv + (size_t)r * hd->QKV + (size_t)j * D;
            float *u = dqkv + (size_t)r * hd->QKV + (size_t)j * D;
            float rs = qkn[(size_t)r * nh + j], kk;
            double a = 0;
            for (int i = 0; i < D; i++) a += (double)u[i] * w[i] * x[i];
            kk = (float)(a / D) * rs * rs * rs;
            for (int i = 0; i < D; i++) u[i] = u[i] * w[i] * rs - x[i] * kk;
        }
}

/* The packing of a batch (see gpt.c): rows, their shared prefixes, attention offsets. */
typedef struct {
    int N;
    const int *start, *len, *pre, *par, *att_off;
} packing;

/* Softmax over the visible columns 0..K+t of each row t of P [T, W]; zeros beyond. */
static void causal_softmax(float *P, int T, int K, int W) {
    for (int t = 0; t < T; t++) {
        float *row = P + (size_t)t * W, mx = -INFINITY, inv;
        int last = K + t;
        double s = 0;
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
}

/*
** Causal attention per row n and query head h over qkr [Nt, QKV]: P =
** softmax(Q K^T / sqrt(D)) over the prefix (the parent's keys first, then the
** row's own), y = P V into atty [Nt, Q]; head h uses key/value head h / (NH/KV).
*/
static void attention_forward(float *atty, float *att, const float *qkr, const packing *pk,
                              const heads *hd) {
    int D = hd->D, QKV = hd->QKV, Q = hd->Q, NH = hd->NH, grp = hd->NH / hd->KV;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for schedule(dynamic)
    for (int k = 0; k < pk->N * NH; k++) {
        int n = k / NH, h = k % NH, g = h / grp, T = pk->len[n], K = pk->pre[n], W = K + T;
        const float *q, *kk, *v;
        float *P, *y;
        if (T == 0) continue;
        q = qkr + (size_t)pk->start[n] * QKV + (size_t)h * D;
        kk = qkr + (size_t)pk->start[n] * QKV + Q + (size_t)g * D;
        v = kk + (size_t)hd->KV * D;
        y = atty + (size_t)pk->start[n] * Q + (size_t)h * D;
        P = att + pk->att_off[n] + (size_t)h * T * W;
        if (K > 0) {
            const float *kp = qkr + (size_t)pk->start[pk->par[n]] * QKV + Q + (size_t)g * D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, K, D, scale, q, QKV, kp, QKV,
                        0.0f, P, W);
        }
        for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
            int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, t1, D, scale,
                        q + (size_t)t0 * QKV, QKV, kk, QKV, 0.0f, P + (size_t)t0 * W + K, W);
        }
        causal_softmax(P, T, K, W);
        if (K > 0) {
            const float *vp =
                qkr + (size_t)pk->start[pk->par[n]] * QKV + Q + (size_t)hd->KV * D + (size_t)g * D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, K, 1.0f, P, W, vp, QKV,
                        0.0f, y, Q);
        }
        for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
            int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, D, t1, 1.0f,
                        P + (size_t)t0 * W + K, W, v, QKV, K > 0 ? 1.0f : 0.0f, y + (size_t)t0 * Q,
                        Q);
        }
    }
}

/* The backward of one (row, query head) into dqkr (zeroed before; everything accumulates). */
static void attention_backward_one(float *dqkr, const float *datty, const float *att,
                                   const float *qkr, const packing *pk, int n, int h,
                                   const heads *hd, float *dP) {
    int D = hd->D, QKV = hd->QKV, Q = hd->Q, g = h / (hd->NH / hd->KV);
    int T = pk->len[n], K = pk->pre[n], W = K + T;
    float scale = 1.0f / sqrtf((float)D);
    size_t qo = (size_t)pk->start[n] * QKV + (size_t)h * D;
    size_t ko = (size_t)pk->start[n] * QKV + Q + (size_t)g * D, vo = ko + (size_t)hd->KV * D;
    const float *q = qkr + qo, *kk = qkr + ko, *v = qkr + vo;
    const float *dy = datty + (size_t)pk->start[n] * Q + (size_t)h * D;
    const float *P = att + pk->att_off[n] + (size_t)h * T * W;
    float *dq = dqkr + qo, *dk = dqkr + ko, *dv = dqkr + vo;
    const float *kp = NULL, *vp = NULL;
    float *dkp = NULL, *dvp = NULL;
    if (T == 0) return;
    if (K > 0) {
        size_t pb = (size_t)pk->start[pk->par[n]] * QKV + Q + (size_t)g * D;
        kp = qkr + pb, vp = kp + (size_t)hd->KV * D;
        dkp = dqkr + pb, dvp = dkp + (size_t)hd->KV * D;
        /* dP = dY V^T ; dV = P^T dY */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, K, D, 1.0f, dy, Q, vp, QKV, 0.0f,
                    dP, W);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, D, T, 1.0f, P, W, dy, Q, 1.0f, dvp,
                    QKV);
    }
    for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
        int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, t1, D, 1.0f,
                    dy + (size_t)t0 * Q, Q, v, QKV, 0.0f, dP + (size_t)t0 * W + K, W);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t1, D, t1 - t0, 1.0f,
                    P + (size_t)t0 * W + K, W, dy + (size_t)t0 * Q, Q, 1.0f, dv, QKV);
    }
    /* dS = P * (dP - sum_j P dP) * scale over the visible columns */
    for (int t = 0; t < T; t++) {
        const float *p = P + (size_t)t * W;
        float *d = dP + (size_t)t * W;
        int last = K + t;
        double s = 0;
        for (int j = 0; j <= last; j++) s += (double)p[j] * d[j];
        for (int j = 0; j <= last; j++) d[j] = p[j] * (d[j] - (float)s) * scale;
        for (int j = last + 1; j < W; j++) d[j] = 0.0f;
    }
    /* dQ = dS K ; dK = dS^T Q */
    if (K > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, K, 1.0f, dP, W, kp, QKV, 1.0f,
                    dq, QKV);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, D, T, 1.0f, dP, W, q, QKV, 1.0f,
                    dkp, QKV);
    }
    for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
        int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, D, t1, 1.0f,
                    dP + (size_t)t0 * W + K, W, kk, QKV, 1.0f, dq + (size_t)t0 * QKV, QKV);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t1, D, t1 - t0, 1.0f,
                    dP + (size_t)t0 * W + K, W, q + (size_t)t0 * QKV, QKV, 1.0f, dk, QKV);
    }
}

/*
** dqkr [Nt, QKV] (zeroed here) from datty [Nt, Q]. One task per (row, kv
** head) runs that group's query heads in order, so a key/value head's
** gradient has one writer and one order. Rows without a parent go first;
** then rows with one, which add into their parent's keys and values (each
** parent has one child). scratch: [Tmax, Tmax] per thread.
*/
static void attention_backward(float *dqkr, const float *datty, const float *att, const float *qkr,
                               const packing *pk, const heads *hd, int Nt, float *scratch,
                               size_t scratch_per_thread) {
    int grp = hd->NH / hd->KV;
    memset(dqkr, 0, sizeof(float) * (size_t)Nt * hd->QKV);
    for (int phase = 0; phase < 2; phase++) {
#pragma omp parallel for schedule(dynamic)
        for (int k = 0; k < pk->N * hd->KV; k++) {
            int n = k / hd->KV, g = k % hd->KV;
            float *mine = scratch + (size_t)omp_get_thread_num() * scratch_per_thread;
            if ((pk->pre[n] > 0) != phase) continue;
            for (int h = g * grp; h < (g + 1) * grp; h++)
                attention_backward_one(dqkr, datty, att, qkr, pk, n, h, hd, mine);
        }
    }
}

/* ---- the activation arena ---------------------------------------------------------- */

/*
** Lay out the activation arena for N rows, Nt packed tokens, S scored
** positions, A attention floats per block and Tmax the longest row; nb blocks
** are kept (L when recording for backward, else 1, reused by every block).
** lora: the adapters run (their rank-r activations and scratch are laid out).
** Reallocates only when the arena is too small. Returns 0, or -1 (e filled).
*/
static int ensure_arena(dpo_llama *m, int N, int Nt, int S, size_t A, int Tmax, int nb,
                        int backward, int lora, dpo_error *e) {
    const dpo_llama_config *c = &m->cfg;
    size_t C = (size_t)c->hidden_size, V = (size_t)c->vocab_size, nt = (size_t)Nt;
    size_t FF = (size_t)c->intermediate_size, D = (size_t)c->head_dim;
    size_t Q = (size_t)c->n_head * D, QKV = Q + 2 * (size_t)c->n_kv_head * D;
    size_t nh = (size_t)(c->n_head + c->n_kv_head);
    size_t per_block = nt * (2 * C + 2 + QKV + nh + Q + 2 * FF) + A;
    size_t nthreads = (size_t)omp_get_max_threads();
    size_t ints = 6 * (size_t)N + 2 * nt + 3 * (size_t)S + 1,
           ones = (nt > (size_t)S ? nt : (size_t)S) + 1;
    size_t floats, scratch = backward ? nthreads * (size_t)Tmax * (size_t)Tmax : 0;
    float *f;
    if (ensure_rope(m, Tmax > 1 ? Tmax : 1, e)) return -1;
    m->chunk = (int)(LOGIT_BUDGET / V > 64 ? LOGIT_BUDGET / V : 64);
    if (m->chunk > S && S > 0) m->chunk = S;
    if (m->chunk < 1) m->chunk = 1;
    floats = nb * per_block + nt * FF + 3 * nt * C + nt * QKV + nt + (size_t)S * C + (size_t)S +
             (size_t)m->chunk * V + ones + scratch;
    if (backward) floats += 2 * nt * C + 3 * nt * FF + nt * Q + 2 * nt * QKV + (size_t)S * C;
    size_t r = lora ? (size_t)dpo_lora_cfg(m->lora)->r : 0;
    size_t widest = C > Q ? C : Q;
    if (FF > widest) widest = FF;
    if (lora) floats += (size_t)nb * LIN_COUNT * nt * r + nt * widest + 3 * nt * r;
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
        TAKE(b->rstd1, nt);
        TAKE(b->qkv, nt * QKV);
        TAKE(b->qkn, nt * nh);
        TAKE(b->att, A);
        TAKE(b->atty, nt * Q);
        TAKE(b->res2, nt * C);
        TAKE(b->rstd2, nt);
        TAKE(b->gu, 2 * nt * FF);
        TAKE(b->res3, nt * C);
        for (int k = 0; k < LIN_COUNT; k++) { /* contiguous: a group's [n r, Nt] */
            b->lora_u[k] = NULL;
            if (lora) TAKE(b->lora_u[k], nt * r);
        }
    }
    for (int l = nb; l < c->n_layer; l++) m->blocks[l] = m->blocks[0];
    TAKE(m->act, nt * FF);
    TAKE(m->ln, nt * C);
    TAKE(m->qkr, nt * QKV);
    TAKE(m->encoded, nt * C);
    TAKE(m->lnf, nt * C);
    TAKE(m->lnf_rstd, nt);
    TAKE(m->hs, (size_t)S * C);
    TAKE(m->lse, (size_t)S);
    TAKE(m->logits, (size_t)m->chunk * V);
    TAKE(m->ones, ones);
    if (backward) {
        TAKE(m->dres, nt * C);
        TAKE(m->dln, nt * C);
        TAKE(m->dbig, 2 * nt * FF);
        TAKE(m->dact, nt * FF);
        TAKE(m->datty, nt * Q);
        TAKE(m->dqkr, nt * QKV);
        TAKE(m->dqkv, nt * QKV);
        TAKE(m->dhs, (size_t)S * C);
    }
    TAKE(m->datt_scratch, scratch);
    m->lora_xd = m->lora_du = NULL;
    if (lora) {
        TAKE(m->lora_xd, nt * widest);
        TAKE(m->lora_du, 3 * nt * r);
    }
    m->scratch_per_thread = (size_t)Tmax * (size_t)Tmax;
#undef TAKE
    for (size_t i = 0; i < ones; i++) m->ones[i] = 1.0f;
    m->N = N, m->Nt = Nt, m->S = S;
    m->keep_layers = nb;
    m->lora_on = lora;
    m->lora_drop = lora && m->training && dpo_lora_cfg(m->lora)->dropout > 0;
    return 0;
}

/* ---- forward and backward of the packed batch ----------------------------------------- */

static packing packing_of(const dpo_llama *m) {
    packing pk;
    pk.N = m->N;
    pk.start = m->row_start;
    pk.len = m->row_len;
    pk.pre = m->row_pre;
    pk.par = m->row_par;
    pk.att_off = m->att_off;
    return pk;
}

static heads heads_of(dpo_llama *m, int l) {
    const dpo_llama_config *c = &m->cfg;
    heads hd;
    hd.NH = c->n_head, hd.KV = c->n_kv_head, hd.D = c->head_dim;
    hd.Q = c->n_head * c->head_dim;
    hd.QKV = hd.Q + 2 * c->n_kv_head * c->head_dim;
    hd.eps = c->rms_eps;
    hd.qn = P_(m, l, P_QN), hd.kn = P_(m, l, P_KN);
    hd.cos = m->rope_cos, hd.sin = m->rope_sin;
    return hd;
}

/*
** The adapted ones among modules k0 .. k1 - 1 of block l, which read the same
** input x and write columns col[k - k0] of one fused product, as a group: the
** sites of one block's modules follow each other, so their A products batch.
** Their rank-r activations live in lora_u[k0] .. (laid out contiguously).
** Returns how many are adapted, their sites and columns in site[] and cols[].
*/
static int lora_group(const dpo_llama *m, int l, int k0, int k1, const int *col, int *site,
                      int *cols) {
    int n = 0;
    for (int k = k0; k < k1 && m->lora_on; k++) {
        int s = m->lora_site[l * LIN_COUNT + k];
        if (s >= 0) site[n] = s, cols[n++] = col[k - k0];
    }
    return n;
}

static const int col0[1] = {0}; /* a module alone in its product */

/* y [Nt, ld] += the adapters of modules k0 .. k1 - 1 of block l on x (see lora_group). */
static void lora_fwd(dpo_llama *m, int l, int k0, int k1, const int *col, float *y, int ld,
                     const float *x) {
    int site[LIN_COUNT], cols[LIN_COUNT], n = lora_group(m, l, k0, k1, col, site, cols);
    if (n)
        dpo_lora_forward_group(m->lora, n, site, cols, y, ld, x, m->blocks[l].lora_u[k0],
                               m->lora_xd, m->Nt, m->lora_drop ? &m->drop_rng : NULL);
}

/* dx += their input gradient (dx NULL: none wanted); their dA and dB +=. */
static void lora_bwd(dpo_llama *m, int l, int k0, int k1, const int *col, float *dx,
                     const float *dy, int ld, const float *x) {
    int site[LIN_COUNT], cols[LIN_COUNT], n = lora_group(m, l, k0, k1, col, site, cols);
    if (n)
        dpo_lora_backward_group(m->lora, n, site, cols, dx, dy, ld, x, m->blocks[l].lora_u[k0],
                                m->lora_du, m->lora_xd, m->Nt, m->lora_drop);
}

/* Does block l have an adapter on any of modules k0 .. k1 - 1? */
static int has_site(const dpo_llama *m, int l, int k0, int k1) {
    for (int k = k0; k < k1; k++)
        if (m->lora_on && m->lora_site[l * LIN_COUNT + k] >= 0) return 1;
    return 0;
}

/* The hidden states lnf [Nt, C] of the packed tokens. */
static void forward_hidden(dpo_llama *m) {
    const dpo_llama_config *c = &m->cfg;
    int Nt = m->Nt, C = c->hidden_size, FF = c->intermediate_size, L = c->n_layer;
    float eps = c->rms_eps;
    packing pk = packing_of(m);
    const float *emb = m->params;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nt; r++)
        memcpy(m->encoded + (size_t)r * C, emb + (size_t)m->tok[r] * C, sizeof(float) * (size_t)C);
    for (int l = 0; l < L; l++) {
        block_acts *b = &m->blocks[l];
        heads hd = heads_of(m, l);
        const float *x = l == 0 ? m->encoded : m->blocks[l - 1].res3;
        size_t n = (size_t)Nt * C;
        int qkv_cols[3] = {0, hd.Q, hd.Q + (hd.QKV - hd.Q) / 2}, gu_cols[2] = {0, FF};
        rmsnorm_forward(m->ln, b->rstd1, x, P_(m, l, P_LN1), Nt, C, eps);
        linear_forward(b->qkv, m->ln, P_(m, l, P_Q_W), P_(m, l, P_Q_B), Nt, C, hd.QKV);
        lora_fwd(m, l, LIN_Q, LIN_V + 1, qkv_cols, b->qkv, hd.QKV, m->ln);
        rope_forward(m->qkr, b->qkn, b->qkv, m->pos, Nt, &hd);
        attention_forward(b->atty, b->att, m->qkr, &pk, &hd);
        linear_forward(b->res2, b->atty, P_(m, l, P_O_W), P_(m, l, P_O_B), Nt, hd.Q, C);
        lora_fwd(m, l, LIN_O, LIN_O + 1, col0, b->res2, C, b->atty);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->res2[i] += x[i];
        rmsnorm_forward(m->ln, b->rstd2, b->res2, P_(m, l, P_LN2), Nt, C, eps);
        linear_forward(b->gu, m->ln, P_(m, l, P_G_W), P_(m, l, P_G_B), Nt, C, 2 * FF);
        lora_fwd(m, l, LIN_G, LIN_U + 1, gu_cols, b->gu, 2 * FF, m->ln);
        swiglu_forward(m->act, b->gu, Nt, FF);
        linear_forward(b->res3, m->act, P_(m, l, P_D_W), P_(m, l, P_D_B), Nt, FF, C);
        lora_fwd(m, l, LIN_D, LIN_D + 1, col0, b->res3, C, m->act);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b->res3[i] += b->res2[i];
    }
    rmsnorm_forward(m->lnf, m->lnf_rstd, m->blocks[L - 1].res3,
                    m->params + m->info[m->i_norm].offset, Nt, C, eps);
}

static const float *head_weight(const dpo_llama *m) {
    return m->params + m->info[m->i_head].offset;
}

/* The head over the batch's scored positions. */
static dpo_head head_of(dpo_llama *m) {
    dpo_head h;
    h.C = m->cfg.hidden_size, h.V = m->cfg.vocab_size, h.N = m->N, h.S = m->S;
    h.chunk = m->chunk;
    h.W = head_weight(m);
    h.hidden = m->lnf;
    h.row = m->sc_row, h.tok = m->sc_tok, h.seq = m->sc_seq;
    h.hs = m->hs, h.lse = m->lse, h.logits = m->logits;
    return h;
}

/*
** The fused backward: dlogps [N] -> every parameter gradient (accumulated).
** With a frozen base (m->grads NULL) only the adapters' gradients: no base
** weight product, and nothing below the lowest adapted block.
*/
static void backward_all(dpo_llama *m, const float *dlogps) {
    const dpo_llama_config *c = &m->cfg;
    int Nt = m->Nt, C = c->hidden_size, L = c->n_layer;
    int FF = c->intermediate_size, lowest = 0;
    size_t n = (size_t)Nt * C;
    float *G = m->grads;
    float *demb = G, *dhead = G ? G + m->info[m->i_head].offset : NULL;
    float *dnorm = G ? G + m->info[m->i_norm].offset : NULL;
    const float *normw = m->params + m->info[m->i_norm].offset;
    packing pk = packing_of(m);

    /* LM head */
    memset(m->dln, 0, n * sizeof(float));
    {
        dpo_head h = head_of(m);
        dpo_head_backward(&h, dlogps, m->dhs, m->head_unit, dhead, m->dln);
    }
    memset(m->dres, 0, n * sizeof(float));
    rmsnorm_backward(m->dres, dnorm, m->dln, m->blocks[L - 1].res3, normw, m->lnf_rstd, Nt, C);

    if (!G) { /* adapters only: the chain stops at the lowest adapted block */
        lowest = L;
        for (int l = 0; l < L && lowest == L; l++)
            if (has_site(m, l, 0, LIN_COUNT)) lowest = l;
    }
    for (int l = L - 1; l >= lowest; l--) {
        block_acts *b = &m->blocks[l];
        heads hd = heads_of(m, l);
        const float *x = l == 0 ? m->encoded : m->blocks[l - 1].res3;
        int KVD = (hd.QKV - hd.Q) / 2, qkv_cols[3] = {0, hd.Q, hd.Q + KVD}, gu_cols[2] = {0, FF};
        /* below this point, is an input gradient wanted? */
        int below = G || l > lowest, attn = below || has_site(m, l, LIN_Q, LIN_O + 1);
        int mlp = attn || has_site(m, l, LIN_G, LIN_U + 1);
        /* MLP branch: res3 = res2 + down(silu(gate(ln2)) * up(ln2)) */
        float eps = c->rms_eps;
        swiglu_forward(m->act, b->gu, Nt, FF); /* not kept: recomputed */
        linear_backward(mlp ? m->dact : NULL, G_(m, l, P_D_W), G_(m, l, P_D_B), m->dres, m->act,
                        P_(m, l, P_D_W), m->ones, Nt, FF, C);
        lora_bwd(m, l, LIN_D, LIN_D + 1, col0, mlp ? m->dact : NULL, m->dres, C, m->act);
        if (mlp) {
            swiglu_backward(m->dbig, m->dact, b->gu, Nt, FF);
            rmsnorm_forward(m->ln, NULL, b->res2, P_(m, l, P_LN2), Nt, C, eps); /* ln2 */
            linear_backward(attn ? m->dln : NULL, G_(m, l, P_G_W), G_(m, l, P_G_B), m->dbig, m->ln,
                            P_(m, l, P_G_W), m->ones, Nt, C, 2 * FF);
            lora_bwd(m, l, LIN_G, LIN_U + 1, gu_cols, attn ? m->dln : NULL, m->dbig, 2 * FF, m->ln);
        }
        if (!attn) break;
        rmsnorm_backward(m->dres, G_(m, l, P_LN2), m->dln, b->res2, P_(m, l, P_LN2), b->rstd2, Nt,
                         C);
        /* attention branch: res2 = x + o(attn(rope(norm(qkv(ln1(x)))))) */
        linear_backward(m->datty, G_(m, l, P_O_W), G_(m, l, P_O_B), m->dres, b->atty,
                        P_(m, l, P_O_W), m->ones, Nt, hd.Q, C);
        lora_bwd(m, l, LIN_O, LIN_O + 1, col0, m->datty, m->dres, C, b->atty);
        if (!below && !has_site(m, l, LIN_Q, LIN_V + 1)) break;
        rope_forward(m->qkr, b->qkn, b->qkv, m->pos, Nt, &hd); /* recomputed */
        attention_backward(m->dqkr, m->datty, b->att, m->qkr, &pk, &hd, Nt, m->datt_scratch,
                           m->scratch_per_thread);
        rope_backward(m->dqkv, G_(m, l, P_QN), G_(m, l, P_KN), m->dqkr, b->qkv, b->qkn, m->pos, Nt,
                      &hd);
        rmsnorm_forward(m->ln, NULL, x, P_(m, l, P_LN1), Nt, C, eps); /* ln1, recomputed */
        linear_backward(below ? m->dln : NULL, G_(m, l, P_Q_W), G_(m, l, P_Q_B), m->dqkv, m->ln,
                        P_(m, l, P_Q_W), m->ones, Nt, C, hd.QKV);
        lora_bwd(m, l, LIN_Q, LIN_V + 1, qkv_cols, below ? m->dln : NULL, m->dqkv, hd.QKV, m->ln);
        if (!below) break;
        rmsnorm_backward(m->dres, G_(m, l, P_LN1), m->dln, x, P_(m, l, P_LN1), b->rstd1, Nt, C);
    }
    if (!G) return;
        /* embeddings: scatter-add by columns so repeated tokens sum in one order */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++)
        for (int r = 0; r < Nt; r++) demb[(size_t)m->tok[r] * C + i] += m->dres[(size_t)r * C + i];
}

/* ---- log-probabilities as an autograd node ------------------------------------------- */

typedef struct {
    dpo_llama *m;
    uint64_t run;
} logps_ctx;

static void logps_release(void *ctx) {
    logps_ctx *c = (logps_ctx *)ctx;
    dpo_llama_release(c->m);
    free(c);
}

static dpo_status logps_backward(void *ctx, const dpo_tensor *gout, dpo_error *e) {
    logps_ctx *c = (logps_ctx *)ctx;
    dpo_llama *m = c->m;
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

static int mask_at(const dpo_tensor *mask, int64_t i) {
    return dpo_tensor_get(mask, i) != 0;
}

/* Rows longer than the context or Mistral's window are refused. */
static int check_length(const dpo_llama *m, int row, int len, dpo_error *e) {
    if (len > m->cfg.n_ctx) {
        dpo_fail(e, DPO_ERR_SHAPE, 1, "row %d needs %d positions but max_position_embeddings is %d",
                 row, len, m->cfg.n_ctx);
        return -1;
    }
    if (m->cfg.sliding_window > 0 && len > m->cfg.sliding_window) {
        dpo_fail(e, DPO_ERR_SHAPE, 1,
                 "row %d needs %d positions but sliding_window is %d (sliding-window attention "
                 "is not supported: sequences must fit in the window)",
                 row, len, m->cfg.sliding_window);
        return -1;
    }
    return 0;
}

/* The packing of ids/mask into m's arena (see gpt.c's dpo_gpt_logps); record: for backward. */
static int plan_batch(dpo_llama *m, const int32_t *id, const dpo_tensor *mask, int N, int T,
                      int record, int lora, dpo_error *e) {
    int V = m->cfg.vocab_size, Nt = 0, S = 0, Tmax = 0;
    size_t A = 0;
    int *lastv, *pre, *par;
    if ((size_t)3 * N > m->plan_cap) {
        free(m->plan);
        m->plan = (int *)malloc(sizeof(int) * 3 * (size_t)(N + 1));
        m->plan_cap = m->plan ? 3 * (size_t)N : 0;
        if (!m->plan) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory"), -1;
    }
    lastv = m->plan, pre = m->plan + N, par = m->plan + 2 * N;
    for (int n = 0; n < N; n++) {
        int last = 0, cnt = 0;
        for (int t = 1; t < T; t++)
            if (mask_at(mask, (int64_t)n * T + t)) last = t, cnt++;
        for (int t = 0; t <= last; t++) {
            int32_t v = id[(size_t)n * T + t];
            if (v < 0 || v >= V)
                return dpo_fail(e, DPO_ERR_RANGE, 1,
                                "token id %d at row %d, position %d is out of range 0..%d", v,
                                n + 1, t + 1, V - 1),
                       -1;
        }
        if (check_length(m, n + 1, last, e)) return -1;
        lastv[n] = last, pre[n] = 0, par[n] = -1;
        S += cnt;
        if (last > Tmax) Tmax = last;
    }
    /* a row that begins with another row's tokens (a pair's shared prompt) reuses them */
    for (int n = 1; n < N; n++) {
        int best = 0, who = -1;
        for (int p = 0; p < n; p++) {
            int k = 0, lim = lastv[n] < lastv[p] ? lastv[n] : lastv[p];
            if (par[p] != -1) continue;
            while (k < lim && id[(size_t)n * T + k] == id[(size_t)p * T + k]) k++;
            if (k > best) best = k, who = p;
        }
        if (best >= MIN_SHARE) {
            pre[n] = best, par[n] = who;
            par[who] = -2;
        }
    }
    for (int n = 0; n < N; n++) {
        int len = lastv[n] - pre[n];
        Nt += len;
        A += (size_t)m->cfg.n_head * len * lastv[n];
        if ((double)A > 2147483647.0 || Nt > 100000000)
            return dpo_fail(e, DPO_ERR_SHAPE, 1, "batch too large (%d rows of up to %d tokens)", N,
                            T),
                   -1;
    }
    if (ensure_arena(m, N, Nt, S, A, Tmax, record ? m->cfg.n_layer : 1, record, lora, e)) return -1;
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
                    m->sc_row[sc] = t - 1 < m->row_pre[n] ? m->row_start[m->row_par[n]] + t - 1
                                                          : m->row_start[n] + t - 1 - m->row_pre[n];
                    m->sc_tok[sc] = id[(size_t)n * T + t];
                    m->sc_seq[sc] = n;
                    sc++;
                }
    }
    return 0;
}

dpo_tensor *dpo_llama_logps(dpo_llama *m, const dpo_tensor *ids_in, const dpo_tensor *mask,
                            int record, dpo_tensor **counts_out, dpo_error *e) {
    char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
    dpo_tensor *ids, *logps = NULL, *counts = NULL;
    int N, T, bad, lora;
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
    lora = m->lora && dpo_lora_enabled(m->lora);
    record = record && !m->frozen && (m->grads || (lora && dpo_lora_grads(m->lora)));
    bad = plan_batch(m, dpo_i32(ids), mask, N, T, record, lora, e);
    dpo_tensor_release(ids);
    if (bad) return NULL;
    nshape = N;
    logps = dpo_tensor_new(DPO_F32, 1, &nshape, e);
    counts = logps ? dpo_tensor_zeros(DPO_F32, 1, &nshape, e) : NULL;
    if (!counts) {
        dpo_tensor_release(logps);
        return NULL;
    }
    if (m->Nt > 0) forward_hidden(m);
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
        dpo_llama_retain(m);
        cu.backward = logps_backward;
        cu.release = logps_release;
        cu.ctx = c;
        if (dpo_ag_record_custom(logps, DPO_OP_LLAMA_LOGPS, &cu, e) != DPO_OK) {
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

static dpo_status check_prompt(const dpo_llama *m, const int32_t *ids, int n, dpo_error *e) {
    int V = m->cfg.vocab_size;
    if (n < 1) {
        dpo_fail(e, DPO_ERR_SHAPE, 1, "the prompt needs at least one token");
        return DPO_ERR_SHAPE;
    }
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= V) {
            dpo_fail(e, DPO_ERR_RANGE, 1, "token id %d at position %d is out of range 0..%d",
                     ids[t], t + 1, V - 1);
            return DPO_ERR_RANGE;
        }
    return DPO_OK;
}

dpo_status dpo_llama_next_logits(dpo_llama *m, const int32_t *ids, int n, float *logits,
                                 dpo_error *e) {
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    dpo_status st = check_prompt(m, ids, n, e);
    if (st != DPO_OK) return st;
    if (check_length(m, 1, n, e)) return DPO_ERR_SHAPE;
    if (ensure_arena(m, 1, n, 1, (size_t)m->cfg.n_head * n * n, n, 1, 0,
                     m->lora && dpo_lora_enabled(m->lora), e))
        return e ? e->status : DPO_ERR_MEM;
    m->lora_drop = 0;
    m->row_start[0] = 0, m->row_len[0] = n, m->att_off[0] = 0;
    m->row_pre[0] = 0, m->row_par[0] = -1, m->row_full[0] = n;
    for (int t = 0; t < n; t++) m->tok[t] = ids[t], m->pos[t] = t;
    m->run++;
    forward_hidden(m);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.0f, head_weight(m), C,
                m->lnf + (size_t)(n - 1) * C, 1, 0.0f, logits, 1);
    return DPO_OK;
}

/* y [OC] = w [OC, IC] x + b (b may be NULL) */
static void linear_vec(float *y, const float *w, const float *b, const float *x, int IC, int OC) {
    if (b) memcpy(y, b, sizeof(float) * (size_t)OC);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, IC, 1.0f, w, IC, x, 1, b ? 1.0f : 0.0f, y, 1);
}

/*
** One position through the model with a KV cache [L][cap][2 KVD] (rotated
** keys, then values); logits [V] out. w: scratch of cached_work floats.
*/
static size_t cached_work(const dpo_llama *m, int cap) {
    const dpo_llama_config *c = &m->cfg;
    size_t Q = (size_t)c->n_head * c->head_dim, QKV = Q + 2 * (size_t)c->n_kv_head * c->head_dim;
    size_t rank = m->lora ? (size_t)dpo_lora_cfg(m->lora)->r : 0;
    return 2 * (size_t)c->hidden_size + 2 * QKV + (size_t)c->n_head + c->n_kv_head + Q +
           3 * (size_t)c->intermediate_size + (size_t)cap + rank;
}

/* y [out] += the adapter of linear module k of block l on one position x, using u [r]. */
static void lora_one(dpo_llama *m, int l, int k, float *y, const float *x, float *u) {
    int s = m->lora && dpo_lora_enabled(m->lora) ? m->lora_site[l * LIN_COUNT + k] : -1;
    if (s >= 0) dpo_lora_forward(m->lora, s, y, x, u, NULL, 1, NULL);
}

static void cached_step(dpo_llama *m, float *cache, int cap, int token, int pos, float *logits,
                        float *w) {
    const dpo_llama_config *c = &m->cfg;
    int C = c->hidden_size, V = c->vocab_size, L = c->n_layer, FF = c->intermediate_size;
    int D = c->head_dim, KV = c->n_kv_head, grp = c->n_head / c->n_kv_head;
    size_t KVD = (size_t)KV * D;
    float scale = 1.0f / sqrtf((float)D);
    heads hd0 = heads_of(m, 0);
    float *x = w, *h = x + C, *qkv = h + C, *qkr = qkv + hd0.QKV, *qkn = qkr + hd0.QKV;
    float *y = qkn + c->n_head + KV, *gu = y + hd0.Q, *act = gu + 2 * FF, *att = act + FF;
    float *u = att + cap; /* [r] */
    memcpy(x, m->params + (size_t)token * C, sizeof(float) * (size_t)C);
    for (int l = 0; l < L; l++) {
        heads hd = heads_of(m, l);
        float *kv = cache + (size_t)l * cap * 2 * KVD;
        rmsnorm_forward(h, NULL, x, P_(m, l, P_LN1), 1, C, c->rms_eps);
        linear_vec(qkv, P_(m, l, P_Q_W), P_(m, l, P_Q_B), h, C, hd.QKV);
        lora_one(m, l, LIN_Q, qkv, h, u);
        lora_one(m, l, LIN_K, qkv + hd.Q, h, u);
        lora_one(m, l, LIN_V, qkv + hd.Q + KVD, h, u);
        rope_forward(qkr, qkn, qkv, &pos, 1, &hd);
        memcpy(kv + (size_t)pos * 2 * KVD, qkr + hd.Q, sizeof(float) * 2 * KVD);
        for (int hh = 0; hh < c->n_head; hh++) {
            const float *q = qkr + (size_t)hh * D;
            int g = hh / grp;
            float mx = -INFINITY;
            double s = 0;
            for (int j = 0; j <= pos; j++) {
                const float *k = kv + (size_t)j * 2 * KVD + (size_t)g * D;
                float d = 0;
                for (int i = 0; i < D; i++) d += q[i] * k[i];
                att[j] = d * scale;
                if (att[j] > mx) mx = att[j];
            }
            for (int j = 0; j <= pos; j++) {
                att[j] = expf(att[j] - mx);
                s += att[j];
            }
            for (int i = 0; i < D; i++) y[hh * D + i] = 0;
            for (int j = 0; j <= pos; j++) {
                const float *v = kv + (size_t)j * 2 * KVD + KVD + (size_t)g * D;
                float pj = (float)(att[j] / s);
                for (int i = 0; i < D; i++) y[hh * D + i] += pj * v[i];
            }
        }
        linear_vec(h, P_(m, l, P_O_W), P_(m, l, P_O_B), y, hd.Q, C);
        lora_one(m, l, LIN_O, h, y, u);
        for (int i = 0; i < C; i++) x[i] += h[i];
        rmsnorm_forward(h, NULL, x, P_(m, l, P_LN2), 1, C, c->rms_eps);
        linear_vec(gu, P_(m, l, P_G_W), P_(m, l, P_G_B), h, C, 2 * FF);
        lora_one(m, l, LIN_G, gu, h, u);
        lora_one(m, l, LIN_U, gu + FF, h, u);
        swiglu_forward(act, gu, 1, FF);
        linear_vec(h, P_(m, l, P_D_W), P_(m, l, P_D_B), act, FF, C);
        lora_one(m, l, LIN_D, h, act, u);
        for (int i = 0; i < C; i++) x[i] += h[i];
    }
    rmsnorm_forward(h, NULL, x, m->params + m->info[m->i_norm].offset, 1, C, c->rms_eps);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.0f, head_weight(m), C, h, 1, 0.0f, logits, 1);
}

int32_t *dpo_llama_generate(dpo_llama *m, const int32_t *prompt, int n_prompt,
                            const dpo_gen_opts *o, int *n_out, dpo_error *e) {
    const dpo_llama_config *c = &m->cfg;
    int V = c->vocab_size, total;
    size_t KVD = (size_t)c->n_kv_head * c->head_dim;
    float *cache = NULL, *work = NULL, *logits = NULL;
    int32_t *seq = NULL, *out = NULL;
    void *buf = NULL;
    dpo_rng r;
    int made = 0;
    *n_out = 0;
    if (check_prompt(m, prompt, n_prompt, e) != DPO_OK) return NULL;
    if (o->max_new_tokens < 0) return dpo_fail(e, DPO_ERR_ARG, 2, "max_new_tokens must be >= 0");
    if (n_prompt > c->n_ctx || o->max_new_tokens > c->n_ctx - n_prompt)
        return dpo_fail(e, DPO_ERR_ARG, 2,
                        "prompt (%d tokens) + max_new_tokens (%d) exceeds the model's "
                        "max_position_embeddings (%d)",
                        n_prompt, o->max_new_tokens, c->n_ctx);
    total = n_prompt + o->max_new_tokens;
    if (check_length(m, 1, total > 1 ? total - 1 : 1, e)) return NULL;
    if (ensure_rope(m, total, e)) return NULL;
    seq = (int32_t *)malloc(sizeof(int32_t) * (size_t)(total + 1));
    out = (int32_t *)malloc(sizeof(int32_t) * (size_t)(o->max_new_tokens + 1));
    logits = (float *)malloc(sizeof(float) * (size_t)V);
    buf = malloc((size_t)8 * (size_t)V);
    if (o->use_cache) {
        cache = (float *)dpo_alloc(sizeof(float) * (size_t)c->n_layer * (size_t)total * 2 * KVD);
        work = (float *)malloc(sizeof(float) * cached_work(m, total));
    }
    if (!seq || !out || !logits || !buf || (o->use_cache && (!cache || !work))) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for generation");
        goto done;
    }
    memcpy(seq, prompt, sizeof(int32_t) * (size_t)n_prompt);
    dpo_rng_seed(&r, o->seed);
    if (o->use_cache)
        for (int t = 0; t < n_prompt; t++) cached_step(m, cache, total, seq[t], t, logits, work);
    for (int k = 0; k < o->max_new_tokens; k++) {
        int next, len = n_prompt + k, stop = 0;
        if (!o->use_cache && dpo_llama_next_logits(m, seq, len, logits, e) != DPO_OK) goto done;
        next = dpo_gen_pick(logits, V, o, &r, buf);
        seq[len] = next;
        out[made++] = next;
        for (int s = 0; s < o->n_stop; s++)
            if (o->stop_ids[s] == next) stop = 1;
        if (stop || k + 1 == o->max_new_tokens) break;
        if (o->use_cache) cached_step(m, cache, total, next, len, logits, work);
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
