/*
** llama.h: the Llama-family decoder of the engine (Llama 2 / 3.x, TinyLlama,
** SmolLM2, Mistral, Qwen2 / 2.5, Qwen3).
**
** Pre-RMSNorm blocks; rotary position embeddings with Hugging Face's
** rotate-half convention (rope_theta, scaling none, "linear" or "llama3");
** causal attention with grouped-query / multi-query heads (n_kv_head divides
** n_head) of head_dim each; optional q/k/v/o biases (Llama's attention_bias,
** Qwen2's q/k/v biases), optional per-head q_norm / k_norm RMSNorm before the
** rotation (Qwen3); a SwiGLU MLP (silu(gate) * up, then down, optional
** biases); a final RMSNorm; an LM head tied to the embedding or its own.
** Parameter names and layouts are Hugging Face *ForCausalLM's ([out, in]).
**
** Parameters live in one arena, their gradients in another, activations in a
** third, reused. Batches are packed as in gpt.h: each row up to its last
** scored token, a pair's shared prompt computed once, the vocabulary
** projection only at scored positions, in chunks. The model has no dropout
** (Hugging Face's attention_dropout must be 0); the dropout generator exists
** so a checkpoint's state round-trips as it does for GPT-2.
*/
#ifndef DPO_LLAMA_H
#define DPO_LLAMA_H

#include "base/rng.h"
#include "model/gpt.h" /* dpo_gen_opts */
#include "model/lora.h"
#include "tensor/tensor.h"

typedef enum { DPO_ROPE_DEFAULT, DPO_ROPE_LINEAR, DPO_ROPE_LLAMA3 } dpo_rope_type;

typedef struct dpo_llama_config {
    int vocab_size;        /* V */
    int hidden_size;       /* C */
    int intermediate_size; /* I */
    int n_layer;           /* L */
    int n_head;            /* NH query heads */
    int n_kv_head;         /* KV key/value heads; divides NH */
    int head_dim;          /* D; NH * D need not be C (Qwen3) */
    int n_ctx;             /* max_position_embeddings */
    int sliding_window;    /* 0: none; else rows longer than this are refused */
    float rms_eps;
    double rope_theta;
    dpo_rope_type rope_type;
    double rope_factor;           /* linear and llama3 */
    double rope_low_freq_factor;  /* llama3 */
    double rope_high_freq_factor; /* llama3 */
    int rope_original_ctx;        /* llama3: original_max_position_embeddings */
    int tie_embeddings;           /* lm_head is embed_tokens */
    int qkv_bias;                 /* q_proj, k_proj, v_proj have biases */
    int o_bias;                   /* o_proj has a bias */
    int mlp_bias;                 /* gate_proj, up_proj, down_proj have biases */
    int qk_norm;                  /* q_norm, k_norm per head (Qwen3) */
} dpo_llama_config;

typedef struct dpo_llama dpo_llama;

/* A new model: weights N(0, init_std), biases 0, norm weights 1, drawn from seed. */
dpo_llama *dpo_llama_new(const dpo_llama_config *cfg, double init_std, uint64_t seed, dpo_error *e);
/* A copy of the parameters (not the gradients); frozen when freeze. */
dpo_llama *dpo_llama_clone(const dpo_llama *m, int freeze, dpo_error *e);
void dpo_llama_retain(dpo_llama *m);
void dpo_llama_release(dpo_llama *m);

const dpo_llama_config *dpo_llama_cfg(const dpo_llama *m);
int dpo_llama_num_tensors(const dpo_llama *m);
/* Parameter i's name, shape and place (the same record GPT-2 uses). */
const dpo_gpt_param *dpo_llama_param_info(const dpo_llama *m, int i);
size_t dpo_llama_num_params(const dpo_llama *m);
/* Parameter i (or its gradient) as a tensor view that keeps the model alive.
** Gradients: NULL for a frozen model. */
dpo_tensor *dpo_llama_param_tensor(dpo_llama *m, int i, int grad, dpo_error *e);

/* The parameter arena [dpo_llama_num_params]. */
float *dpo_llama_params(dpo_llama *m);

/*
** Low-rank adapters (lora.h) on the linear modules matching any of
** targets[0..n) as PEFT matches target_modules ("q_proj", "mlp.down_proj";
** n = 0: every linear module, PEFT's "all-linear" less the LM head). Each of
** q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj is its own
** site (model.layers.N.self_attn.q_proj), though q/k/v and gate/up are one
** product. The base is frozen: its gradient arena is freed. An error when
** a target matches nothing or the model has adapters already.
*/
dpo_status dpo_llama_lora_apply(dpo_llama *m, const dpo_lora_config *c, int n,
                                const char *const *targets, dpo_error *e);
/* The model's adapters (borrowed), or NULL. */
dpo_lora *dpo_llama_lora(dpo_llama *m);
/* Fold the adapters into the base weights (W += s B A) and drop them; the
   base trains again unless the model is frozen. */
dpo_status dpo_llama_lora_merge(dpo_llama *m, dpo_error *e);
/* Does the base have a gradient arena (not frozen, no adapters)? */
int dpo_llama_base_trainable(const dpo_llama *m);

void dpo_llama_freeze(dpo_llama *m);
int dpo_llama_frozen(const dpo_llama *m);
void dpo_llama_set_training(dpo_llama *m, int on);
int dpo_llama_training(const dpo_llama *m);
dpo_rng *dpo_llama_dropout_rng(dpo_llama *m);

/* As dpo_gpt_logps: per-row sums of log p over masked positions, one autograd node. */
dpo_tensor *dpo_llama_logps(dpo_llama *m, const dpo_tensor *ids, const dpo_tensor *mask, int record,
                            dpo_tensor **counts, dpo_error *e);

/* Logits [V] of the next token after ids[0..n), without a cache (reference path). */
dpo_status dpo_llama_next_logits(dpo_llama *m, const int32_t *ids, int n, float *logits,
                                 dpo_error *e);

/* New tokens after the prompt; *n_out gets their count (<= max_new_tokens). */
int32_t *dpo_llama_generate(dpo_llama *m, const int32_t *prompt, int n_prompt,
                            const dpo_gen_opts *o, int *n_out, dpo_error *e);

#endif
