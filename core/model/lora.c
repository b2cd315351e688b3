/*
** lora.c: low-rank adapters: their arenas, PEFT's initialisation, and the
** forward/backward kernel pair a model calls from inside its own fused
** forward and backward (lora.h says what each promises).
**
** Every product runs over all Nt packed rows at once through cblas_sgemm:
** two thin products forward (x A^T, then u B^T), four backward (dB, du, dA,
** dx), each of cost Nt * r * (in or out): at r = 16 on a 768-wide model a
** few percent of the base layer's product.
**
** Dropout on the adapter input: element j of row t of site i is kept with
** probability 1 - p by a hash of (the site's seed, t * in + j), so the
** backward regenerates the mask without storing it.
*/
#include "model/lora.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dpo_lora {
    int refcount;
    dpo_lora_config cfg;
    float scale; /* s: alpha / r, or alpha / sqrt(r) */
    int enabled;
    int nsites;
    dpo_lora_site *sites; /* [nsites] */
    size_t total;         /* floats in each arena */
    float *params;        /* [total]: every site's A in turn, then every B */
    float *grads;         /* [total], or NULL */
    float *dbt;           /* [r, widest out]: dB^T in a backward (with grads) */
};

/* ---- the set ------------------------------------------------------------------------- */

static int check_config(const dpo_lora_config *c, dpo_error *e) {
    if (c->r < 1 || c->r > 65536)
        return dpo_fail(e, DPO_ERR_ARG, 1, "r must be in 1..65536 (got %d)", c->r), -1;
    if (!isfinite(c->alpha))
        return dpo_fail(e, DPO_ERR_ARG, 1, "lora_alpha must be finite (got %g)", (double)c->alpha),
               -1;
    if (!(c->dropout >= 0 && c->dropout < 1))
        return dpo_fail(e, DPO_ERR_ARG, 1, "lora_dropout must be in [0, 1) (got %g)",
                        (double)c->dropout),
               -1;
    return 0;
}

/* An empty set of n sites, arenas allocated, nothing filled. */
static dpo_lora *shell(const dpo_lora_config *c, int n, const char *const *names, const int *in,
                       const int *out, int with_grads, dpo_error *e) {
    dpo_lora *l;
    size_t r;
    if (check_config(c, e)) return NULL;
    if (n < 1) return dpo_fail(e, DPO_ERR_ARG, 2, "no modules to adapt");
    r = (size_t)c->r;
    l = (dpo_lora *)calloc(1, sizeof *l);
    if (l) l->sites = (dpo_lora_site *)calloc((size_t)n, sizeof *l->sites);
    if (!l || !l->sites) goto oom;
    l->refcount = 1;
    l->cfg = *c;
    l->scale = c->use_rslora ? c->alpha / sqrtf((float)c->r) : c->alpha / (float)c->r;
    l->enabled = 1;
    l->nsites = n;
    for (int i = 0; i < n; i++) {
        dpo_lora_site *s = &l->sites[i];
        if (in[i] < 1 || out[i] < 1 || strlen(names[i]) >= sizeof s->name) {
            free(l->sites);
            free(l);
            return dpo_fail(e, DPO_ERR_ARG, 2, "module %d ('%.100s') is not a linear module", i + 1,
                            names[i]);
        }
        snprintf(s->name, sizeof s->name, "%s", names[i]);
        s->in = in[i], s->out = out[i];
        s->a_off = l->total;
        l->total += r * (size_t)in[i];
    }
    for (int i = 0; i < n; i++) {
        l->sites[i].b_off = l->total;
        l->total += (size_t)out[i] * r;
    }
    l->params = (float *)dpo_alloc(l->total * sizeof(float));
    if (!l->params) goto oom;
    if (with_grads) {
        size_t widest = 0;
        for (int i = 0; i < n; i++)
            if ((size_t)out[i] > widest) widest = (size_t)out[i];
        l->grads = (float *)dpo_alloc(l->total * sizeof(float));
        l->dbt = (float *)dpo_alloc(r * widest * sizeof(float));
        if (!l->grads || !l->dbt) goto oom;
        memset(l->grads, 0, l->total * sizeof(float));
    }
    return l;
oom:
    if (l) {
        dpo_free(l->params);
        dpo_free(l->grads);
        dpo_free(l->dbt);
        free(l->sites);
        free(l);
    }
    return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory allocating adapters");
}

dpo_lora *dpo_lora_new(const dpo_lora_config *c, int n, const char *const *names, const int *in,
                       const int *out, int with_grads, dpo_error *e) {
    dpo_lora *l = shell(c, n, names, in, out, with_grads, e);
    dpo_rng g;
    if (!l) return NULL;
    dpo_rng_seed(&g, c->seed);
    /* PEFT: kaiming_uniform_(A, a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound
       gain * sqrt(3 / fan_in) = 1 / sqrt(in); zeros_(B) */
    for (int i = 0; i < n; i++) {
        dpo_lora_site *s = &l->sites[i];
        float *A = l->params + s->a_off;
        double bound = 1.0 / sqrt((double)s->in);
        for (size_t k = 0; k < (size_t)c->r * s->in; k++)
            A[k] = (float)((2.0 * dpo_rng_uniform(&g) - 1.0) * bound);
        memset(l->params + s->b_off, 0, sizeof(float) * (size_t)s->out * c->r);
    }
    return l;
}

dpo_lora *dpo_lora_on_modules(const dpo_lora_config *c, int nlin, const char *const *modules,
                              const int *in, const int *out, int n, const char *const *targets,
                              const char *help, int with_grads, int *site, dpo_error *e) {
    const char **names = (const char **)malloc(sizeof(char *) * (size_t)(nlin > 0 ? nlin : 1));
    int *dims = (int *)malloc(sizeof(int) * 2 * (size_t)(nlin > 0 ? nlin : 1));
    int cnt = 0;
    dpo_lora *l = NULL;
    if (!names || !dims) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        goto done;
    }
    for (int t = 0; t < n; t++) { /* a target matching nothing is a misspelling */
        int hit = 0;
        for (int j = 0; j < nlin && !hit; j++) hit = dpo_lora_matches(modules[j], targets[t]);
        if (!hit) {
            dpo_fail(e, DPO_ERR_ARG, 2,
                     "target module '%.100s' matches no linear module of the model (%s)",
                     targets[t], help);
            goto done;
        }
    }
    for (int j = 0; j < nlin; j++) {
        int hit = n == 0;
        for (int t = 0; t < n && !hit; t++) hit = dpo_lora_matches(modules[j], targets[t]);
        site[j] = hit ? cnt : -1;
        if (!hit) continue;
        names[cnt] = modules[j];
        dims[cnt] = in[j];
        dims[nlin + cnt] = out[j];
        cnt++;
    }
    l = dpo_lora_new(c, cnt, names, dims, dims + nlin, with_grads, e);
done:
    free(names);
    free(dims);
    return l;
}

dpo_lora *dpo_lora_clone(const dpo_lora *src, int with_grads, dpo_error *e) {
    const char **names = (const char **)malloc(sizeof(char *) * (size_t)src->nsites);
    int *dims = (int *)malloc(sizeof(int) * 2 * (size_t)src->nsites);
    dpo_lora *l = NULL;
    if (!names || !dims) {
        free(names);
        free(dims);
        return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    }
    for (int i = 0; i < src->nsites; i++) {
        names[i] = src->sites[i].name;
        dims[i] = src->sites[i].in;
        dims[src->nsites + i] = src->sites[i].out;
    }
    l = shell(&src->cfg, src->nsites, names, dims, dims + src->nsites, with_grads, e);
    free(names);
    free(dims);
    if (!l) return NULL;
    memcpy(l->params, src->params, l->total * sizeof(float));
    l->enabled = src->enabled;
    return l;
}

void dpo_lora_retain(dpo_lora *l) {
    if (l) l->refcount++;
}

void dpo_lora_release(dpo_lora *l) {
    if (!l || --l->refcount > 0) return;
    dpo_free(l->params);
    dpo_free(l->grads);
    dpo_free(l->dbt);
    free(l->sites);
    free(l);
}

int dpo_lora_matches(const char *module, const char *target) {
    size_t m = strlen(module), t = strlen(target);
    if (t == 0 || t > m) return 0;
    if (strcmp(module + m - t, target) != 0) return 0;
    return m == t || module[m - t - 1] == '.';
}

const dpo_lora_config *dpo_lora_cfg(const dpo_lora *l) {
    return &l->cfg;
}
float dpo_lora_scale(const dpo_lora *l) {
    return l->scale;
}
int dpo_lora_num_sites(const dpo_lora *l) {
    return l->nsites;
}
const dpo_lora_site *dpo_lora_site_info(const dpo_lora *l, int i) {
    return (i >= 0 && i < l->nsites) ? &l->sites[i] : NULL;
}
int dpo_lora_find(const dpo_lora *l, const char *module) {
    for (int i = 0; i < l->nsites; i++)
        if (strcmp(l->sites[i].name, module) == 0) return i;
    return -1;
}
size_t dpo_lora_num_params(const dpo_lora *l) {
    return l->total;
}
float *dpo_lora_params(dpo_lora *l) {
    return l->params;
}
float *dpo_lora_grads(dpo_lora *l) {
    return l->grads;
}
void dpo_lora_set_enabled(dpo_lora *l, int on) {
    l->enabled = on != 0;
}
int dpo_lora_enabled(const dpo_lora *l) {
    return l->enabled;
}

static void release_set(void *ctx) {
    dpo_lora_release((dpo_lora *)ctx);
}

dpo_tensor *dpo_lora_tensor(dpo_lora *l, int k, int grad, dpo_error *e) {
    const dpo_lora_site *s = dpo_lora_site_info(l, k >= 0 ? k / 2 : -1);
    float *base = grad ? l->grads : l->params;
    int64_t shape[2];
    dpo_tensor *t;
    if (!s) return dpo_fail(e, DPO_ERR_RANGE, 2, "no adapter tensor %d", k + 1);
    if (!base) return NULL;
    if (k % 2 == 0)
        shape[0] = l->cfg.r, shape[1] = s->in;
    else
        shape[0] = s->out, shape[1] = l->cfg.r;
    dpo_lora_retain(l);
    t = dpo_tensor_wrap(DPO_F32, 2, shape, base + (k % 2 == 0 ? s->a_off : s->b_off), release_set,
                        l, e);
    if (!t) dpo_lora_release(l);
    return t;
}

/* ---- kernels ------------------------------------------------------------------------- */

/* The dropout factor of element idx of a site's input: 0 or 1 / (1 - p). */
static inline float keep(uint64_t seed, size_t idx, float p) {
    uint64_t z = seed + (uint64_t)(idx + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 >= p ? 1.0f / (1.0f - p) : 0.0f;
}

/* out [Nt, in] = x [Nt, in] with the site's dropout mask applied (out may be x). */
static void dropped(float *out, const float *x, size_t n, uint64_t seed, float p) {
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < n; k++) out[k] = x[k] * keep(seed, k, p);
}

/*
** The rank-r intermediates are kept transposed, u^T [r, Nt]: every product of
** an adapter then has r as its row count or its inner dimension, never as its
** column count, the shapes OpenBLAS runs about twice as fast (it packs
** row-major [Nt, r] outputs poorly).
**
** Site i on its own: u^T = A dropout(x)^T, y (rows ld apart) += s u B^T.
*/
static void site_forward(dpo_lora *l, int i, float *y, int ld, const float *x, float *ut, float *xd,
                         int Nt, dpo_rng *drop) {
    dpo_lora_site *s = &l->sites[i];
    int r = l->cfg.r, in = s->in, out = s->out;
    const float *A = l->params + s->a_off, *B = l->params + s->b_off;
    if (drop && l->cfg.dropout > 0) {
        s->drop_seed = dpo_rng_next(drop);
        dropped(xd, x, (size_t)Nt * in, s->drop_seed, l->cfg.dropout);
        x = xd;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, Nt, in, 1.0f, A, in, x, in, 0.0f, ut,
                Nt);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, Nt, out, r, l->scale, ut, Nt, B, r, 1.0f, y,
                ld);
}

/* du^T [r, Nt] = s B^T dy^T, and dB += s dy^T u, for site i (dy rows ld apart). */
static void site_backward_b(dpo_lora *l, int i, const float *dy, int ld, const float *ut,
                            float *dut, int Nt) {
    const dpo_lora_site *s = &l->sites[i];
    int r = l->cfg.r, out = s->out;
    const float *B = l->params + s->b_off;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, r, Nt, out, l->scale, B, r, dy, ld, 0.0f,
                dut, Nt);
    if (l->grads) { /* dB^T [r, out] = s u^T dy, then added in B's layout */
        float *dB = l->grads + s->b_off;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, out, Nt, l->scale, ut, Nt, dy, ld,
                    0.0f, l->dbt, out);
        for (int o = 0; o < out; o++)
            for (int k = 0; k < r; k++) dB[(size_t)o * r + k] += l->dbt[(size_t)k * out + o];
    }
}

/* The A side of site i's backward: dA += du^T dropout(x), dx += dropout'(du A). */
static void site_backward_a(dpo_lora *l, int i, float *dx, const float *x, const float *dut,
                            float *xd, int Nt, int drop) {
    const dpo_lora_site *s = &l->sites[i];
    int r = l->cfg.r, in = s->in;
    const float *A = l->params + s->a_off;
    float p = l->cfg.dropout;
    size_t n = (size_t)Nt * in;
    if (l->grads) {
        if (drop) {
            dropped(xd, x, n, s->drop_seed, p);
            x = xd;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, in, Nt, 1.0f, dut, Nt, x, in,
                    1.0f, l->grads + s->a_off, in);
    }
    if (!dx) return;
    if (!drop) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Nt, in, r, 1.0f, dut, Nt, A, in, 1.0f,
                    dx, in);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Nt, in, r, 1.0f, dut, Nt, A, in, 0.0f, xd,
                in);
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < n; k++) dx[k] += xd[k] * keep(s->drop_seed, k, p);
}

void dpo_lora_forward(dpo_lora *l, int i, float *y, const float *x, float *ut, float *xd, int Nt,
                      dpo_rng *drop) {
    if (Nt > 0) site_forward(l, i, y, l->sites[i].out, x, ut, xd, Nt, drop);
}

void dpo_lora_backward(dpo_lora *l, int i, float *dx, const float *dy, const float *x,
                       const float *ut, float *dut, float *xd, int Nt, int drop) {
    if (Nt <= 0) return;
    drop = drop && l->cfg.dropout > 0;
    site_backward_b(l, i, dy, l->sites[i].out, ut, dut, Nt);
    site_backward_a(l, i, dx, x, dut, xd, Nt, drop);
}

/*
** Can the group's A products run as one? Without dropout (each module draws
** its own mask), when its sites follow each other and read inputs of one
** width: their A matrices then lie side by side in the arena, [n r, in].
*/
static int batched(const dpo_lora *l, int n, const int *site, int drop) {
    if (n < 2 || drop) return 0;
    for (int j = 1; j < n; j++)
        if (site[j] != site[0] + j || l->sites[site[j]].in != l->sites[site[0]].in) return 0;
    return 1;
}

void dpo_lora_forward_group(dpo_lora *l, int n, const int *site, const int *col, float *y, int ld,
                            const float *x, float *ut, float *xd, int Nt, dpo_rng *drop) {
    size_t rn = (size_t)l->cfg.r * (size_t)(Nt > 0 ? Nt : 0);
    if (Nt <= 0) return;
    if (!batched(l, n, site, drop && l->cfg.dropout > 0)) {
        for (int j = 0; j < n; j++)
            site_forward(l, site[j], y + col[j], ld, x, ut + j * rn, xd, Nt, drop);
        return;
    }
    {
        const dpo_lora_site *s0 = &l->sites[site[0]];
        int r = l->cfg.r, in = s0->in;
        /* u^T [n r, Nt] = [A_1; ...; A_n] x^T, then each module's own B */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n * r, Nt, in, 1.0f,
                    l->params + s0->a_off, in, x, in, 0.0f, ut, Nt);
        for (int j = 0; j < n; j++)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, Nt, l->sites[site[j]].out, r,
                        l->scale, ut + j * rn, Nt, l->params + l->sites[site[j]].b_off, r, 1.0f,
                        y + col[j], ld);
    }
}

void dpo_lora_backward_group(dpo_lora *l, int n, const int *site, const int *col, float *dx,
                             const float *dy, int ld, const float *x, const float *ut, float *dut,
                             float *xd, int Nt, int drop) {
    size_t rn = (size_t)l->cfg.r * (size_t)(Nt > 0 ? Nt : 0);
    if (Nt <= 0) return;
    drop = drop && l->cfg.dropout > 0;
    for (int j = 0; j < n; j++)
        site_backward_b(l, site[j], dy + col[j], ld, ut + j * rn, dut + j * rn, Nt);
    if (!batched(l, n, site, drop)) {
        for (int j = 0; j < n; j++) site_backward_a(l, site[j], dx, x, dut + j * rn, xd, Nt, drop);
        return;
    }
    {
        const dpo_lora_site *s0 = &l->sites[site[0]];
        int nr = n * l->cfg.r, in = s0->in;
        /* [dA_1; ...; dA_n] += du^T x ; dx += du [A_1; ...; A_n] */
        if (l->grads)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, in, Nt, 1.0f, dut, Nt, x, in,
                        1.0f, l->grads + s0->a_off, in);
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Nt, in, nr, 1.0f, dut, Nt,
                        l->params + s0->a_off, in, 1.0f, dx, in);
    }
}

void dpo_lora_merge(const dpo_lora *l, int i, float *W, int fan_in_fan_out) {
    const dpo_lora_site *s = &l->sites[i];
    int r = l->cfg.r, in = s->in, out = s->out;
    const float *A = l->params + s->a_off, *B = l->params + s->b_off;
    if (fan_in_fan_out) /* W [in, out] += s A^T B^T */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, in, out, r, l->scale, A, in, B, r, 1.0f,
                    W, out);
    else /* W [out, in] += s B A */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, l->scale, B, r, A, in,
                    1.0f, W, in);
}
