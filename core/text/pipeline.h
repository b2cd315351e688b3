/*
** pipeline.h: the stages of a Hugging Face tokenizer.json around the BPE
** model, shared inside core/text: regexes (regex.c, PCRE2), normalizers
** (normalize.c, utf8proc), pre-tokenizers (pretok.c), post-processors
** (postproc.c) and decoders (decode.c). Each stage is a flat list of
** operations: a "Sequence" in the file is flattened into its members, which
** is what applying them in order means. Parsing fills a list from the
** file's JSON and fails with a message naming the file and the component;
** applying never fails except for memory (-1).
**
** Text is UTF-8 as Hugging Face requires it; bytes that are not are kept
** and passed through unchanged (a normalizer leaves a text holding them as
** it is; a regex split makes each such byte a piece of its own).
*/
#ifndef DPO_PIPELINE_H
#define DPO_PIPELINE_H

#include "text/bpe_impl.h"

#include <jansson.h>

#include <stddef.h>
#include <stdint.h>

/* ---- regexes (regex.c) ------------------------------------------------------------ */

typedef struct tk_regex tk_regex;

/* A thread's matching state: one per encoding thread. */
typedef struct tk_match tk_match;

/*
** An Oniguruma-style pattern as tokenizer.json writes it (literal = 1: a
** plain string), compiled by PCRE2 with UTF and Unicode properties, JIT
** when it can. \s and \S follow Unicode's White_Space as Oniguruma does.
*/
tk_regex *tk_regex_new(const char *pat, size_t n, int literal, const char *where, dpo_error *e);
void tk_regex_free(tk_regex *r);
tk_match *tk_match_new(void);
void tk_match_free(tk_match *m);
/* The next match in s[from..n), s valid UTF-8: 1 with [*ms, *me), 0 when
** none, -1 on a matching error (resources). */
int tk_regex_next(const tk_regex *r, tk_match *m, const char *s, size_t n, size_t from, size_t *ms,
                  size_t *me);
/* The length of the valid UTF-8 prefix of s[0..n). */
size_t tk_utf8_valid(const char *s, size_t n);

/* ---- operations ------------------------------------------------------------------ */

typedef enum {
    /* normalizers */
    TK_NFC,
    TK_NFD,
    TK_NFKC,
    TK_NFKD,
    TK_LOWERCASE,
    TK_PREPEND, /* s */
    TK_REPLACE, /* re -> c */
    TK_STRIP,   /* a: left, b: right */
    TK_STRIP_ACCENTS,
    /* pre-tokenizers */
    TK_SPLIT,      /* re, behavior, invert */
    TK_BYTELEVEL,  /* a: add_prefix_space, b: use_regex */
    TK_METASPACE,  /* cp: replacement (s its UTF-8), a: prepend scheme, b: split */
    TK_DIGITS,     /* a: individual digits */
    TK_WHITESPACE, /* re = \w+|[^\w\s]+, kept */
    TK_WSSPLIT,
    TK_PUNCT,     /* behavior */
    TK_CHARDELIM, /* cp */
    /* decoders */
    TK_DEC_BYTELEVEL,
    TK_DEC_METASPACE, /* cp, a: prepend scheme */
    TK_DEC_REPLACE,   /* re -> c */
    TK_DEC_BYTEFALLBACK,
    TK_DEC_FUSE,
    TK_DEC_STRIP, /* cp, a: start, b: stop */
    TK_NKINDS
} tk_kind;

/* Split behaviours, as tokenizer.json names them */
enum { TK_REMOVED, TK_ISOLATED, TK_MERGED_PREV, TK_MERGED_NEXT, TK_CONTIGUOUS };
/* Metaspace prepend schemes */
enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };

typedef struct {
    tk_kind kind;
    char *s, *c; /* strings (NUL-terminated), NULL when unused */
    size_t ns, nc;
    tk_regex *re;
    int32_t cp;
    int a, b, behavior, invert;
} tk_op;

typedef struct tk_ops {
    tk_op *op;
    int n, cap;
} tk_ops;

void tk_ops_free(tk_ops *o);

/* ---- normalizers (normalize.c) ----------------------------------------------------- */

/* Parse the "normalizer" object j (not null) into a new list. */
tk_ops *tk_norm_parse(json_t *j, const char *where, dpo_error *e);
/* out (cleared first) = the normalized s[0..n). -1: out of memory or regex failure. */
int tk_norm_apply(const tk_ops *o, tk_match *m, const char *s, size_t n, sbuf *out);

/* ---- pre-tokenizers (pretok.c) ------------------------------------------------------- */

/* A piece of text: off/len into a workspace buffer; first = it starts where
** the input segment started (Metaspace's prepend_scheme "first"). */
typedef struct {
    size_t off, len;
    int first;
} tk_piece;

typedef struct {
    tk_piece *p;
    size_t n, cap;
} tk_pieces;

/* A thread's scratch space for the pipeline: regex state, two buffers of
** pieces swapped between steps, the normalized text. */
typedef struct {
    size_t a, b;
    int match;
} tk_span;

typedef struct tk_ws {
    tk_match *m;
    sbuf buf[2], norm, norm2;
    tk_pieces pcs[2];
    int cb, cp; /* after tk_pre_apply: the pieces pcs[cp] over buf[cb] */
    tk_span *sp;
    size_t nsp, capsp;
} tk_ws;

tk_ws *tk_ws_new(void);
void tk_ws_free(tk_ws *w);

/* Parse "pre_tokenizer" j (not null); *byte_level = 1 when it ends with
** ByteLevel (the model then reads bytes through GPT-2's alphabet). */
tk_ops *tk_pre_parse(json_t *j, int *byte_level, const char *where, dpo_error *e);
/*
** Pre-tokenize s[0..n), whose first piece starts the input text when
** first: the pieces are left in w->pcs[w->cp] over w->buf[w->cb] (the text
** is copied there). -1: out of memory or regex failure.
*/
int tk_pre_apply(const tk_ops *o, tk_ws *w, const char *s, size_t n, int first);
/* GPT-2's pattern (bpe.c): the end of the piece starting at i. */
size_t bpe_next_piece(const unsigned char *s, size_t n, size_t i);

/* ---- post-processors (postproc.c) ---------------------------------------------------- */

/* Parse "post_processor" j (not null) into *p, ids looked up in t. */
dpo_status tk_post_parse(json_t *j, const dpo_bpe *t, tk_post *p, const char *where, dpo_error *e);
/* Wrap ids[0..n) (in out already, from position start) by the template. -1: memory. */
int tk_post_apply(const tk_post *p, dpo_bpe_ids *out, size_t start);

/* ---- decoders (decode.c) ------------------------------------------------------------- */

tk_ops *tk_dec_parse(json_t *j, const char *where, dpo_error *e);
/* The text of the tokens strs[k] (lens[k]), k < n, through the decoders;
** malloc'd, NUL-terminated, *len its length, NULL when out of memory. */
char *tk_dec_apply(const tk_ops *o, tk_match *m, const char *const *strs, const size_t *lens,
                   size_t n, size_t *len);

/* ---- shared small parts ---------------------------------------------------------------- */

/* A one-code-point string's code point, or -1. */
int32_t tk_single_cp(const char *s, size_t n);
/* Append the UTF-8 of c. -1: memory. */
int tk_put_cp(sbuf *b, int32_t c);
/* The pattern of {"String": s} or {"Regex": r} (tokenizers' two forms) into a regex. */
tk_regex *tk_pattern(json_t *pat, const char *where, const char *what, dpo_error *e);
/* Append a new zeroed op to o; NULL when out of memory. */
tk_op *tk_ops_add(tk_ops *o);
/* A copy of a JSON string field, NUL-terminated, into *out (length *n); 0 or -1. */
int tk_strdup_field(json_t *o, const char *key, char **out, size_t *n);

#endif
