/*
** bpe_impl.h: what bpe.c (tokenizing), bpe_files.c (files) and bpe_train.c
** (training) share inside the engine: the tokenizer's layout and the helpers that build
** one. Not for the bindings; bpe.h is the interface.
*/
#ifndef DPO_BPE_IMPL_H
#define DPO_BPE_IMPL_H

#include "text/bpe.h"

#include <stdint.h>

#define MAX_ID     (1 << 24) /* ids beyond this are a corrupt file, not a vocabulary */
#define SMALL_WORD 64        /* words up to this many symbols merge by linear scan */
#define PAIR_EMPTY UINT64_MAX
#define SHOWN      48 /* bytes of a token quoted in a message */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

typedef struct {
    size_t str, raw;           /* offsets in strs and raws */
    uint32_t str_len, raw_len; /* the vocabulary string; the bytes it decodes to */
    uint8_t used, added;
    uint8_t model; /* in the model's vocabulary (not only an added token) */
} tok_entry;

typedef struct {
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
    size_t moff;   /* the text matched: in dpo_bpe.mstrs (the content, normalized */
    uint32_t mlen; /* when the token is and there is a normalizer) */
} added_tok;

/* What add_special_tokens puts around a single text (postproc.c): ids, with
** -1 where the text's ids go ($A); n = 0 when nothing. */
typedef struct tk_post {
    int32_t *item;
    size_t n;
} tk_post;

struct tk_ops;
struct tk_ws;

/* A word cache: word bytes -> ids, open addressing, cleared when full. */
#define CACHE_SLOTS (1u << 17)
#define CACHE_MAXN  (1u << 16)
#define CACHE_WORD  48
#define CACHE_KEYS  (CACHE_MAXN * 8u)
#define CACHE_VALS  (CACHE_MAXN * 4u)

typedef struct {
    uint64_t h; /* 0: empty */
    uint32_t k, v;
    uint8_t kn, vn;
} cache_slot;

typedef struct {
    cache_slot *slot;   /* [CACHE_SLOTS] */
    unsigned char *key; /* [CACHE_KEYS] */
    int32_t *val;       /* [CACHE_VALS] */
    size_t nk, nv, n;
    int failed;            /* allocation failed once: run without */
    unsigned char pad[72]; /* caches of two threads never share a cache line */
} bpe_cache;
_Static_assert(sizeof(bpe_cache) == 128, "bpe_cache is padded to 128 bytes");

struct dpo_bpe {
    int32_t n; /* ids 0..n-1; some may be unused */
    size_t ncap;
    tok_entry *tok;  /* [n] */
    sbuf strs, raws; /* token strings and bytes */
    int32_t *vmap;   /* [vcap] ids by string hash, -1: empty */
    size_t vcap, vcount;
    int32_t byte_id[256]; /* the token of each single byte, -1: none */
    int32_t nmerges;
    size_t mcap;
    int32_t *merge; /* [3 * nmerges]: first, second, merged id, by rank */
    uint64_t *pkey; /* [pcap] pair (first << 32 | second), PAIR_EMPTY: empty */
    int32_t *prank; /* [pcap] */
    size_t pcap;
    added_tok *added; /* [nadded] in the order of the file */
    int nadded;
    size_t acap;
    int *amatch;         /* [nadded] indices into added, longest content first */
    uint8_t afirst[256]; /* 1 where some added token starts with that byte */
    int afirst_only;     /* that byte when it is the only one, else negative */
    int32_t role[DPO_BPE_NROLES];
    int add_prefix_space, use_regex, ignore_merges;
    bpe_cache *cache; /* [ncache], one per encoding thread */
    int ncache;
    /* tokenizer.json's stages (pipeline.h); NULL for GPT-2's own pipeline */
    struct tk_ops *norm, *pre, *dec;
    tk_post post;
    int pipeline;   /* encode through norm / pre (else GPT-2's path above) */
    int byte_level; /* the model reads bytes through GPT-2's alphabet */
    int byte_fallback, fuse_unk;
    int dec_join; /* no decoder in a pipeline: tokens joined by spaces, as Hugging Face */
    char *cprefix, *eow_suffix; /* continuing_subword_prefix, end_of_word_suffix */
    size_t ncprefix, neow;
    int32_t byte_fb[256]; /* the id of <0xNN>, -1: none */
    sbuf mstrs;           /* added tokens' matched texts */
    int has_norm_added;   /* some added token is matched after normalizing */
    char *src[4];         /* normalizer, pre_tokenizer, post_processor, decoder as read (JSON) */
    char *config;         /* tokenizer_config.json as read, NULL if none */
    struct tk_ws **ws;    /* [ncache] the pipeline's scratch space per thread */
};

/* character classes of GPT-2's pattern; the class of each BMP code point */
enum { CL_OTHER = 0, CL_LETTER, CL_NUMBER, CL_SPACE };
extern uint8_t bpe_class_bmp[0x10000];

/* ---- shared helpers (bpe.c) ---- */
uint64_t bpe_mix64(uint64_t x);
uint64_t bpe_hash_bytes(const void *p, size_t n);
int32_t bpe_vmap_find(const dpo_bpe *t, const char *s, size_t n);
int bpe_sbuf_reserve(sbuf *b, size_t extra);
int bpe_sbuf_add(sbuf *b, const void *s, size_t n);
int bpe_grow(void **p, size_t *cap, size_t need, size_t el);
void bpe_tables(void);
long bpe_bl_decode(const char *s, size_t n, char *out);
size_t bpe_next_piece(const unsigned char *s, size_t n, size_t i);
dpo_bpe *bpe_new(dpo_error *e);
const char *bpe_tok_str(const dpo_bpe *t, int32_t id);
const char *bpe_shown(const char *s, size_t n, char *buf);
dpo_status bpe_set_token(dpo_bpe *t, int32_t id, const char *s, size_t n, int added,
                         const char *where, dpo_error *e);
dpo_status bpe_add_added(dpo_bpe *t, int32_t id, int special, int lstrip, int rstrip,
                         int single_word, int normalized, const char *where, dpo_error *e);
const char *bpe_merge_where(const char *path, long line, char *buf, size_t n);
dpo_status bpe_add_merge(dpo_bpe *t, int32_t a, int32_t b, const char *path, long line,
                         dpo_error *e);
void bpe_default_roles(dpo_bpe *t, const int *explicit_role);
dpo_status bpe_finish(dpo_bpe *t, const char *where, dpo_error *e);
dpo_status bpe_add_byte_tokens(dpo_bpe *t, dpo_error *e);

#endif
