/*
** rng.h: the seeded generator.
** xoshiro256** seeded through splitmix64: the same sequence for the same seed
** on every machine. Floats are made from the top bits of 64-bit draws; normals
** by Box-Muller in double, rounded to float32 at the end.
*/
#ifndef DPO_RNG_H
#define DPO_RNG_H

#include <stdint.h>

typedef struct dpo_rng {
    uint64_t s[4];
    uint64_t seed;
    double spare; /* the second normal of a Box-Muller pair */
    int has_spare;
} dpo_rng;

void dpo_rng_seed(dpo_rng *r, uint64_t seed);
uint64_t dpo_rng_next(dpo_rng *r);
double dpo_rng_uniform(dpo_rng *r); /* [0, 1), 53 bits */
double dpo_rng_normal(dpo_rng *r);
/* Filling tensors from a generator is the tensor layer's: tensor/tensor.h. */

#endif
