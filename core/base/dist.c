/*
** dist.c: the world of a data-parallel job (dist.h). Under a launcher it
** loads the MPI transport (dpolua_mpi.so, dist_backend.h) and joins
** MPI_COMM_WORLD; otherwise the world is one process and every collective
** leaves its buffer as it is. Launched without a transport it refuses to
** start rather than let each process train alone. Counts above INT_MAX go
** in chunks (MPI counts are ints). Time spent in the transport is counted.
*/
#define _GNU_SOURCE /* dladdr */
#include "base/dist.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/dist_backend.h"

/* Elements per transport call. */
#define DIST_CHUNK ((size_t)1 << 26)

static const char *const op_names[DPO_DIST_OP_COUNT] = {"sum", "mean", "max"};
_Static_assert(sizeof op_names / sizeof op_names[0] == DPO_DIST_OP_COUNT, "one name per op");

const char *dpo_dist_op_name(dpo_dist_op op) {
    return (op >= 0 && op < DPO_DIST_OP_COUNT) ? op_names[op] : "?";
}

static int world_rank = 0, world_size = 1, host_rank = 0, host_size = 1;
static const dpo_dist_backend *mpi = NULL; /* set while the world is MPI's */
static int finalized = 0;
static double mpi_seconds = 0;
static long mpi_calls = 0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int dpo_dist_launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL;
}

int dpo_dist_available(void) {
#ifdef DPO_MPI_LIB
    return 1;
#else
    return 0;
#endif
}

int dpo_dist_active(void) {
    return mpi != NULL;
}
int dpo_dist_rank(void) {
    return world_rank;
}
int dpo_dist_size(void) {
    return world_size;
}
int dpo_dist_local_size(void) {
    return host_size;
}
int dpo_dist_local_rank(void) {
    return host_rank;
}
double dpo_dist_seconds(void) {
    return mpi_seconds;
}
long dpo_dist_calls(void) {
    return mpi_calls;
}

/*
** Open the transport: $DPOLUA_MPI_LIB, else dpolua_mpi.so in (or one level
** above) the executable's folder or that of the file holding this code
** (dpo/core.so in a build tree), else the installed copy. NULL with why[] filled when none loads.
*/
static const dpo_dist_backend *load_backend(char *why, size_t n) {
    const char *env = getenv("DPOLUA_MPI_LIB");
    char dir[4096], path[4200];
    const char *rel[] = {"", "/..", NULL};
    Dl_info info;
    void *h = NULL;
    snprintf(why, n, "this build has no MPI");
#ifdef DPO_MPI_LIB
    if (env != NULL && env[0] != '\0') {
        h = dlopen(env, RTLD_NOW | RTLD_GLOBAL);
        if (h == NULL) snprintf(why, n, "%s", dlerror());
    } else {
        /* the executable's folder, then the folder of the file holding this code */
        for (int where = 0; h == NULL && where < 2; where++) {
            char *real = NULL, *slash;
            if (where == 0)
                real = realpath("/proc/self/exe", NULL);
            else if (dladdr((void *)&dpo_dist_init, &info) && info.dli_fname != NULL)
                real = realpath(info.dli_fname, NULL);
            if (real == NULL) continue;
            snprintf(dir, sizeof dir, "%s", real);
            free(real);
            slash = strrchr(dir, '/');
            if (slash) *slash = '\0';
            for (int i = 0; h == NULL && rel[i] != NULL; i++) {
                snprintf(path, sizeof path, "%s%s/%s", dir, rel[i], DPO_MPI_LIB);
                h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
            }
        }
        if (h == NULL) h = dlopen(DPO_MPI_LIB_INSTALLED, RTLD_NOW | RTLD_GLOBAL);
        if (h == NULL) snprintf(why, n, "%s", dlerror());
    }
#else
    (void)env, (void)dir, (void)path, (void)rel, (void)info;
#endif
    if (h != NULL) {
        dpo_dist_backend_fn fn = (dpo_dist_backend_fn)(uintptr_t)dlsym(h, DPO_DIST_BACKEND_SYMBOL);
        const dpo_dist_backend *b = fn ? fn() : NULL;
        if (b != NULL && b->version == DPO_DIST_BACKEND_VERSION) return b;
        snprintf(why, n, "%s is not dpolua's MPI transport of this version",
                 DPO_DIST_BACKEND_SYMBOL);
    }
    return NULL;
}

dpo_status dpo_dist_init(dpo_error *e) {
    const dpo_dist_backend *b;
    char msg[DPO_ERRLEN];
    if (mpi != NULL || finalized || !dpo_dist_launched()) return DPO_OK;
    b = load_backend(msg, sizeof msg);
    if (b == NULL) {
        dpo_fail(e, DPO_ERR_IO, 0,
                 "dist: started by mpirun, but MPI cannot be used (%s); each process "
                 "would train alone",
                 msg);
        return DPO_ERR_IO;
    }
    if (b->init(&world_rank, &world_size, &host_rank, &host_size, msg) != 0) {
        world_rank = 0, world_size = 1, host_rank = 0, host_size = 1;
        dpo_fail(e, DPO_ERR_IO, 0, "dist: %s", msg);
        return DPO_ERR_IO;
    }
    mpi = b;
    return DPO_OK;
}

void dpo_dist_finalize(void) {
    const dpo_dist_backend *b = mpi;
    if (b == NULL) return;
    mpi = NULL;
    finalized = 1;
    b->finalize();
    world_rank = 0, world_size = 1, host_rank = 0, host_size = 1;
}

void dpo_dist_abort(int code) {
    if (mpi != NULL) mpi->abort(code);
}

/* Fill e with the transport's message; returns DPO_ERR_IO. */
static dpo_status fail_mpi(dpo_error *e, const char *fn, const char *msg) {
    dpo_fail(e, DPO_ERR_IO, 0, "dist.%s: rank %d: %s", fn, world_rank, msg);
    return DPO_ERR_IO;
}

static dpo_status check_op(dpo_dist_op op, dpo_error *e) {
    if (op >= 0 && op < DPO_DIST_OP_COUNT) return DPO_OK;
    dpo_fail(e, DPO_ERR_ARG, 2, "dist.allreduce: unknown op %d", (int)op);
    return DPO_ERR_ARG;
}

/* buf[n] of width-byte elements reduced in chunks. */
static dpo_status allreduce(void *buf, size_t n, int dbl, dpo_dist_op op, dpo_error *e) {
    double t0 = now();
    char msg[DPO_ERRLEN];
    size_t width = dbl ? sizeof(double) : sizeof(float);
    for (size_t at = 0; at < n; at += DIST_CHUNK) {
        size_t k = n - at < DIST_CHUNK ? n - at : DIST_CHUNK;
        mpi_calls++;
        if (mpi->allreduce((char *)buf + at * width, (int)k, dbl, op == DPO_DIST_MAX, msg) != 0)
            return fail_mpi(e, "allreduce", msg);
    }
    mpi_seconds += now() - t0;
    return DPO_OK;
}

dpo_status dpo_dist_allreduce_f32(float *buf, size_t n, dpo_dist_op op, dpo_error *e) {
    dpo_status st;
    if (check_op(op, e) != DPO_OK) return DPO_ERR_ARG;
    if (mpi == NULL || n == 0) return DPO_OK;
    st = allreduce(buf, n, 0, op, e);
    if (st == DPO_OK && op == DPO_DIST_MEAN) {
        float p = (float)world_size;
        for (size_t i = 0; i < n; i++) buf[i] /= p;
    }
    return st;
}

dpo_status dpo_dist_allreduce_f64(double *buf, size_t n, dpo_dist_op op, dpo_error *e) {
    dpo_status st;
    if (check_op(op, e) != DPO_OK) return DPO_ERR_ARG;
    if (mpi == NULL || n == 0) return DPO_OK;
    st = allreduce(buf, n, 1, op, e);
    if (st == DPO_OK && op == DPO_DIST_MEAN) {
        double p = (double)world_size;
        for (size_t i = 0; i < n; i++) buf[i] /= p;
    }
    return st;
}

dpo_status dpo_dist_broadcast(void *buf, size_t nbytes, int root, dpo_error *e) {
    double t0;
    char msg[DPO_ERRLEN];
    if (root < 0 || root >= world_size) {
        dpo_fail(e, DPO_ERR_ARG, 2, "dist.broadcast: root %d is not a rank (0..%d)", root,
                 world_size - 1);
        return DPO_ERR_ARG;
    }
    if (mpi == NULL) return DPO_OK;
    t0 = now();
    for (size_t at = 0; at < nbytes; at += DIST_CHUNK) {
        size_t k = nbytes - at < DIST_CHUNK ? nbytes - at : DIST_CHUNK;
        mpi_calls++;
        if (mpi->broadcast((char *)buf + at, (int)k, root, msg) != 0)
            return fail_mpi(e, "broadcast", msg);
    }
    mpi_seconds += now() - t0;
    return DPO_OK;
}

dpo_status dpo_dist_barrier(dpo_error *e) {
    double t0;
    char msg[DPO_ERRLEN];
    int rc;
    if (mpi == NULL) return DPO_OK;
    t0 = now();
    mpi_calls++;
    rc = mpi->barrier(msg);
    mpi_seconds += now() - t0;
    return rc == 0 ? DPO_OK : fail_mpi(e, "barrier", msg);
}

/* Every rank's counts (lens[]) and then bytes (out), through the transport. */
static dpo_status gather(const void *mine, size_t n, char **out, size_t *lens, dpo_error *e) {
    char msg[DPO_ERRLEN];
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)world_size);
    int *counts = malloc(sizeof(int) * (size_t)world_size);
    int *displs = malloc(sizeof(int) * (size_t)world_size);
    size_t total = 0;
    dpo_status st = DPO_OK;
    if (!all || !counts || !displs) {
        st = DPO_ERR_MEM;
        dpo_fail(e, st, 0, "dist.allgather: out of memory");
        goto done;
    }
    mpi_calls += 2;
    if (mpi->allgather_u64((uint64_t)n, all, msg) != 0) {
        st = fail_mpi(e, "allgather", msg);
        goto done;
    }
    for (int r = 0; r < world_size; r++) {
        lens[r] = (size_t)all[r];
        if (lens[r] > (size_t)0x7fffffff - total) {
            st = DPO_ERR_ARG;
            dpo_fail(e, st, 1, "dist.allgather: more than 2^31-1 bytes in all");
            goto done;
        }
        counts[r] = (int)lens[r];
        displs[r] = (int)total;
        total += lens[r];
    }
    *out = dpo_alloc(total ? total : 1);
    if (*out == NULL) {
        st = DPO_ERR_MEM;
        dpo_fail(e, st, 0, "dist.allgather: out of memory");
        goto done;
    }
    if (mpi->allgatherv(mine, (int)n, *out, counts, displs, msg) != 0) {
        dpo_free(*out);
        *out = NULL;
        st = fail_mpi(e, "allgather", msg);
    }
done:
    free(all), free(counts), free(displs);
    return st;
}

dpo_status dpo_dist_allgather(const void *mine, size_t n, char **out, size_t *lens, dpo_error *e) {
    double t0 = now();
    dpo_status st;
    *out = NULL;
    if (mpi == NULL) {
        lens[0] = n;
        *out = dpo_alloc(n ? n : 1);
        if (*out == NULL) {
            dpo_fail(e, DPO_ERR_MEM, 0, "dist.allgather: out of memory");
            return DPO_ERR_MEM;
        }
        if (n) memcpy(*out, mine, n);
        return DPO_OK;
    }
    if (n > (size_t)0x7fffffff) {
        dpo_fail(e, DPO_ERR_ARG, 1, "dist.allgather: %zu bytes, at most 2^31-1", n);
        return DPO_ERR_ARG;
    }
    st = gather(mine, n, out, lens, e);
    mpi_seconds += now() - t0;
    return st;
}
