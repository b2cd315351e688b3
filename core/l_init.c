/*
** l_init.c: luaopen_dpo_core, the entry of the C module `dpo.core`.
** Opens each binding family into one table; lua/dpo/init.lua builds the
** user-facing `dpo` table on top of it. Also the process-wide knobs:
** thread count, a monotonic clock, and the direct-sgemm probe benchmarks use.
*/
#include "l_util.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <time.h>

int luaopen_dpo_core(lua_State *L);

/* dpo.set_num_threads(n): threads for OpenMP loops and OpenBLAS alike. */
static int l_set_num_threads(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 1024, 1, "thread count must be in 1..1024");
    omp_set_num_threads((int)n);
    openblas_set_num_threads((int)n);
    return 0;
}

static int l_get_num_threads(lua_State *L) {
    lua_pushinteger(L, omp_get_max_threads());
    return 1;
}

/* dpo.clock() -> seconds from a monotonic clock, for timing. */
static int l_clock(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

/*
** dpo.core.sgemm_direct(m, n, k, reps) -> seconds per call of cblas_sgemm on
** plain malloc'd buffers, no tensors involved: the baseline the tensor mm is
** measured against.
*/
static int l_sgemm_direct(lua_State *L) {
    lua_Integer m = luaL_checkinteger(L, 1), n = luaL_checkinteger(L, 2);
    lua_Integer k = luaL_checkinteger(L, 3), reps = luaL_optinteger(L, 4, 3);
    float *a, *b, *c;
    struct timespec t0, t1;
    luaL_argcheck(L, m >= 1 && m <= 65536, 1, "size must be in 1..65536");
    luaL_argcheck(L, n >= 1 && n <= 65536, 2, "size must be in 1..65536");
    luaL_argcheck(L, k >= 1 && k <= 65536, 3, "size must be in 1..65536");
    luaL_argcheck(L, reps >= 1 && reps <= 100000, 4, "repetitions must be in 1..100000");
    a = (float *)dpo_alloc(sizeof(float) * (size_t)(m * k));
    b = (float *)dpo_alloc(sizeof(float) * (size_t)(k * n));
    c = (float *)dpo_alloc(sizeof(float) * (size_t)(m * n));
    if (!a || !b || !c) {
        dpo_free(a), dpo_free(b), dpo_free(c);
        return luaL_error(L, "out of memory");
    }
    for (lua_Integer i = 0; i < m * k; i++) a[i] = (float)((i % 7) - 3) * 0.1f;
    for (lua_Integer i = 0; i < k * n; i++) b[i] = (float)((i % 5) - 2) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k,
                b, (int)n, 0.0f, c, (int)n); /* warm-up */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (lua_Integer r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a,
                    (int)k, b, (int)n, 0.0f, c, (int)n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    dpo_free(a), dpo_free(b), dpo_free(c);
    lua_pushnumber(L, ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9) /
                          (double)reps);
    return 1;
}

static const luaL_Reg functions[] = {
    {"set_num_threads", l_set_num_threads},
    {"get_num_threads", l_get_num_threads},
    {"clock", l_clock},
    {"sgemm_direct", l_sgemm_direct},
    {NULL, NULL},
};

int luaopen_dpo_core(lua_State *L) {
    lua_newtable(L);
    luaL_setfuncs(L, functions, 0);
    dpo_open_tensor(L);
    dpo_open_autograd(L);
    dpo_open_optim(L);
    dpo_open_io(L);
    dpo_open_bpe(L);
    dpo_open_gpt(L);
    dpo_open_data(L);
    lua_pushliteral(L, DPO_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushliteral(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua_version");
    return 1;
}
