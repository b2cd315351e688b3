/*
** rng.c: xoshiro256** (Blackman and Vigna) seeded by splitmix64.
** Integer arithmetic only until the last step, so a seed gives the same
** numbers on every machine. Tensors are filled from it by tensor/tensor_rand.c.
*/
#include "base/rng.h"

#include <math.h>

#define TWO_PI 6.283185307179586

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

void dpo_rng_seed(dpo_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
    r->seed = seed;
    r->has_spare = 0;
    r->spare = 0;
}

uint64_t dpo_rng_next(dpo_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double dpo_rng_uniform(dpo_rng *r) {
    return (double)(dpo_rng_next(r) >> 11) * 0x1.0p-53;
}

double dpo_rng_normal(dpo_rng *r) {
    double u1, u2, rad;
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    do u1 = dpo_rng_uniform(r);
    while (u1 <= 0.0);
    u2 = dpo_rng_uniform(r);
    rad = sqrt(-2.0 * log(u1));
    r->spare = rad * sin(TWO_PI * u2);
    r->has_spare = 1;
    return rad * cos(TWO_PI * u2);
}
