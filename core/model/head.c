/*
** head.c: the language-model head over a batch's scored positions (head.h).
*/
#include "model/head.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* expf with glibc's SIMD variants (libmvec) for `omp simd` loops, as in gpt.c */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
float vexpf(float) __asm__("expf") __attribute__((simd("notinbranch")));
#else
#define vexpf expf
#endif

/* logits [n, V] = hs[s0 .. s0 + n) W^T */
static void chunk_logits(const dpo_head *h, int s0, int n) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, h->V, h->C, 1.0f,
                h->hs + (size_t)s0 * h->C, h->C, h->W, h->C, 0.0f, h->logits, h->V);
}

/* log-sum-exp of a row of logits: float exponentials summed in double */
static void row_lse(const float *row, int V, float *lse) {
    float mx = -INFINITY;
    double s = 0;
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
#pragma omp simd reduction(+ : s)
    for (int v = 0; v < V; v++) s += vexpf(row[v] - mx);
    *lse = mx + (float)log(s);
}

/*
** The chunk's logits become g * (onehot(target) - softmax) per position, g
** = dlogps[its row] (1 when dlogps is NULL), and out [n, C] = that times W.
*/
static void chunk_input_grad(const dpo_head *h, int s0, int n, const float *dlogps, float *out) {
    int V = h->V;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        int s = s0 + i;
        float g = dlogps ? dlogps[h->seq[s]] : 1.0f, lse = h->lse[s];
        float *row = h->logits + (size_t)i * V;
#pragma omp simd
        for (int v = 0; v < V; v++) row[v] = -g * vexpf(row[v] - lse);
        row[h->tok[s]] += g;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, h->C, V, 1.0f, h->logits, V, h->W,
                h->C, 0.0f, out, h->C);
}

void dpo_head_forward(const dpo_head *h, float *logps, float *counts, float *unit) {
    int C = h->C, V = h->V, S = h->S;
    double *acc = (double *)calloc((size_t)h->N + 1, sizeof(double));
#pragma omp parallel for schedule(static)
    for (int s = 0; s < S; s++)
        memcpy(h->hs + (size_t)s * C, h->hidden + (size_t)h->row[s] * C, sizeof(float) * (size_t)C);
    for (int s0 = 0; s0 < S; s0 += h->chunk) {
        int n = S - s0 < h->chunk ? S - s0 : h->chunk;
        chunk_logits(h, s0, n);
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++) row_lse(h->logits + (size_t)i * V, V, &h->lse[s0 + i]);
        for (int i = 0; i < n; i++) {
            int s = s0 + i;
            float lp = h->logits[(size_t)i * V + h->tok[s]] - h->lse[s];
            if (acc) acc[h->seq[s]] += lp;
            if (counts) counts[h->seq[s]] += 1.0f;
        }
        if (unit) chunk_input_grad(h, s0, n, NULL, unit + (size_t)s0 * C);
    }
    for (int n = 0; n < h->N; n++) logps[n] = acc ? (float)acc[n] : NAN;
    free(acc);
}

void dpo_head_backward(const dpo_head *h, const float *dlogps, float *dhs, int unit, float *dW,
                       float *dhidden) {
    int C = h->C, S = h->S;
    if (unit) /* all but the factor dlogps came from the forward */
        for (int s = 0; s < S; s++) {
            float g = dlogps[h->seq[s]], *d = dhs + (size_t)s * C;
            for (int i = 0; i < C; i++) d[i] *= g;
        }
    for (int s0 = 0; s0 < S && !unit; s0 += h->chunk) { /* the logits again, a chunk at a time */
        int n = S - s0 < h->chunk ? S - s0 : h->chunk;
        chunk_logits(h, s0, n);
        chunk_input_grad(h, s0, n, dlogps, dhs + (size_t)s0 * C);
        if (dW)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, h->V, C, n, 1.0f, h->logits, h->V,
                        h->hs + (size_t)s0 * C, C, 1.0f, dW, C);
    }
    /* a packed token shared by a parent row and its child may be scored twice: add */
    for (int s = 0; s < S; s++) {
        float *d = dhidden + (size_t)h->row[s] * C;
        const float *g = dhs + (size_t)s * C;
        for (int i = 0; i < C; i++) d[i] += g[i];
    }
}
