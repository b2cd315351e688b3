/*
** lora.h: low-rank adapters (LoRA) on a model's linear layers, as PEFT has them.
**
** An adapter set holds, for each adapted linear module ("site"), A [r, in]
** and B [out, r] (PEFT's lora_A.weight and lora_B.weight layouts), in one
** parameter arena and one gradient arena of its own, apart from the model's.
** The adapted layer computes
**     y = W x + b + s * B (A dropout(x)),   s = alpha / r  (alpha / sqrt(r) with rsLoRA)
** with A drawn as PEFT's default (Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in),
** 1/sqrt(in))) and B zero, so a new adapter changes nothing.
**
** The kernels work on a model's packed rows: the model calls
** dpo_lora_forward right after its own product (y holds W x + b) and
** dpo_lora_backward right after its own input gradient; both are products
** over all Nt rows at once (cblas_sgemm), the rank-r intermediate kept by
** the caller for the backward, transposed: u^T = A dropout(x)^T [r, Nt] (the
** shapes OpenBLAS runs fastest when r is small). Dropout masks are
** regenerated from a per-site seed, never stored. Buffers belong to the
** caller (its activation arena): nothing is allocated in a step.
**
** A model adopting adapters (gpt.c is the example): maps each of its linear
** modules to a site index or -1 (dpo_lora_matches for PEFT's target names);
** frees its base gradient arena and skips every dW / db / norm / embedding
** gradient when adapters train; lays out u^T [r, Nt] per adapted module and
** layer, plus xd [Nt, max in] and du^T [r, Nt] scratch, in its activation
** arena; calls dpo_lora_forward after each adapted product and
** dpo_lora_backward after each adapted input gradient; merges with
** dpo_lora_merge (fan_in_fan_out for [in, out] weights). A model whose
** products are fused over several modules (llama.c) keeps one site per
** module and runs the modules that share an input as one group (the
** _group kernels), on each module's columns of the fused product.
**
** Ownership: refcounted; tensors from dpo_lora_tensor keep the set alive.
** Errors as everywhere in the engine: a status or NULL, and a dpo_error.
*/
#ifndef DPO_LORA_H
#define DPO_LORA_H

#include "base/rng.h"
#include "tensor/tensor.h"

typedef struct dpo_lora_config {
    int r;          /* rank, >= 1 */
    float alpha;    /* lora_alpha */
    float dropout;  /* on the adapter's input, in train mode; [0, 1) */
    int use_rslora; /* s = alpha / sqrt(r) instead of alpha / r */
    uint64_t seed;  /* draws A */
} dpo_lora_config;

/* One adapted linear module. */
typedef struct dpo_lora_site {
    char name[96];      /* the module: "transformer.h.0.attn.c_attn" */
    int in, out;        /* the module maps [in] -> [out] */
    size_t a_off;       /* A [r, in], in floats from the arena start */
    size_t b_off;       /* B [out, r] */
    uint64_t drop_seed; /* dropout seed of the last forward through it */
} dpo_lora_site;

typedef struct dpo_lora dpo_lora;

/*
** Adapters on n modules, named names[i], mapping in[i] -> out[i]; with a
** gradient arena when with_grads. A initialised from c->seed in site order.
*/
dpo_lora *dpo_lora_new(const dpo_lora_config *c, int n, const char *const *names, const int *in,
                       const int *out, int with_grads, dpo_error *e);
/*
** Adapters on those of a model's nlin linear modules (module j named
** modules[j], mapping in[j] -> out[j]) that match one of the n targets as
** PEFT matches them (n == 0: every module). site[j] receives module j's site
** index, or -1. A target that matches no module is an error naming it,
** followed by `help` in parentheses (what the model's modules are called).
*/
dpo_lora *dpo_lora_on_modules(const dpo_lora_config *c, int nlin, const char *const *modules,
                              const int *in, const int *out, int n, const char *const *targets,
                              const char *help, int with_grads, int *site, dpo_error *e);
/* A copy of the parameters; with a (zeroed) gradient arena when with_grads. */
dpo_lora *dpo_lora_clone(const dpo_lora *l, int with_grads, dpo_error *e);
void dpo_lora_retain(dpo_lora *l);
void dpo_lora_release(dpo_lora *l);

/* Does module name `module` match target `target` as PEFT matches them:
   equal, or ending in "." target. */
int dpo_lora_matches(const char *module, const char *target);

const dpo_lora_config *dpo_lora_cfg(const dpo_lora *l);
float dpo_lora_scale(const dpo_lora *l);
int dpo_lora_num_sites(const dpo_lora *l);
const dpo_lora_site *dpo_lora_site_info(const dpo_lora *l, int i);
/* The site of a module name, or -1. */
int dpo_lora_find(const dpo_lora *l, const char *module);
size_t dpo_lora_num_params(const dpo_lora *l);
float *dpo_lora_params(dpo_lora *l);
float *dpo_lora_grads(dpo_lora *l); /* NULL without a gradient arena */

/*
** Tensor k of the set as a view (k = 2 * site + 0 for A [r, in], + 1 for B
** [out, r]), or its gradient (NULL without one). The view keeps l alive.
*/
dpo_tensor *dpo_lora_tensor(dpo_lora *l, int k, int grad, dpo_error *e);

/* Adapters on or off: off, a model computes its base alone (the DPO reference). */
void dpo_lora_set_enabled(dpo_lora *l, int on);
int dpo_lora_enabled(const dpo_lora *l);

/*
** y [Nt, out] += s * (dropout(x) A^T) B^T for site i, x [Nt, in].
** ut [r, Nt] receives A dropout(x)^T (kept for the backward). With drop (a
** generator, train mode and dropout > 0), the site's mask seed is drawn from
** it and xd [Nt, in] is scratch for the dropped input; otherwise xd is unused.
*/
void dpo_lora_forward(dpo_lora *l, int i, float *y, const float *x, float *ut, float *xd, int Nt,
                      dpo_rng *drop);

/*
** The backward of dpo_lora_forward: given dy [Nt, out], x [Nt, in] and ut
** [r, Nt] of the forward, accumulates dB += s dy^T u, dA += du^T dropout(x)
** (du = s dy B, into scratch dut [r, Nt] transposed) and dx [Nt, in] +=
** dropout'(du A).
** drop: whether the forward used dropout (its masks are regenerated; xd
** [Nt, in] scratch then). Without a gradient arena only dx is computed;
** with dx NULL (no input gradient wanted) only dA and dB.
*/
void dpo_lora_backward(dpo_lora *l, int i, float *dx, const float *dy, const float *x,
                       const float *ut, float *dut, float *xd, int Nt, int drop);

/*
** The adapters of n modules that read the same input x and write column
** blocks of one fused product (Llama's q_proj, k_proj and v_proj in the [Nt,
** QKV] rows of q, k and v): site[j] writes y's columns col[j] .. col[j] +
** out, rows ld floats apart (and reads dy's the same way). ut [n r, Nt]
** keeps member j's (transposed) rank-r activations in its rows j r ..; dut
** is [n r, Nt] scratch; xd as above. When the sites follow each other
** (site[j] = site[0] + j), read inputs of one width and run without dropout,
** their A matrices lie side by side and each A product is one sgemm for the
** group.
*/
void dpo_lora_forward_group(dpo_lora *l, int n, const int *site, const int *col, float *y, int ld,
                            const float *x, float *ut, float *xd, int Nt, dpo_rng *drop);
void dpo_lora_backward_group(dpo_lora *l, int n, const int *site, const int *col, float *dx,
                             const float *dy, int ld, const float *x, const float *ut, float *dut,
                             float *xd, int Nt, int drop);

/*
** Fold site i into its base weight: W += s * B A. W is [out, in] (a Linear),
** or [in, out] when fan_in_fan_out (GPT-2's Conv1D).
*/
void dpo_lora_merge(const dpo_lora *l, int i, float *W, int fan_in_fan_out);

#endif
