/*
** dist_backend.h: what dist.c asks of a transport. The MPI one
** (dist_mpi.c) is a separate shared library, dpolua_mpi.so, that dist.c
** loads only when a launcher started the process: a plain `dpolua` never
** loads MPI's libraries, so it starts as fast as a build without them.
** Each function returns 0, or non-zero with a message in err[DPO_ERRLEN].
*/
#ifndef DPO_DIST_BACKEND_H
#define DPO_DIST_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#define DPO_DIST_BACKEND_VERSION 1

typedef struct dpo_dist_backend {
    int version; /* DPO_DIST_BACKEND_VERSION */
    /* join the world: this process's rank and the world's size, the same on its host */
    int (*init)(int *rank, int *size, int *host_rank, int *host_size, char *err);
    void (*finalize)(void);
    void (*abort)(int code);
    /* buf[n] of float (dbl = 0) or double (dbl = 1), summed (max = 0) or maxed, in place */
    int (*allreduce)(void *buf, int n, int dbl, int max, char *err);
    int (*broadcast)(void *buf, int nbytes, int root, char *err);
    int (*barrier)(char *err);
    /* all[size] <- every rank's mine */
    int (*allgather_u64)(uint64_t mine, uint64_t *all, char *err);
    /* out <- every rank's bytes, rank r's counts[r] at displs[r] */
    int (*allgatherv)(const void *mine, int n, void *out, const int *counts, const int *displs,
                      char *err);
} dpo_dist_backend;

/* The entry point dpolua_mpi.so exports. */
typedef const dpo_dist_backend *(*dpo_dist_backend_fn)(void);
#define DPO_DIST_BACKEND_SYMBOL "dpo_dist_mpi_backend"

#endif
