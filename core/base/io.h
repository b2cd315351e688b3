/*
** io.h: files written atomically.
**
** A dpo_afile writes to ".NAME.tmp.PID" beside the target through a buffer;
** commit flushes, fsyncs, closes, renames over the target and fsyncs the
** directory, so a reader sees the old file or the new one, never a part.
** Any failure (or abort) removes the temporary file and leaves the target as
** it was. Errors are DPO_ERR_IO with "path: reason".
*/
#ifndef DPO_IO_H
#define DPO_IO_H

#include "base/common.h"

typedef struct dpo_afile dpo_afile;

/* Start writing path; NULL (e filled) when the temporary file cannot be made. */
dpo_afile *dpo_afile_open(const char *path, dpo_error *e);
/* Buffered; the first failure is remembered and reported by commit. */
void dpo_afile_write(dpo_afile *f, const void *p, size_t n);
/* Finish and publish the file; frees f whatever happens. */
dpo_status dpo_afile_commit(dpo_afile *f, dpo_error *e);
/* Give up: remove the temporary file; frees f. */
void dpo_afile_abort(dpo_afile *f);

/* The whole of data as path, atomically. */
dpo_status dpo_write_file_atomic(const char *path, const void *data, size_t n, dpo_error *e);
/* fsync a directory, so that renames and creations in it are durable. */
dpo_status dpo_sync_dir(const char *dir, dpo_error *e);

#endif
