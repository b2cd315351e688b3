/*
** jsonl.h: the data engine under dpo.data.
**
** Two objects, both free of Lua:
**
** dpo_jsonl, a line reader over a plain file or a gzip stream (zlib; gzip
** is recognised by its magic bytes 1f 8b, not by the file's name). Lines may
** be of any length: the buffer grows to the longest line and no further, so
** streaming a large file holds one line and one read block. "\n" and "\r\n"
** both end a line, a last line without a newline is a line, a UTF-8 byte
** order mark before line 1 is dropped. A gzip stream that ends early or
** fails its check is an error, never a silent end. The file is only read.
**
** dpo_pairs, the tokenized preference pairs of a dataset in one growing id
** arena, with the truncation rules of the original DPO code (prompt and
** responses apart, EOS after each response, the prompt cut first, then the
** responses) and the collation of rows into padded int32 batches.
**
** Errors fill a dpo_error: DPO_ERR_IO for files ("path: reason" when opening;
** the reason alone while reading, the caller knows the file and line),
** DPO_ERR_ARG for bad options, DPO_ERR_MEM for allocations.
*/
#ifndef DPO_JSONL_H
#define DPO_JSONL_H

#include "base/common.h"
#include "tensor/tensor.h"

#include <stddef.h>
#include <stdint.h>

/* ---- the line reader ----------------------------------------------------------------- */

typedef struct dpo_jsonl dpo_jsonl;

/* Open path for reading; NULL with "path: reason" when it cannot be read
** (missing, a directory, no permission). */
dpo_jsonl *dpo_jsonl_open(const char *path, dpo_error *e);

/*
** The next line: 1 with *line (n bytes, without its "\n" or "\r\n"; valid
** until the next call) and *lineno (1-based); 0 at the end of the file; -1
** on a read error (a truncated or corrupt gzip stream, an I/O error), with
** *lineno the line being read. After an error every call returns -1 again.
*/
int dpo_jsonl_next(dpo_jsonl *r, const char **line, size_t *n, int64_t *lineno, dpo_error *e);

int dpo_jsonl_is_gzip(const dpo_jsonl *r);
/* Bytes of the file consumed so far (compressed bytes for gzip). */
int64_t dpo_jsonl_offset(const dpo_jsonl *r);
/* The size of the line buffer now: what streaming costs in memory. */
size_t dpo_jsonl_buffer_size(const dpo_jsonl *r);
void dpo_jsonl_close(dpo_jsonl *r);

/* ---- writing ------------------------------------------------------------------------- */

typedef struct dpo_jsonl_writer dpo_jsonl_writer;

/* Write path through a temporary name beside it, gzip-compressed (level 9,
** no name or time in the header, so the same bytes give the same file) when
** gzip is set. Nothing appears at path until commit succeeds. */
dpo_jsonl_writer *dpo_jsonl_writer_open(const char *path, int gzip, dpo_error *e);
/* Buffered; the first failure is remembered and reported by commit. */
void dpo_jsonl_write(dpo_jsonl_writer *w, const void *p, size_t n);
/* Flush, close and rename over path; frees w whatever happens. */
dpo_status dpo_jsonl_writer_commit(dpo_jsonl_writer *w, dpo_error *e);
/* Remove the temporary file; frees w. */
void dpo_jsonl_writer_abort(dpo_jsonl_writer *w);

/* ---- tokenized pairs ----------------------------------------------------------------- */

typedef enum { DPO_KEEP_END = 0, DPO_KEEP_START = 1 } dpo_truncation;

typedef struct dpo_pair_opts {
    int32_t max_length;        /* L: prompt + response tokens of a row, at most */
    int32_t max_prompt_length; /* P: the prompt's length when it must be cut (1 <= P < L) */
    dpo_truncation truncation; /* which part of a cut prompt stays */
    int32_t eos_id;            /* appended to each response; -1: none */
    int32_t bos_id;            /* the prompt of an empty prompt; -1: none */
} dpo_pair_opts;

/* What became of one pair. */
typedef enum {
    DPO_PAIR_KEPT = 0,
    DPO_PAIR_EMPTY_RESPONSE, /* a response has no token left (empty, or cut away) */
    DPO_PAIR_EMPTY_PROMPT,   /* no prompt token and no bos_id to stand in */
    DPO_PAIR_NREASONS
} dpo_pair_fate;

typedef struct dpo_pair_info {
    dpo_pair_fate fate;
    int64_t row;                       /* its row in the store when kept, else -1 */
    int32_t np, nc, nr;                /* tokens in the row: prompt, chosen, rejected */
    int32_t np_full, nc_full, nr_full; /* before truncation (responses with EOS) */
    int prompt_cut, response_cut;
} dpo_pair_info;

typedef struct dpo_pairs dpo_pairs;

dpo_pairs *dpo_pairs_new(int32_t pad_id, dpo_error *e);
void dpo_pairs_free(dpo_pairs *s);
int64_t dpo_pairs_count(const dpo_pairs *s);  /* rows */
int64_t dpo_pairs_tokens(const dpo_pairs *s); /* ids held */
int32_t dpo_pairs_pad_id(const dpo_pairs *s);

/*
** Add one pair from its separately tokenized parts, truncated by o:
**   - EOS (if any) is appended to each response; longer = max(nc, nr);
**   - if np + longer > L, the prompt is cut to P tokens (its last P for
**     keep_end, its first P for keep_start);
**   - if it is still too long, each response keeps its first L - np tokens
**     (a cut response loses its EOS: it did not end there);
**   - an empty prompt becomes bos_id; a pair left with an empty response is
**     not stored.
** info gets the lengths and the fate; the return is DPO_OK unless memory or
** the options fail.
*/
dpo_status dpo_pairs_add(dpo_pairs *s, const int32_t *p, int32_t np, const int32_t *c, int32_t nc,
                         const int32_t *r, int32_t nr, const dpo_pair_opts *o, dpo_pair_info *info,
                         dpo_error *e);

/* The ids of row k: part 0 prompt, 1 chosen, 2 rejected; *n their count. */
const int32_t *dpo_pairs_part(const dpo_pairs *s, int64_t k, int part, int32_t *n);

/*
** Collate rows[0..B) into a batch, right-padded with pad_id to the longest row:
**   ids  int32 [2B, T]  row i: prompt then chosen of rows[i]; row B+i: prompt then rejected
**   mask int32 [2B, T]  1 on the response tokens (EOS included), 0 on prompt and padding
**   plen int32 [2B]     prompt tokens of each row
**   rlen int32 [2B]     response tokens of each row (= the row's mask sum)
** With sft, chosen rows only: [B, T] and [B]. Each out gets a new tensor.
*/
dpo_status dpo_pairs_collate(const dpo_pairs *s, const int64_t *rows, int64_t B, int sft,
                             dpo_tensor **ids, dpo_tensor **mask, dpo_tensor **plen,
                             dpo_tensor **rlen, dpo_error *e);

#endif
