/*
** safetensors.h: reading and writing the safetensors format.
**
** The format (as Hugging Face's reference implementation defines it): an
** 8-byte little-endian u64 N, then N bytes of UTF-8 JSON, then the data
** section. The JSON object maps each tensor name to
** {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} (offsets
** relative to the start of the data section) and may hold "__metadata__", an
** object of string values.
**
** Saving writes float32 tensors as F32 (or, asked, as BF16 or F16 rounded to
** nearest even) and int32 as I32, packed in name-sorted order, the header
** padded with spaces to a multiple of 8 bytes.
** The file is written to a temporary name in the same directory, fsync'd and
** renamed over the target: on failure the target is untouched.
**
** Loading validates the whole header before any tensor data is read, then
** gives float32 for F16, BF16, F8_E4M3, F8_E5M2, F32 and F64, and int32 for
** BOOL, U8, I8, I16, U16, I32, U32, I64 and U64 (wide integers range-checked).
** The file is mapped privately: aligned F32 and I32 tensors are views of the
** mapping (writable in memory, never written back), which stays mapped until
** the last of them is released; the rest are converted into fresh tensors.
**
** Reading one tensor at a time (dpo_st_open, dpo_st_read): the same checks of
** the whole header, then each tensor converted straight from a read-only
** mapping into a destination the caller owns (a model's parameter), its
** pages of the file given back to the system once read: a checkpoint loads
** with no second copy of its data in memory.
**
** Failures fill the dpo_error: DPO_ERR_IO with "path: reason" for anything
** about the file (missing, unreadable, malformed, unwritable), DPO_ERR_ARG or
** DPO_ERR_TYPE for a bad argument (its `arg` names it), DPO_ERR_MEM.
*/
#ifndef DPO_SAFETENSORS_H
#define DPO_SAFETENSORS_H

#include "base/common.h"
#include "tensor/tensor.h"

/* Headers longer than this are refused, as the reference implementation does. */
#define DPO_ST_MAX_HEADER 100000000

/* What dpo_st_load returns; everything in it is owned by it. */
typedef struct dpo_st_file {
    int ntensors;
    char **names;         /* ntensors names, sorted (strcmp order) */
    dpo_tensor **tensors; /* ntensors tensors, each holding one reference */
    const char **dtypes;  /* ntensors dtype names as stored in the file ("BF16"), static */
    int nmeta;
    char **meta_keys;   /* nmeta keys of "__metadata__", sorted */
    char **meta_values; /* nmeta values */
} dpo_st_file;

/*
** Write n tensors under the given names (distinct, non-empty, valid UTF-8,
** not "__metadata__") and nmeta metadata pairs (keys distinct) to path.
** Tensors may be strided; they are packed. nmeta may be 0 (no "__metadata__"
** object is written then). Operand numbers in e->arg: 2 names, 3 tensors,
** 5 metadata keys, 6 metadata values.
*/
dpo_status dpo_st_save(const char *path, int n, const char *const *names,
                       dpo_tensor *const *tensors, int nmeta, const char *const *meta_keys,
                       const char *const *meta_values, dpo_error *e);

/* Read path; NULL (error filled) when it is missing or invalid. */
dpo_st_file *dpo_st_load(const char *path, dpo_error *e);

/* Free what dpo_st_load returned (releasing its tensor references). NULL is fine. */
void dpo_st_free(dpo_st_file *f);

/* The tensor named name in f, or NULL. */
dpo_tensor *dpo_st_find(const dpo_st_file *f, const char *name);

/* ---- saving float32 as 16-bit formats ---------------------------------------- */

/* What float32 tensors are stored as. */
typedef enum { DPO_ST_F32, DPO_ST_BF16, DPO_ST_F16, DPO_ST_FLOAT_COUNT } dpo_st_float;

/* dpo_st_save with float32 tensors stored as `as` (operand 8; int32 stay I32). */
dpo_status dpo_st_save_as(const char *path, int n, const char *const *names,
                          dpo_tensor *const *tensors, int nmeta, const char *const *meta_keys,
                          const char *const *meta_values, dpo_st_float as, dpo_error *e);

/* float32 to bfloat16 / IEEE half bits, rounded to nearest, ties to even;
   overflow gives infinity, NaN a quiet NaN of the same sign. */
uint16_t dpo_f32_to_bf16(float x);
uint16_t dpo_f32_to_f16(float x);
/* The exact widenings back to float32. */
float dpo_bf16_to_f32(uint16_t b);
float dpo_f16_to_f32(uint16_t h);

/* ---- reading one tensor at a time -------------------------------------------------- */

typedef struct dpo_st_reader dpo_st_reader;

/* One tensor of an open file, as its header describes it. */
typedef struct dpo_st_info {
    const char *name;  /* owned by the reader */
    const char *dtype; /* as stored ("BF16"), static */
    int ndim;
    int64_t shape[DPO_MAXDIM];
    int64_t numel;
    dpo_dtype to; /* what it reads as: DPO_F32 or DPO_I32 */
} dpo_st_info;

/* Map path and check its whole header; NULL (e filled as dpo_st_load does) when invalid. */
dpo_st_reader *dpo_st_open(const char *path, dpo_error *e);
/* Number of tensors; the description of tensor i (0-based, name order) or NULL. */
int dpo_st_count(const dpo_st_reader *r);
const dpo_st_info *dpo_st_info_at(const dpo_st_reader *r, int i);
/* Index of the tensor named name, or -1. */
int dpo_st_index(const dpo_st_reader *r, const char *name);
/* The path r was opened with. */
const char *dpo_st_path(const dpo_st_reader *r);
/*
** Convert tensor i into dst (contiguous, of the dtype it reads as and of its
** exact shape: DPO_ERR_TYPE / DPO_ERR_SHAPE otherwise, operand 3), then give
** back the memory of its bytes in the mapping.
*/
dpo_status dpo_st_read(dpo_st_reader *r, int i, dpo_tensor *dst, dpo_error *e);
/* Unmap and free. NULL is fine. */
void dpo_st_close(dpo_st_reader *r);

#endif
