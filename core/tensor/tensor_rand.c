/*
** tensor_rand.c: tensors filled from the seeded generator (base/rng).
** One thread, in logical order, so a seed gives the same tensor on every
** machine and for every thread count.
*/
#include "tensor/tensor.h"

#include <math.h>

void dpo_rng_fill_uniform(dpo_rng *r, dpo_tensor *t, double lo, double hi) {
    int64_t n = dpo_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double v = lo + (hi - lo) * dpo_rng_uniform(r);
        if (t->dtype == DPO_I32)
            v = floor(v);
        else if ((float)v >= (float)hi && hi > lo) /* float rounding must not reach hi */
            v = nextafterf((float)hi, (float)lo);
        dpo_tensor_set(t, i, v);
    }
}

void dpo_rng_fill_normal(dpo_rng *r, dpo_tensor *t, double mean, double std) {
    int64_t n = dpo_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) dpo_tensor_set(t, i, mean + std * dpo_rng_normal(r));
}
