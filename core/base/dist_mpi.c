/*
** dist_mpi.c: the MPI transport of dist.c (dist_backend.h), built as its own
** shared library (dpolua_mpi.so, linked with libmpi) and loaded only under a
** launcher. MPI errors return (MPI_ERRORS_RETURN) and come back as messages;
** only the main thread calls MPI (MPI_THREAD_FUNNELED).
*/
#include <mpi.h>
#include <stdio.h>

#include "base/common.h"
#include "base/dist_backend.h"

const dpo_dist_backend *dpo_dist_mpi_backend(void);

/* Write "fn: MPI's message" into err; returns 1. */
static int failed(char *err, const char *fn, int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
    text[len] = '\0';
    snprintf(err, DPO_ERRLEN, "%s: %s", fn, len ? text : "unknown MPI error");
    return 1;
}

static int mpi_init(int *rank, int *size, int *host_rank, int *host_size, char *err) {
    int done = 0, provided = 0, rc;
    MPI_Comm host;
    MPI_Initialized(&done);
    if (!done) {
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return failed(err, "MPI_Init_thread", rc);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    *host_rank = 0, *host_size = 1;
    rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, *rank, MPI_INFO_NULL, &host);
    if (rc == MPI_SUCCESS) {
        MPI_Comm_rank(host, host_rank);
        MPI_Comm_size(host, host_size);
        MPI_Comm_free(&host);
    }
    return 0;
}

static void mpi_finalize(void) {
    MPI_Finalize();
}

static void mpi_abort(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
}

static int mpi_allreduce(void *buf, int n, int dbl, int max, char *err) {
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, n, dbl ? MPI_DOUBLE : MPI_FLOAT,
                           max ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : failed(err, "MPI_Allreduce", rc);
}

static int mpi_broadcast(void *buf, int nbytes, int root, char *err) {
    int rc = MPI_Bcast(buf, nbytes, MPI_BYTE, root, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : failed(err, "MPI_Bcast", rc);
}

static int mpi_barrier(char *err) {
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : failed(err, "MPI_Barrier", rc);
}

static int mpi_allgather_u64(uint64_t mine, uint64_t *all, char *err) {
    int rc = MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : failed(err, "MPI_Allgather", rc);
}

static int mpi_allgatherv(const void *mine, int n, void *out, const int *counts, const int *displs,
                          char *err) {
    int rc = MPI_Allgatherv(mine, n, MPI_BYTE, out, counts, displs, MPI_BYTE, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : failed(err, "MPI_Allgatherv", rc);
}

static const dpo_dist_backend backend = {
    DPO_DIST_BACKEND_VERSION,
    mpi_init,
    mpi_finalize,
    mpi_abort,
    mpi_allreduce,
    mpi_broadcast,
    mpi_barrier,
    mpi_allgather_u64,
    mpi_allgatherv,
};

/* The transport, for dist.c's dlsym. */
const dpo_dist_backend *dpo_dist_mpi_backend(void) {
    return &backend;
}
