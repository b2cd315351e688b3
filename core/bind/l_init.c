/*
** l_init.c: luaopen_dpo_core, the entry of the C module `dpo.core`.
** Opens each binding family into one table; lua/dpo/init.lua builds the
** user-facing `dpo` table on top of it. Also the process-wide knobs:
** thread count, a monotonic clock, signal traps for training loops, and the
** direct-sgemm probe benchmarks use.
*/
#include "bind/l_util.h"
#include "base/dist.h"

#include <cblas.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
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
** Signals in a training loop. dpo.trap_signals() turns the first SIGINT or
** SIGTERM into a note that dpo.pending_signal() reads, so the loop can stop
** at a step boundary and save a checkpoint; a second one (of either) puts
** the default action back and raises it again, which ends the process at
** once. dpo.release_signals() restores the actions the first trap found
** (the interpreter's Ctrl-C handler, the prompt's). Traps nest.
** In a job of more than one process (dpo.dist) SIGUSR1 and SIGUSR2 are
** trapped too: OpenMPI's mpirun forwards them to every rank at once, while
** it answers its own SIGINT or SIGTERM by killing the ranks (SIGTERM, then
** SIGKILL odls_base_sigkill_timeout seconds later), so they are how a job is
** asked to stop at a step boundary.
*/
static volatile sig_atomic_t pending_signal = 0;
static int trap_depth = 0;
static int trapped_usr = 0;
static struct sigaction saved_int, saved_term, saved_usr1, saved_usr2;

static void on_signal(int sig) {
    if (pending_signal != 0) { /* the second: stop now */
        signal(sig, SIG_DFL);
        raise(sig); /* delivered when this handler returns */
        return;
    }
    pending_signal = sig;
}

/* dpo.trap_signals() -> depth */
static int l_trap_signals(lua_State *L) {
    if (trap_depth == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        pending_signal = 0;
        sigaction(SIGINT, &sa, &saved_int);
        sigaction(SIGTERM, &sa, &saved_term);
        trapped_usr = dpo_dist_size() > 1;
        if (trapped_usr) {
            sigaction(SIGUSR1, &sa, &saved_usr1);
            sigaction(SIGUSR2, &sa, &saved_usr2);
        }
    }
    lua_pushinteger(L, ++trap_depth);
    return 1;
}

/* dpo.release_signals() -> depth left; the pending note stays readable */
static int l_release_signals(lua_State *L) {
    if (trap_depth > 0 && --trap_depth == 0) {
        sigaction(SIGINT, &saved_int, NULL);
        sigaction(SIGTERM, &saved_term, NULL);
        if (trapped_usr) {
            sigaction(SIGUSR1, &saved_usr1, NULL);
            sigaction(SIGUSR2, &saved_usr2, NULL);
        }
    }
    lua_pushinteger(L, trap_depth);
    return 1;
}

/*
** dpo.pending_signal([clear]) -> "SIGINT", 130 | "SIGTERM", 143 | nil: the
** signal noted since the outermost trap began (the exit status a shell
** gives a process it ends; in a job also "SIGUSR1", 138 | "SIGUSR2", 140);
** clear = true forgets it.
*/
static int l_pending_signal(lua_State *L) {
    int sig = pending_signal;
    if (lua_toboolean(L, 1)) pending_signal = 0;
    if (sig == 0) return 0;
    lua_pushstring(L, sig == SIGINT    ? "SIGINT"
                      : sig == SIGTERM ? "SIGTERM"
                      : sig == SIGUSR1 ? "SIGUSR1"
                      : sig == SIGUSR2 ? "SIGUSR2"
                                       : "signal");
    lua_pushinteger(L, 128 + sig);
    return 2;
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
    /* each size may be large, not all three: at most 2^28 floats (1 GiB) per matrix */
    luaL_argcheck(L, m * k <= (1 << 28) && k * n <= (1 << 28) && m * n <= (1 << 28), 1,
                  "matrices too large (at most 2^28 elements each)");
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
    {"trap_signals", l_trap_signals},
    {"release_signals", l_release_signals},
    {"pending_signal", l_pending_signal},
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
    dpo_open_llama(L);
    dpo_open_data(L);
    dpo_open_dist(L);
    lua_pushliteral(L, DPO_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushliteral(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua_version");
    return 1;
}
