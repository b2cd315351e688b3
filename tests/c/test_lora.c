/*
** test_lora.c: the adapter kernels of core/model/lora.c against naive loops
** written here from the formulas (y += s B A x; dB += s dy u^T; dA += du x^T
** with du = s B^T dy; dx += A^T du; W += s B A), with and without dropout,
** alone and as a group sharing an input (batched or not), PEFT's
** initialisation bounds, name matching and argument checks.
*/
#include "check.h"
#include "model/lora.h"

#include <stdlib.h>

#define NT  7
#define IN  5
#define OUT 6
#define R   3

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void fill(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) x[i] = frand(&seed);
}

/* The elements of xd equal to x times 1/(1-p) are kept; zeros dropped. */
static float keep_of(float xd, float x, float p) {
    if (xd == 0.0f && x != 0.0f) return 0.0f;
    return 1.0f / (1.0f - p);
}

static void kernels(float p) {
    const char *names[1] = {"layer.proj"};
    int in = IN, out = OUT;
    dpo_lora_config c = {R, 6.0f, p, 0, 9};
    dpo_error e;
    dpo_lora *l = dpo_lora_new(&c, 1, names, &in, &out, 1, &e);
    float *A, *B, *dA, *dB;
    float x[NT * IN], y[NT * OUT], y0[NT * OUT], u[R * NT], xd[NT * IN], du[R * NT];
    float dy[NT * OUT], dx[NT * IN], dx0[NT * IN], keep[NT * IN];
    float s = 6.0f / R;
    dpo_rng g;
    CHECK(l != NULL);
    if (!l) return;
    A = dpo_lora_params(l) + dpo_lora_site_info(l, 0)->a_off;
    B = dpo_lora_params(l) + dpo_lora_site_info(l, 0)->b_off;
    dA = dpo_lora_grads(l) + dpo_lora_site_info(l, 0)->a_off;
    dB = dpo_lora_grads(l) + dpo_lora_site_info(l, 0)->b_off;
    /* PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 */
    for (int k = 0; k < R * IN; k++) CHECK(fabsf(A[k]) <= 1.0f / sqrtf((float)IN));
    for (int k = 0; k < OUT * R; k++) CHECK(B[k] == 0.0f);
    CHECK_NEAR(dpo_lora_scale(l), 2.0, 0);
    fill(B, OUT * R, 3);
    fill(x, NT * IN, 4);
    fill(y, NT * OUT, 5);
    fill(dy, NT * OUT, 6);
    fill(dx, NT * IN, 7);
    memcpy(y0, y, sizeof y);
    memcpy(dx0, dx, sizeof dx);
    dpo_rng_seed(&g, 11);
    dpo_lora_forward(l, 0, y, x, u, xd, NT, p > 0 ? &g : NULL);
    for (int k = 0; k < NT * IN; k++) keep[k] = p > 0 ? keep_of(xd[k], x[k], p) : 1.0f;
    if (p > 0) { /* some dropped, some kept */
        int dropped = 0;
        for (int k = 0; k < NT * IN; k++) dropped += keep[k] == 0.0f;
        CHECK(dropped > 0 && dropped < NT * IN);
    }
    for (int t = 0; t < NT; t++) {
        double ut[R];
        for (int r = 0; r < R; r++) {
            ut[r] = 0;
            for (int i = 0; i < IN; i++)
                ut[r] += (double)A[r * IN + i] * x[t * IN + i] * keep[t * IN + i];
            CHECK_NEAR(u[r * NT + t], ut[r], 1e-5); /* kept transposed, [R, NT] */
        }
        for (int o = 0; o < OUT; o++) {
            double v = y0[t * OUT + o];
            for (int r = 0; r < R; r++) v += s * B[o * R + r] * ut[r];
            CHECK_NEAR(y[t * OUT + o], v, 1e-5);
        }
    }
    dpo_lora_backward(l, 0, dx, dy, x, u, du, xd, NT, p > 0);
    for (int o = 0; o < OUT; o++)
        for (int r = 0; r < R; r++) {
            double v = 0;
            for (int t = 0; t < NT; t++) v += s * dy[t * OUT + o] * u[r * NT + t];
            CHECK_NEAR(dB[o * R + r], v, 1e-5);
        }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < IN; i++) {
            double v = 0;
            for (int t = 0; t < NT; t++) {
                double d = 0;
                for (int o = 0; o < OUT; o++) d += s * dy[t * OUT + o] * B[o * R + r];
                v += d * x[t * IN + i] * keep[t * IN + i];
            }
            CHECK_NEAR(dA[r * IN + i], v, 1e-5);
        }
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < IN; i++) {
            double v = 0;
            for (int r = 0; r < R; r++) {
                double d = 0;
                for (int o = 0; o < OUT; o++) d += s * dy[t * OUT + o] * B[o * R + r];
                v += d * A[r * IN + i];
            }
            CHECK_NEAR(dx[t * IN + i], dx0[t * IN + i] + v * keep[t * IN + i], 1e-5);
        }
    /* merge: W [in, out] (fan_in_fan_out) and W [out, in] */
    {
        float W1[IN * OUT], W2[OUT * IN];
        fill(W1, IN * OUT, 8);
        fill(W2, OUT * IN, 9);
        float W1c[IN * OUT], W2c[OUT * IN];
        memcpy(W1c, W1, sizeof W1);
        memcpy(W2c, W2, sizeof W2);
        dpo_lora_merge(l, 0, W1, 1);
        dpo_lora_merge(l, 0, W2, 0);
        for (int o = 0; o < OUT; o++)
            for (int i = 0; i < IN; i++) {
                double ba = 0;
                for (int r = 0; r < R; r++) ba += (double)B[o * R + r] * A[r * IN + i];
                CHECK_NEAR(W1[i * OUT + o], W1c[i * OUT + o] + s * ba, 1e-5);
                CHECK_NEAR(W2[o * IN + i], W2c[o * IN + i] + s * ba, 1e-5);
            }
    }
    dpo_lora_release(l);
}

/*
** Modules sharing an input and writing column blocks of one fused product:
** the n of sites[] (out of three, outs 6, 2 and 4, in IN) against loops.
** Sites 0, 1, 2 together batch their A products; 0 and 2 do not.
*/
#define LD (OUT + 2 + 4)
static void group(int n, const int *site) {
    const char *names[3] = {"q_proj", "k_proj", "v_proj"};
    int in[3] = {IN, IN, IN}, out[3] = {OUT, 2, 4}, colof[3] = {0, OUT, OUT + 2}, col[3];
    dpo_lora_config c = {R, 6.0f, 0.0f, 0, 9};
    dpo_error e;
    dpo_lora *l = dpo_lora_new(&c, 3, names, in, out, 1, &e);
    float x[NT * IN], y[NT * LD], y0[NT * LD], ut[3 * R * NT], dut[3 * R * NT], xd[NT * IN];
    float dy[NT * LD], dx[NT * IN], dx0[NT * IN], s = 6.0f / R;
    double u[3][NT][R], du[3][NT][R];
    CHECK(l != NULL);
    if (!l) return;
    fill(dpo_lora_params(l), dpo_lora_num_params(l), 21);
    fill(x, NT * IN, 22);
    fill(y, NT * LD, 23);
    fill(dy, NT * LD, 24);
    fill(dx, NT * IN, 25);
    memcpy(y0, y, sizeof y);
    memcpy(dx0, dx, sizeof dx);
    for (int j = 0; j < n; j++) col[j] = colof[site[j]];
    dpo_lora_forward_group(l, n, site, col, y, LD, x, ut, xd, NT, NULL);
    dpo_lora_backward_group(l, n, site, col, dx, dy, LD, x, ut, dut, xd, NT, 0);
    for (int j = 0; j < n; j++) {
        const dpo_lora_site *si = dpo_lora_site_info(l, site[j]);
        const float *A = dpo_lora_params(l) + si->a_off, *B = dpo_lora_params(l) + si->b_off;
        const float *dA = dpo_lora_grads(l) + si->a_off, *dB = dpo_lora_grads(l) + si->b_off;
        for (int t = 0; t < NT; t++)
            for (int r = 0; r < R; r++) {
                u[j][t][r] = du[j][t][r] = 0;
                for (int i = 0; i < IN; i++) u[j][t][r] += (double)A[r * IN + i] * x[t * IN + i];
                for (int o = 0; o < si->out; o++)
                    du[j][t][r] += (double)s * dy[t * LD + col[j] + o] * B[o * R + r];
            }
        for (int t = 0; t < NT; t++)
            for (int o = 0; o < si->out; o++) {
                double v = y0[t * LD + col[j] + o];
                for (int r = 0; r < R; r++) v += s * B[o * R + r] * u[j][t][r];
                CHECK_NEAR(y[t * LD + col[j] + o], v, 1e-5);
            }
        for (int o = 0; o < si->out; o++)
            for (int r = 0; r < R; r++) {
                double v = 0;
                for (int t = 0; t < NT; t++) v += s * dy[t * LD + col[j] + o] * u[j][t][r];
                CHECK_NEAR(dB[o * R + r], v, 1e-5);
            }
        for (int r = 0; r < R; r++)
            for (int i = 0; i < IN; i++) {
                double v = 0;
                for (int t = 0; t < NT; t++) v += du[j][t][r] * x[t * IN + i];
                CHECK_NEAR(dA[r * IN + i], v, 1e-5);
            }
    }
    for (int t = 0; t < NT; t++) /* columns of modules outside the group are untouched */
        for (int k = 0; k < LD; k++) {
            int mine = 0;
            for (int j = 0; j < n; j++)
                mine |= k >= col[j] && k < col[j] + dpo_lora_site_info(l, site[j])->out;
            if (!mine) CHECK(y[t * LD + k] == y0[t * LD + k]);
        }
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < IN; i++) {
            double v = dx0[t * IN + i];
            for (int j = 0; j < n; j++) {
                const float *A = dpo_lora_params(l) + dpo_lora_site_info(l, site[j])->a_off;
                for (int r = 0; r < R; r++) v += du[j][t][r] * A[r * IN + i];
            }
            CHECK_NEAR(dx[t * IN + i], v, 1e-5);
        }
    dpo_lora_release(l);
}

int main(void) {
    kernels(0.0f);
    kernels(0.4f);
    {
        int all[3] = {0, 1, 2}, gap[2] = {0, 2}, one[1] = {1};
        group(3, all);
        group(2, gap);
        group(1, one);
    }
    /* PEFT's matching of target names */
    CHECK(dpo_lora_matches("transformer.h.0.attn.c_attn", "c_attn"));
    CHECK(dpo_lora_matches("transformer.h.0.attn.c_attn", "attn.c_attn"));
    CHECK(dpo_lora_matches("c_attn", "c_attn"));
    CHECK(!dpo_lora_matches("transformer.h.0.attn.xc_attn", "c_attn"));
    CHECK(!dpo_lora_matches("c_attn", "h.0.c_attn"));
    CHECK(!dpo_lora_matches("c_attn", ""));
    /* rsLoRA, bad configurations */
    {
        const char *names[1] = {"m"};
        int in = 4, out = 4;
        dpo_lora_config c = {16, 8.0f, 0.0f, 1, 0};
        dpo_error e;
        dpo_lora *l = dpo_lora_new(&c, 1, names, &in, &out, 0, &e);
        CHECK(l && fabs(dpo_lora_scale(l) - 2.0) < 1e-7);
        CHECK(l && dpo_lora_grads(l) == NULL);
        dpo_lora_release(l);
        c.r = 0;
        CHECK(dpo_lora_new(&c, 1, names, &in, &out, 0, &e) == NULL);
        CHECK_STR(e.msg, "r must be");
        c.r = 2, c.dropout = 1.0f;
        CHECK(dpo_lora_new(&c, 1, names, &in, &out, 0, &e) == NULL);
        CHECK_STR(e.msg, "lora_dropout");
        c.dropout = 0, in = 0;
        CHECK(dpo_lora_new(&c, 1, names, &in, &out, 0, &e) == NULL);
        CHECK_STR(e.msg, "not a linear module");
    }
    return check_report("test_lora");
}
