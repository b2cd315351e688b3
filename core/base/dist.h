/*
** dist.h: the processes of one data-parallel job, on MPI.
**
** A job is a world of `size` processes numbered 0..size-1 (the rank); rank 0
** is the main one. Under a launcher (mpirun, srun with PMIx) the world is
** MPI_COMM_WORLD, and dpo_dist_init initialises MPI; started alone, or built
** without MPI, the world is this one process and every operation below is a
** no-op that succeeds (a sum over one process is its own value). MPI is the
** transport: nothing here sends bytes by itself.
**
** Collectives must be called by every rank in the same order with the same
** counts. Sums are MPI_Allreduce's: its algorithm is chosen from the message
** size and the number of processes, never from timing, so the same job gives
** the same bits on every rank and in every run.
** Functions return DPO_OK or fill the dpo_error (DPO_ERR_ARG for a bad
** argument, DPO_ERR_IO when MPI reports a failure).
*/
#ifndef DPO_DIST_H
#define DPO_DIST_H

#include "base/common.h"

typedef enum { DPO_DIST_SUM = 0, DPO_DIST_MEAN, DPO_DIST_MAX, DPO_DIST_OP_COUNT } dpo_dist_op;

/* "sum", "mean", "max" */
const char *dpo_dist_op_name(dpo_dist_op op);

/* True when a launcher started this process (its environment says so). */
int dpo_dist_launched(void);
/* True when the build has MPI. */
int dpo_dist_available(void);

/*
** Join the world: MPI_Init_thread when launched, else a world of one.
** Idempotent; after dpo_dist_finalize the world is one process again.
*/
dpo_status dpo_dist_init(dpo_error *e);
/* True between a successful MPI initialisation and its finalisation. */
int dpo_dist_active(void);
/* Leave the world (MPI_Finalize: waits for every rank). Idempotent. */
void dpo_dist_finalize(void);
/* End every process of the job with status code (MPI_Abort); returns only
** when MPI is not active. */
void dpo_dist_abort(int code);

int dpo_dist_rank(void);
int dpo_dist_size(void);
/* The processes of this job on this host, and this one's index among them. */
int dpo_dist_local_size(void);
int dpo_dist_local_rank(void);

/* buf[n] <- op over the ranks of buf[n], in place. */
dpo_status dpo_dist_allreduce_f32(float *buf, size_t n, dpo_dist_op op, dpo_error *e);
/* buf[n] <- the same over doubles (metrics). */
dpo_status dpo_dist_allreduce_f64(double *buf, size_t n, dpo_dist_op op, dpo_error *e);
/* buf[nbytes] <- root's buf[nbytes]. */
dpo_status dpo_dist_broadcast(void *buf, size_t nbytes, int root, dpo_error *e);
dpo_status dpo_dist_barrier(dpo_error *e);
/*
** Every rank's bytes: *out (dpo_alloc'd, the caller frees with dpo_free)
** holds rank 0's mine[n], then rank 1's, ...; lens[size] (the caller's) gets
** each rank's count. Ranks may give different counts.
*/
dpo_status dpo_dist_allgather(const void *mine, size_t n, char **out, size_t *lens, dpo_error *e);

/* Seconds spent inside MPI calls and the number of calls, since init. */
double dpo_dist_seconds(void);
long dpo_dist_calls(void);

#endif
