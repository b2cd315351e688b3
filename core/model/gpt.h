/*
** gpt.h: the GPT-2 model of the engine.
**
** GPT-2 exactly (pre-LayerNorm blocks, causal multi-head attention, GELU with
** the tanh approximation, learned positions, final LayerNorm, LM head tied to
** the token embedding), with Hugging Face GPT2LMHeadModel's parameter names
** and layouts (Conv1D weights stored [in, out]). All parameters live in one
** arena, their gradients in another; activations in a third, sized for the
** largest batch seen and reused.
**
** Sequences are packed: a batch of N rows is processed as the concatenation of
** each row's needed prefix (up to its last scored token), so padding costs
** nothing; attention runs per row over its own prefix. The vocabulary
** projection and log-softmax run only on scored positions, in chunks of rows.
*/
#ifndef DPO_GPT_H
#define DPO_GPT_H

#include "base/rng.h"
#include "tensor/tensor.h"

typedef struct dpo_gpt_config {
    int vocab_size; /* V */
    int n_ctx;      /* maximum sequence length (positions) */
    int n_layer;    /* L */
    int n_head;     /* NH */
    int n_embd;     /* C */
    float eps;      /* LayerNorm epsilon, 1e-5 */
    float dropout;  /* residual, embedding and attention dropout in train mode */
} dpo_gpt_config;

/* One parameter tensor in the arena, in Hugging Face order. */
typedef struct dpo_gpt_param {
    char name[64]; /* "transformer.h.0.attn.c_attn.weight" */
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats from the arena start */
    size_t numel;
} dpo_gpt_param;

typedef struct dpo_gpt dpo_gpt;

/* A new model with GPT-2's initialisation drawn from seed. */
dpo_gpt *dpo_gpt_new(const dpo_gpt_config *cfg, uint64_t seed, dpo_error *e);
/* A copy of the parameters (not the gradients); frozen when freeze. */
dpo_gpt *dpo_gpt_clone(const dpo_gpt *m, int freeze, dpo_error *e);
void dpo_gpt_retain(dpo_gpt *m);
void dpo_gpt_release(dpo_gpt *m);

const dpo_gpt_config *dpo_gpt_cfg(const dpo_gpt *m);
int dpo_gpt_num_tensors(const dpo_gpt *m);
const dpo_gpt_param *dpo_gpt_param_info(const dpo_gpt *m, int i);
size_t dpo_gpt_num_params(const dpo_gpt *m);
/* Parameter i (or its gradient) as a tensor view that keeps the model alive.
** Gradients: NULL for a frozen model. */
dpo_tensor *dpo_gpt_param_tensor(dpo_gpt *m, int i, int grad, dpo_error *e);
float *dpo_gpt_params(dpo_gpt *m);

/* Frozen: no gradient arena, logps never records. */
void dpo_gpt_freeze(dpo_gpt *m);
int dpo_gpt_frozen(const dpo_gpt *m);
void dpo_gpt_set_training(dpo_gpt *m, int on);
int dpo_gpt_training(const dpo_gpt *m);
void dpo_gpt_seed_dropout(dpo_gpt *m, uint64_t seed);
/* The dropout generator itself, for exact save and restore (a checkpoint). */
dpo_rng *dpo_gpt_dropout_rng(dpo_gpt *m);

/*
** Per-row sums of log p(ids[n,t] | ids[n,<t]) over t with mask[n,t] != 0
** (t >= 1). ids int32 [N, T], mask int32 or float32 [N, T]. logps and counts
** (float32 [N]) are filled. With record, activations are kept and `logps`
** becomes an autograd node whose backward runs the fused backward into the
** gradient arena (the caller checks grad mode).
*/
dpo_tensor *dpo_gpt_logps(dpo_gpt *m, const dpo_tensor *ids, const dpo_tensor *mask, int record,
                          dpo_tensor **counts, dpo_error *e);

/* Logits [V] of the next token after ids[0..n), without a cache (reference path). */
dpo_status dpo_gpt_next_logits(dpo_gpt *m, const int32_t *ids, int n, float *logits, dpo_error *e);

typedef struct dpo_gen_opts {
    int max_new_tokens;
    double temperature; /* 0: greedy */
    int top_k;          /* 0: off */
    double top_p;       /* 1: off */
    uint64_t seed;
    const int32_t *stop_ids;
    int n_stop;
    int use_cache; /* 0: recompute the whole prefix each token (for tests) */
} dpo_gen_opts;

/* The next token from logits [V] (modified) as o says; scratch: V * 8 bytes. */
int dpo_gen_pick(float *logits, int V, const dpo_gen_opts *o, dpo_rng *r, void *scratch);

/* New tokens after the prompt; *n_out gets their count (<= max_new_tokens). */
int32_t *dpo_gpt_generate(dpo_gpt *m, const int32_t *prompt, int n_prompt, const dpo_gen_opts *o,
                          int *n_out, dpo_error *e);

#endif
