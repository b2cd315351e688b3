/*
** bpe.c: byte-level BPE tokenizers (see bpe.h for the contract).
**
** Owns: the vocabulary (id -> token string and the bytes it stands for,
** a hash map string -> id), the ranked merges (a hash map from a pair of
** ids to its rank), the added tokens, one word cache per encoding thread.
** Files (tokenizer.json, vocab.json + merges.txt) are read and written by
** bpe_files.c, training lives in bpe_train.c; bpe_impl.h is what they share.
**
** GPT-2's pre-tokenization is the pattern
**   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
** written here as a scanner over code points: utf8proc decodes and gives the
** general category (L* letters, N* numbers); \s is Unicode's White_Space
** property, which is the separators Z* plus TAB..CR and NEL (U+0085), as in
** Python's `regex`, Rust's regex (tiktoken, Hugging Face) and Oniguruma.
** (gpt-3-encoder runs the pattern in JavaScript, whose \s also holds U+FEFF
** and lacks U+0085: those two code points are where it differs.)
** The categories are those of the Unicode version utf8proc carries.
**
** Merges: the lowest-ranked adjacent pair is merged first, leftmost first
** among equal ranks, until no pair has a rank: a linear scan for short
** words, a heap over a linked list for long ones, GPT-2's own loop kept as
** the reference (dpo_bpe_word(.., fast = 0)) and tested against both.
*/
#include "text/bpe_impl.h"
#include "text/pipeline.h"

#include <omp.h>
#include <utf8proc.h>

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- buffers and hashing ---------------------------------------------------------- */

/* Make room for extra more bytes (plus a NUL); -1 when that overflows or fails. */
int bpe_sbuf_reserve(sbuf *b, size_t extra) {
    size_t need, cap;
    char *q;
    if (extra > SIZE_MAX - b->n - 1) return -1;
    need = b->n + extra + 1;
    if (need <= b->cap) return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    q = (char *)realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
    return 0;
}

int bpe_sbuf_add(sbuf *b, const void *s, size_t n) {
    if (bpe_sbuf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

/* Grow an array *p of *cap elements of size el to hold at least need. */
int bpe_grow(void **p, size_t *cap, size_t need, size_t el) {
    size_t c = *cap ? *cap : 16;
    void *q;
    if (need <= *cap) return 0;
    while (c < need) {
        if (c > SIZE_MAX / 2 / el) return -1;
        c *= 2;
    }
    q = realloc(*p, c * el);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

void dpo_bpe_ids_free(dpo_bpe_ids *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

static int ids_reserve(dpo_bpe_ids *v, size_t extra) {
    if (extra > SIZE_MAX / 4 - v->n) return -1;
    return bpe_grow((void **)&v->ids, &v->cap, v->n + extra, sizeof *v->ids);
}

static int ids_push(dpo_bpe_ids *v, int32_t id) {
    if (v->n == v->cap && ids_reserve(v, 1)) return -1;
    v->ids[v->n++] = id;
    return 0;
}

uint64_t bpe_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A 64-bit hash of bytes, never 0 (0 marks an empty cache slot). */
uint64_t bpe_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull), k;
    while (n >= 8) {
        memcpy(&k, s, 8);
        h = (h ^ k) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    k = 0;
    for (size_t i = 0; i < n; i++) k |= (uint64_t)s[i] << (8 * i); /* no call for the tail */
    h = bpe_mix64(h ^ k);
    return h ? h : 1;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* ---- character classes and the byte-level alphabet -------------------------------- */

uint8_t bpe_class_bmp[0x10000]; /* class of each code point of the BMP */
static uint16_t byte_cp[256];   /* byte -> code point of its byte-level character */
static int16_t cp_byte[324];    /* code point -> byte, -1 where none */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static int class_of(int32_t c) {
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return CL_LETTER;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return CL_NUMBER;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return CL_SPACE;
    default:
        /* White_Space code points outside Z*: the controls TAB..CR and NEL */
        return (c >= 0x09 && c <= 0x0D) || c == 0x85 ? CL_SPACE : CL_OTHER;
    }
}

/*
** GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
** the others (controls, space, NBSP, soft hyphen) for U+0100 onwards, in
** byte order.
*/
static void tables_init(void) {
    int n = 0;
    for (int32_t c = 0; c < 0x10000; c++) bpe_class_bmp[c] = (uint8_t)class_of(c);
    for (int i = 0; i < 324; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int shown = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_cp[b] = (uint16_t)(shown ? b : 256 + n++);
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

void bpe_tables(void) {
    pthread_once(&tables_once, tables_init);
}

/* Write the byte-level form of byte b (1 or 2 bytes of UTF-8); returns its length. */
static size_t bl_put(char *out, unsigned char b) {
    unsigned c = byte_cp[b];
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
}

/* The bytes a byte-level string stands for, into out (room for n); -1 when
** s holds a character outside the alphabet. */
long bpe_bl_decode(const char *s, size_t n, char *out) {
    size_t i = 0, k = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t l =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (l <= 0 || c >= 324 || cp_byte[c] < 0) return -1;
        out[k++] = (char)cp_byte[c];
        i += (size_t)l;
    }
    return (long)k;
}

/* The class of the code point at s[i] and its length; an invalid byte is
** one unit of class "other". */
static inline int char_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
    utf8proc_int32_t c;
    utf8proc_ssize_t l;
    if (s[i] < 0x80) {
        *len = 1;
        return bpe_class_bmp[s[i]];
    }
    l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
    if (l <= 0) {
        *len = 1;
        return CL_OTHER;
    }
    *len = (size_t)l;
    return c < 0x10000 ? bpe_class_bmp[c] : class_of(c);
}

/* The class of the code point that ends just before s[i] (i > lo), and where it starts. */
static int char_before(const unsigned char *s, size_t n, size_t lo, size_t i, size_t *start) {
    size_t j = i - 1, len;
    int cl;
    while (j > lo && i - j < 4 && (s[j] & 0xC0) == 0x80) j--;
    cl = char_at(s, n, j, &len);
    if (j + len != i) { /* not one code point: the last byte alone */
        *start = i - 1;
        return char_at(s, n, i - 1, &len);
    }
    *start = j;
    return cl;
}

/* ---- the pre-tokenizer -------------------------------------------------------------- */

size_t bpe_next_piece(const unsigned char *s, size_t n, size_t i) {
    size_t len, j, last;
    int c;
    if (s[i] == '\'' && i + 1 < n) { /* 's 't 're 've 'm 'll 'd */
        unsigned char a = s[i + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < n) {
            unsigned char b = s[i + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 3;
        }
    }
    c = char_at(s, n, i, &len);
    if (s[i] == ' ' && i + 1 < n) { /* ' ?' before a letter, number or symbol run */
        size_t len1;
        int c1 = char_at(s, n, i + 1, &len1);
        if (c1 != CL_SPACE) {
            c = c1;
            len = 1 + len1;
        }
    }
    j = i + len;
    if (c != CL_SPACE) { /* \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+ */
        while (j < n) {
            if (s[j] < 0x80) { /* the common case, without a call */
                if (bpe_class_bmp[s[j]] != c) break;
                j++;
            } else {
                if (char_at(s, n, j, &len) != c) break;
                j += len;
            }
        }
        return j;
    }
    /* \s+(?!\S) | \s+ : a run before a non-space gives up its last character,
       unless that would leave it empty */
    last = i;
    while (j < n && char_at(s, n, j, &len) == CL_SPACE) {
        last = j;
        j += len;
    }
    if (j == n) return j;
    return last > i ? last : j;
}

size_t dpo_bpe_next_piece(const char *s, size_t n, size_t i) {
    bpe_tables();
    if (i >= n) return n;
    return bpe_next_piece((const unsigned char *)s, n, i);
}

/* ---- the tokenizer object ------------------------------------------------------------- */

dpo_bpe *bpe_new(dpo_error *e) {
    dpo_bpe *t = (dpo_bpe *)calloc(1, sizeof *t);
    bpe_tables();
    if (!t) return (dpo_bpe *)dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for a tokenizer");
    for (int r = 0; r < DPO_BPE_NROLES; r++) t->role[r] = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = t->byte_fb[b] = -1;
    t->use_regex = 1;
    t->byte_level = 1;
    return t;
}

static void cache_free(bpe_cache *c) {
    free(c->slot);
    free(c->key);
    free(c->val);
    memset(c, 0, sizeof *c);
}

void dpo_bpe_free(dpo_bpe *t) {
    if (!t) return;
    free(t->tok);
    free(t->strs.p);
    free(t->raws.p);
    free(t->vmap);
    free(t->merge);
    free(t->pkey);
    free(t->prank);
    free(t->added);
    free(t->amatch);
    for (int i = 0; i < t->ncache; i++) {
        cache_free(&t->cache[i]);
        if (t->ws) tk_ws_free(t->ws[i]);
    }
    free(t->cache);
    free(t->ws);
    tk_ops_free(t->norm);
    tk_ops_free(t->pre);
    tk_ops_free(t->dec);
    free(t->post.item);
    free(t->cprefix);
    free(t->eow_suffix);
    free(t->mstrs.p);
    for (int k = 0; k < 4; k++) free(t->src[k]);
    free(t->config);
    free(t);
}

const char *bpe_tok_str(const dpo_bpe *t, int32_t id) {
    return t->strs.p + t->tok[id].str;
}

int32_t bpe_vmap_find(const dpo_bpe *t, const char *s, size_t n) {
    size_t mask, i;
    if (!t->vcap) return -1;
    mask = t->vcap - 1;
    i = (size_t)bpe_hash_bytes(s, n) & mask;
    for (;;) {
        int32_t id = t->vmap[i];
        if (id < 0) return -1;
        if (t->tok[id].str_len == n && memcmp(bpe_tok_str(t, id), s, n) == 0) return id;
        i = (i + 1) & mask;
    }
}

static void vmap_put(dpo_bpe *t, int32_t id) {
    size_t mask = t->vcap - 1;
    size_t i = (size_t)bpe_hash_bytes(bpe_tok_str(t, id), t->tok[id].str_len) & mask;
    while (t->vmap[i] >= 0) i = (i + 1) & mask;
    t->vmap[i] = id;
    t->vcount++;
}

static int vmap_grow(dpo_bpe *t) {
    size_t cap = t->vcap ? t->vcap * 2 : 1024;
    int32_t *old = t->vmap;
    size_t oldcap = t->vcap;
    t->vmap = (int32_t *)malloc(cap * sizeof *t->vmap);
    if (!t->vmap) {
        t->vmap = old;
        return -1;
    }
    memset(t->vmap, 0xff, cap * sizeof *t->vmap);
    t->vcap = cap;
    t->vcount = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i] >= 0) vmap_put(t, old[i]);
    free(old);
    return 0;
}

/* A token quoted for a message: at most SHOWN bytes, "..." after a cut. */
const char *bpe_shown(const char *s, size_t n, char *buf) {
    size_t k = n < SHOWN ? n : SHOWN;
    memcpy(buf, s, k);
    strcpy(buf + k, n > SHOWN ? "..." : "");
    return buf;
}

/*
** Give id the vocabulary string s[0..n). An added token's bytes are its
** content itself; a vocabulary token's bytes are its byte-level decoding
** (or its UTF-8 when it is not byte-level, as Hugging Face's decoder does).
** where names the file for messages.
*/
dpo_status bpe_set_token(dpo_bpe *t, int32_t id, const char *s, size_t n, int added,
                         const char *where, dpo_error *e) {
    char b1[SHOWN + 4], b2[SHOWN + 4];
    int32_t other;
    tok_entry *te;
    if (id < 0 || id >= MAX_ID) {
        dpo_fail(e, DPO_ERR_RANGE, 0, "%s: id %ld of token '%s' is out of range 0..%d", where,
                 (long)id, bpe_shown(s, n, b1), MAX_ID - 1);
        return e->status;
    }
    if (n == 0) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: id %ld is an empty token", where, (long)id);
        return e->status;
    }
    if ((size_t)id >= t->ncap &&
        bpe_grow((void **)&t->tok, &t->ncap, (size_t)id + 1, sizeof *t->tok) != 0)
        goto nomem;
    if (id >= t->n) {
        memset(t->tok + t->n, 0, (size_t)(id + 1 - t->n) * sizeof *t->tok);
        t->n = id + 1;
    }
    te = &t->tok[id];
    other = bpe_vmap_find(t, s, n);
    if (te->used) {
        if (other != id) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: id %ld is given to both '%s' and '%s'", where,
                     (long)id, bpe_shown(bpe_tok_str(t, id), te->str_len, b1), bpe_shown(s, n, b2));
            return e->status;
        }
    } else if (other >= 0) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: token '%s' has two ids, %ld and %ld", where,
                 bpe_shown(s, n, b1), (long)other, (long)id);
        return e->status;
    } else {
        if ((t->vcount + 1) * 2 > t->vcap && vmap_grow(t)) goto nomem;
        te->str = t->strs.n;
        te->str_len = (uint32_t)n;
        if (bpe_sbuf_add(&t->strs, s, n)) goto nomem;
        te->used = 1;
        vmap_put(t, id);
    }
    if (te->used == 1 || (added && !te->added)) { /* (re)compute the bytes */
        long k = -1;
        if (bpe_sbuf_reserve(&t->raws, n)) goto nomem;
        te->raw = t->raws.n;
        if (!added) k = bpe_bl_decode(s, n, t->raws.p + t->raws.n);
        if (k < 0) {
            memcpy(t->raws.p + t->raws.n, s, n);
            k = (long)n;
        }
        te->raw_len = (uint32_t)k;
        t->raws.n += (size_t)k;
        te->used = 2;
    }
    if (added)
        te->added = 1;
    else
        te->model = 1;
    return DPO_OK;
nomem:
    dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory for the vocabulary", where);
    return e->status;
}

dpo_status bpe_add_added(dpo_bpe *t, int32_t id, int special, int lstrip, int rstrip,
                         int single_word, int normalized, const char *where, dpo_error *e) {
    added_tok *a;
    for (int k = 0; k < t->nadded; k++)
        if (t->added[k].id == id) {
            t->added[k].special = (uint8_t)(t->added[k].special || special);
            return DPO_OK;
        }
    if (bpe_grow((void **)&t->added, &t->acap, (size_t)t->nadded + 1, sizeof *t->added)) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
        return e->status;
    }
    a = &t->added[t->nadded++];
    a->id = id;
    a->special = (uint8_t)special;
    a->lstrip = (uint8_t)lstrip;
    a->rstrip = (uint8_t)rstrip;
    a->single_word = (uint8_t)single_word;
    a->normalized = (uint8_t)normalized;
    return DPO_OK;
}

/* Where a merge came from: "path:line" (line > 0), "path: merge k" (line = -k), or path. */
const char *bpe_merge_where(const char *path, long line, char *buf, size_t n) {
    if (line > 0)
        snprintf(buf, n, "%s:%ld", path, line);
    else if (line < 0)
        snprintf(buf, n, "%s: merge %ld", path, -line);
    else
        return path;
    return buf;
}

/* Append merge (first, second) -> the token of their concatenated strings. */
dpo_status bpe_add_merge(dpo_bpe *t, int32_t a, int32_t b, const char *path, long line,
                         dpo_error *e) {
    char b1[SHOWN + 4], wb[4200];
    sbuf cat = {0};
    int32_t x;
    const char *sb = bpe_tok_str(t, b);
    size_t nb = t->tok[b].str_len;
    if (t->ncprefix && nb >= t->ncprefix && memcmp(sb, t->cprefix, t->ncprefix) == 0) {
        sb += t->ncprefix; /* "a" + "##b" -> "ab" */
        nb -= t->ncprefix;
    }
    if (bpe_sbuf_add(&cat, bpe_tok_str(t, a), t->tok[a].str_len) || bpe_sbuf_add(&cat, sb, nb)) {
        free(cat.p);
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory for the merges", path);
        return e->status;
    }
    x = bpe_vmap_find(t, cat.p, cat.n);
    if (x < 0) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: the merged token '%s' is not in the vocabulary",
                 bpe_merge_where(path, line, wb, sizeof wb), bpe_shown(cat.p, cat.n, b1));
        free(cat.p);
        return e->status;
    }
    free(cat.p);
    if (bpe_grow((void **)&t->merge, &t->mcap, 3 * ((size_t)t->nmerges + 1), sizeof *t->merge)) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory for the merges", path);
        return e->status;
    }
    t->merge[3 * t->nmerges] = a;
    t->merge[3 * t->nmerges + 1] = b;
    t->merge[3 * t->nmerges + 2] = x;
    t->nmerges++;
    return DPO_OK;
}

static inline int32_t pair_rank(const dpo_bpe *t, int32_t a, int32_t b) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->pcap - 1, i = (size_t)bpe_mix64(k) & mask;
    for (;;) {
        uint64_t q = t->pkey[i];
        if (q == k) return t->prank[i];
        if (q == PAIR_EMPTY) return -1;
        i = (i + 1) & mask;
    }
}

static int cmp_added_len(const void *pa, const void *pb, void *ctx);

/* The text each added token is matched as: its content, normalized when
** the token says so and there is a normalizer (as Hugging Face does). */
static int added_texts(dpo_bpe *t) {
    tk_match *m = NULL;
    sbuf tmp = {0};
    int r = 0;
    t->mstrs.n = 0;
    t->has_norm_added = 0;
    for (int k = 0; k < t->nadded && r == 0; k++) {
        added_tok *a = &t->added[k];
        const char *c = bpe_tok_str(t, a->id);
        size_t cn = t->tok[a->id].str_len;
        if (t->norm && a->normalized) {
            if (!m && !(m = tk_match_new())) {
                r = -1;
                break;
            }
            if (tk_norm_apply(t->norm, m, c, cn, &tmp)) {
                r = -1;
                break;
            }
            c = tmp.p;
            cn = tmp.n;
            t->has_norm_added = 1;
        }
        a->moff = t->mstrs.n;
        a->mlen = (uint32_t)cn;
        r = bpe_sbuf_add(&t->mstrs, c, cn);
    }
    tk_match_free(m);
    free(tmp.p);
    return r;
}

/* Roles by the usual names, for those a file left unset. */
void bpe_default_roles(dpo_bpe *t, const int *explicit_role) {
    static const char *const names[DPO_BPE_NROLES][6] = {
        {"<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", NULL},
        {"<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "<|startoftext|>", NULL},
        {"<pad>", "<|pad|>", "[PAD]", "<|padding|>", NULL, NULL},
        {NULL, NULL, NULL, NULL, NULL, NULL},
    };
    for (int r = 0; r < DPO_BPE_NROLES; r++) {
        if (t->role[r] >= 0 || (explicit_role && explicit_role[r])) continue;
        for (int k = 0; names[r][k] && t->role[r] < 0; k++) {
            int32_t id = bpe_vmap_find(t, names[r][k], strlen(names[r][k]));
            if (id >= 0 && t->tok[id].added) t->role[r] = id;
        }
    }
    /* GPT-2's one special token begins texts as well as ending them */
    if (t->role[DPO_BPE_BOS] < 0 && !(explicit_role && explicit_role[DPO_BPE_BOS]) &&
        t->role[DPO_BPE_EOS] >= 0 && t->tok[t->role[DPO_BPE_EOS]].str_len == 13 &&
        memcmp(bpe_tok_str(t, t->role[DPO_BPE_EOS]), "<|endoftext|>", 13) == 0)
        t->role[DPO_BPE_BOS] = t->role[DPO_BPE_EOS];
}

/* After the tokens, added tokens and merges are in: the byte tokens, the
** pair map and the order added tokens are matched in. */
dpo_status bpe_finish(dpo_bpe *t, const char *where, dpo_error *e) {
    for (int b = 0; b < 256; b++) {
        char s[2];
        size_t n = bl_put(s, (unsigned char)b);
        int32_t id = bpe_vmap_find(t, s, n);
        t->byte_id[b] = (id >= 0 && !t->tok[id].added) ? id : -1;
    }
    free(t->pkey);
    free(t->prank);
    t->pcap = pow2_at_least(2 * (size_t)t->nmerges + 2);
    t->pkey = (uint64_t *)malloc(t->pcap * sizeof *t->pkey);
    t->prank = (int32_t *)malloc(t->pcap * sizeof *t->prank);
    free(t->amatch);
    t->amatch = (int *)malloc(((size_t)t->nadded + 1) * sizeof *t->amatch);
    if (!t->pkey || !t->prank || !t->amatch) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory for the merges", where);
        return e->status;
    }
    memset(t->pkey, 0xff, t->pcap * sizeof *t->pkey);
    for (int32_t r = 0; r < t->nmerges; r++) { /* a repeated pair keeps its last rank */
        uint64_t k = (uint64_t)(uint32_t)t->merge[3 * r] << 32 | (uint32_t)t->merge[3 * r + 1];
        size_t mask = t->pcap - 1, i = (size_t)bpe_mix64(k) & mask;
        while (t->pkey[i] != PAIR_EMPTY && t->pkey[i] != k) i = (i + 1) & mask;
        t->pkey[i] = k;
        t->prank[i] = r;
    }
    for (int b = 0; b < 256; b++) { /* byte_fallback's <0xNN> tokens */
        char s[8];
        int32_t id;
        snprintf(s, sizeof s, "<0x%02X>", b);
        id = bpe_vmap_find(t, s, 6);
        t->byte_fb[b] = (id >= 0 && t->tok[id].model) ? id : -1;
    }
    if (added_texts(t) != 0) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory for the added tokens", where);
        return e->status;
    }
    memset(t->afirst, 0, sizeof t->afirst);
    t->afirst_only = -1;
    for (int k = 0, seen = 0; k < t->nadded; k++) {
        unsigned char b;
        t->amatch[k] = k;
        if (t->added[k].mlen == 0) continue; /* normalized to nothing: never matched */
        b = (unsigned char)t->mstrs.p[t->added[k].moff];
        t->afirst[b] = 1;
        t->afirst_only = (!seen++ || t->afirst_only == b) ? b : -2;
    }
    /* insertion sort, stable: few added tokens */
    for (int k = 1; k < t->nadded; k++) {
        int v = t->amatch[k], j = k;
        while (j > 0 && cmp_added_len(&t->amatch[j - 1], &v, t) > 0) {
            t->amatch[j] = t->amatch[j - 1];
            j--;
        }
        t->amatch[j] = v;
    }
    return DPO_OK;
}

static int cmp_added_len(const void *pa, const void *pb, void *ctx) {
    const dpo_bpe *t = (const dpo_bpe *)ctx;
    uint32_t la = t->added[*(const int *)pa].mlen;
    uint32_t lb = t->added[*(const int *)pb].mlen;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

/* ---- merging one word ------------------------------------------------------------- */

/* The byte tokens of w (the unknown token, or nothing, for a byte the
** vocabulary lacks) into sym; returns their number. */
static size_t initial_symbols(const dpo_bpe *t, const unsigned char *w, size_t n, int32_t *sym) {
    size_t m = 0;
    int32_t unk = t->role[DPO_BPE_UNK];
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id >= 0)
            sym[m++] = id;
        else if (unk >= 0)
            sym[m++] = unk;
    }
    return m;
}

/* Lowest rank first, leftmost among equals: rank[i] is the rank of (sym[i], sym[i+1]). */
static size_t merge_small(const dpo_bpe *t, int32_t *sym, size_t m) {
    int32_t rank[SMALL_WORD];
    for (size_t i = 0; i + 1 < m; i++) rank[i] = pair_rank(t, sym[i], sym[i + 1]);
    while (m > 1) {
        size_t best = SIZE_MAX;
        int32_t br = INT32_MAX;
        for (size_t i = 0; i + 1 < m; i++)
            if (rank[i] >= 0 && rank[i] < br) br = rank[i], best = i;
        if (best == SIZE_MAX) break;
        sym[best] = t->merge[3 * br + 2];
        if (best + 2 < m) memmove(sym + best + 1, sym + best + 2, (m - best - 2) * sizeof *sym);
        if (best + 3 < m) memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
        m--;
        if (best > 0) rank[best - 1] = pair_rank(t, sym[best - 1], sym[best]);
        if (best + 1 < m) rank[best] = pair_rank(t, sym[best], sym[best + 1]);
    }
    return m;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

/*
** The same order for long words in O(n log n): a min-heap of (rank, left
** position) over a linked list of symbols; an entry whose pair changed
** since it was pushed is skipped. -1 when memory runs out.
*/
static long merge_large(const dpo_bpe *t, int32_t *sym, size_t m) {
    int32_t *next, *prev;
    uint64_t *heap;
    size_t hn = 0, k = 0;
    if (m >= ((size_t)1 << 31)) return -1;
    next = (int32_t *)malloc(m * sizeof *next);
    prev = (int32_t *)malloc(m * sizeof *prev);
    heap = (uint64_t *)malloc(3 * m * sizeof *heap);
    if (!next || !prev || !heap) {
        free(next), free(prev), free(heap);
        return -1;
    }
    for (size_t i = 0; i < m; i++) {
        next[i] = i + 1 < m ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < m; i++) {
        int32_t r = pair_rank(t, sym[i], sym[i + 1]);
        if (r >= 0) heap_push(heap, &hn, (uint64_t)r << 32 | i);
    }
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        int32_t r = (int32_t)(top >> 32), i = (int32_t)(top & 0xffffffffu), j, r2;
        if (sym[i] < 0 || (j = next[i]) < 0 || pair_rank(t, sym[i], sym[j]) != r) continue;
        sym[i] = t->merge[3 * r + 2];
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        if (prev[i] >= 0 && (r2 = pair_rank(t, sym[prev[i]], sym[i])) >= 0)
            heap_push(heap, &hn, (uint64_t)r2 << 32 | (uint32_t)prev[i]);
        if (next[i] >= 0 && (r2 = pair_rank(t, sym[i], sym[next[i]])) >= 0)
            heap_push(heap, &hn, (uint64_t)r2 << 32 | (uint32_t)i);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) sym[k++] = sym[i];
    free(next), free(prev), free(heap);
    return (long)k;
}

/* GPT-2's loop, literally: take the lowest-ranked pair, merge every
** occurrence left to right, again. tmp has room for m. */
static size_t merge_ref(const dpo_bpe *t, int32_t *sym, size_t m, int32_t *tmp) {
    while (m > 1) {
        int32_t best = -1, a, b, x;
        size_t i = 0, k = 0;
        for (size_t q = 0; q + 1 < m; q++) {
            int32_t r = pair_rank(t, sym[q], sym[q + 1]);
            if (r >= 0 && (best < 0 || r < best)) best = r;
        }
        if (best < 0) break;
        a = t->merge[3 * best], b = t->merge[3 * best + 1], x = t->merge[3 * best + 2];
        while (i < m) {
            if (sym[i] == a && i + 1 < m && sym[i + 1] == b) {
                tmp[k++] = x;
                i += 2;
            } else {
                tmp[k++] = sym[i++];
            }
        }
        memcpy(sym, tmp, k * sizeof *sym);
        m = k;
    }
    return m;
}

/* The whole word as one token when the vocabulary has it (ignore_merges). */
static int32_t whole_word(const dpo_bpe *t, const unsigned char *w, size_t n) {
    char stack[512] = "", *s = n <= 256 ? stack : (char *)malloc(2 * n);
    size_t k = 0;
    int32_t id;
    if (!s) return -1;
    for (size_t i = 0; i < n; i++) k += bl_put(s + k, w[i]);
    id = bpe_vmap_find(t, s, k);
    if (s != stack) free(s);
    return id;
}

/* A token of the model's vocabulary (not an added-only token), or -1. */
static int32_t model_find(const dpo_bpe *t, const char *s, size_t n) {
    int32_t id = bpe_vmap_find(t, s, n);
    return (id >= 0 && t->tok[id].model) ? id : -1;
}

/*
** The initial symbols of a word whose characters are the model's own (not
** byte-level): each character (with continuing_subword_prefix after the
** first, end_of_word_suffix on the last) is a token, else its bytes' <0xNN>
** tokens (byte_fallback), else the unknown token, runs of which are fused
** (fuse_unk); as Hugging Face's BPE::merge_word, the pending unknown token
** waiting through byte-fallback tokens included. A byte that is not UTF-8
** is a character of its own. sym has room for n; returns the count, -1: memory.
*/
static long char_symbols(const dpo_bpe *t, const unsigned char *w, size_t n, int32_t *sym) {
    char stack[64], *buf = stack;
    size_t cap = sizeof stack, m = 0;
    int32_t unk = t->role[DPO_BPE_UNK], pend = -1;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t l = utf8proc_iterate(w + i, (utf8proc_ssize_t)(n - i), &c);
        size_t len = l > 0 ? (size_t)l : 1, k = 0, need;
        int pre = i > 0 && t->ncprefix, suf = i + len == n && t->neow;
        int32_t id;
        need = len + (pre ? t->ncprefix : 0) + (suf ? t->neow : 0);
        if (need > cap) {
            char *q = (char *)malloc(need);
            if (!q) {
                if (buf != stack) free(buf);
                return -1;
            }
            if (buf != stack) free(buf);
            buf = q;
            cap = need;
        }
        if (pre) memcpy(buf, t->cprefix, t->ncprefix), k = t->ncprefix;
        memcpy(buf + k, w + i, len), k += len;
        if (suf) memcpy(buf + k, t->eow_suffix, t->neow), k += t->neow;
        i += len;
        if ((id = model_find(t, buf, k)) >= 0) {
            if (pend >= 0) sym[m++] = pend, pend = -1;
            sym[m++] = id;
            continue;
        }
        if (t->byte_fallback) {
            size_t q = 0;
            while (q < k && t->byte_fb[(unsigned char)buf[q]] >= 0) q++;
            if (q == k) {
                for (q = 0; q < k; q++) sym[m++] = t->byte_fb[(unsigned char)buf[q]];
                continue;
            }
        }
        if (unk >= 0) {
            if (pend >= 0 && !t->fuse_unk) sym[m++] = pend;
            pend = unk;
        }
    }
    if (pend >= 0) sym[m++] = pend;
    if (buf != stack) free(buf);
    return (long)m;
}

/* Append the BPE tokens of word w to out. -1: out of memory. */
static int word_tokens(const dpo_bpe *t, const unsigned char *w, size_t n, int fast,
                       dpo_bpe_ids *out) {
    int32_t *sym;
    size_t m, room = n;
    if (t->ignore_merges) {
        int32_t id = t->byte_level ? whole_word(t, w, n) : model_find(t, (const char *)w, n);
        if (id >= 0 && t->tok[id].model) return ids_push(out, id);
    }
    /* char mode: a symbol per byte at most, plus the affixes' bytes */
    if (!t->byte_level) room = n * (1 + t->ncprefix + t->neow) + t->neow + 1;
    if (ids_reserve(out, room)) return -1;
    sym = out->ids + out->n;
    if (t->byte_level) {
        m = initial_symbols(t, w, n, sym);
    } else {
        long k = char_symbols(t, w, n, sym);
        if (k < 0) return -1;
        m = (size_t)k;
    }
    if (!fast) {
        int32_t *tmp = (int32_t *)malloc((m + 1) * sizeof *tmp);
        if (!tmp) return -1;
        m = merge_ref(t, sym, m, tmp);
        free(tmp);
    } else if (m <= SMALL_WORD) {
        m = merge_small(t, sym, m);
    } else {
        long k = merge_large(t, sym, m);
        if (k < 0) return -1;
        m = (size_t)k;
    }
    out->n += m;
    return 0;
}

dpo_status dpo_bpe_word(const dpo_bpe *t, const char *w, size_t n, int fast, dpo_bpe_ids *out,
                        dpo_error *e) {
    if (word_tokens(t, (const unsigned char *)w, n, fast, out)) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for a word of %zu bytes", n);
        return e->status;
    }
    return DPO_OK;
}

/* ---- the word cache ------------------------------------------------------------------ */

static void cache_clear(bpe_cache *c) {
    memset(c->slot, 0, CACHE_SLOTS * sizeof *c->slot);
    c->nk = c->nv = c->n = 0;
}

static int cache_ready(bpe_cache *c) {
    if (c->slot) return 1;
    if (c->failed) return 0;
    c->slot = (cache_slot *)calloc(CACHE_SLOTS, sizeof *c->slot);
    c->key = (unsigned char *)malloc(CACHE_KEYS);
    c->val = (int32_t *)malloc(CACHE_VALS * sizeof *c->val);
    if (!c->slot || !c->key || !c->val) {
        cache_free(c);
        c->failed = 1;
        return 0;
    }
    return 1;
}

static const cache_slot *cache_get(const bpe_cache *c, const unsigned char *w, size_t n,
                                   uint64_t h) {
    size_t i = (size_t)h & (CACHE_SLOTS - 1);
    for (;;) {
        const cache_slot *s = &c->slot[i];
        if (s->h == 0) return NULL;
        if (s->h == h && s->kn == n && memcmp(c->key + s->k, w, n) == 0) return s;
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
}

static void cache_put(bpe_cache *c, const unsigned char *w, size_t n, uint64_t h,
                      const int32_t *ids, size_t nv) {
    size_t i;
    cache_slot *s;
    if (c->n >= CACHE_MAXN || c->nk + n > CACHE_KEYS || c->nv + nv > CACHE_VALS) cache_clear(c);
    i = (size_t)h & (CACHE_SLOTS - 1);
    while (c->slot[i].h != 0) i = (i + 1) & (CACHE_SLOTS - 1);
    s = &c->slot[i];
    s->h = h;
    s->k = (uint32_t)c->nk;
    s->kn = (uint8_t)n;
    s->v = (uint32_t)c->nv;
    s->vn = (uint8_t)nv;
    memcpy(c->key + c->nk, w, n);
    memcpy(c->val + c->nv, ids, nv * sizeof *ids);
    c->nk += n;
    c->nv += nv;
    c->n++;
}

/* ---- encoding ---------------------------------------------------------------------- */

static int encode_piece(const dpo_bpe *t, bpe_cache *c, const unsigned char *w, size_t n,
                        dpo_bpe_ids *out) {
    uint64_t h = 0;
    size_t before;
    if (n == 1 && t->byte_level) {
        int32_t id = t->byte_id[w[0]];
        if (id < 0) id = t->role[DPO_BPE_UNK];
        return id >= 0 ? ids_push(out, id) : 0;
    }
    if (n <= CACHE_WORD && c && cache_ready(c)) {
        const cache_slot *s;
        h = bpe_hash_bytes(w, n);
        s = cache_get(c, w, n, h);
        if (s) {
            const int32_t *v = c->val + s->v;
            if (out->cap - out->n < s->vn && ids_reserve(out, s->vn)) return -1;
            for (unsigned k = 0; k < s->vn; k++) out->ids[out->n + k] = v[k]; /* mostly 1 or 2 */
            out->n += s->vn;
            return 0;
        }
    }
    before = out->n;
    if (word_tokens(t, w, n, 1, out)) return -1;
    if (h) cache_put(c, w, n, h, out->ids + before, out->n - before);
    return 0;
}

/* Text with no added tokens in it: pre-tokenize, merge each piece. */
static int encode_body(const dpo_bpe *t, bpe_cache *c, const unsigned char *s, size_t n,
                       dpo_bpe_ids *out) {
    if (t->nmerges == 0 && !t->ignore_merges) { /* bytes: no need to split */
        int32_t unk = t->role[DPO_BPE_UNK];
        if (ids_reserve(out, n)) return -1;
        for (size_t i = 0; i < n; i++) {
            int32_t id = t->byte_id[s[i]];
            if (id < 0) id = unk;
            if (id >= 0) out->ids[out->n++] = id;
        }
        return 0;
    }
    if (!t->use_regex) return encode_piece(t, c, s, n, out);
    for (size_t i = 0; i < n;) {
        size_t j = bpe_next_piece(s, n, i);
        if (encode_piece(t, c, s + i, j - i, out)) return -1;
        i = j;
    }
    return 0;
}

/* The same, with the ByteLevel option add_prefix_space. */
static int encode_plain(const dpo_bpe *t, bpe_cache *c, const unsigned char *s, size_t n,
                        dpo_bpe_ids *out) {
    unsigned char *p;
    int r;
    if (n == 0) return 0;
    if (!t->add_prefix_space || s[0] == ' ') return encode_body(t, c, s, n, out);
    p = (unsigned char *)malloc(n + 1);
    if (!p) return -1;
    p[0] = ' ';
    memcpy(p + 1, s, n);
    r = encode_body(t, c, p, n + 1, out);
    free(p);
    return r;
}

static int is_word_char(const unsigned char *s, size_t n, size_t i) {
    size_t len;
    int cl = char_at(s, n, i, &len);
    return cl == CL_LETTER || cl == CL_NUMBER || s[i] == '_';
}

/*
** The leftmost added token at or after `from` (the longest there): 1 with
** [*ms, *me) the span it takes (with the whitespace lstrip / rstrip take)
** and *id, or 0.
*/
static int find_added(const dpo_bpe *t, int pass, const unsigned char *s, size_t n, size_t from,
                      size_t *ms, size_t *me, int32_t *id) {
    for (size_t p = from; p < n; p++) {
        if (t->afirst_only >= 0) { /* one first byte, as GPT-2's '<': memchr */
            const unsigned char *q = (const unsigned char *)memchr(s + p, t->afirst_only, n - p);
            if (!q) return 0;
            p = (size_t)(q - s);
        } else if (!t->afirst[s[p]]) {
            continue;
        }
        for (int k = 0; k < t->nadded; k++) {
            const added_tok *a = &t->added[t->amatch[k]];
            size_t len = a->mlen, st;
            if (pass && a->normalized != (pass == 2)) continue;
            if (len == 0 || len > n - p || memcmp(t->mstrs.p + a->moff, s + p, len) != 0) continue;
            if (a->single_word) {
                if (p > from && is_word_char(s, n, p - 1)) {
                    size_t q;
                    char_before(s, n, from, p, &q);
                    if (is_word_char(s, n, q)) continue;
                }
                if (p + len < n && is_word_char(s, n, p + len)) continue;
            }
            *ms = p;
            *me = p + len;
            if (a->lstrip)
                while (*ms > from && char_before(s, n, from, *ms, &st) == CL_SPACE) *ms = st;
            if (a->rstrip) {
                size_t l;
                while (*me < n && char_at(s, n, *me, &l) == CL_SPACE) *me += l;
            }
            *id = a->id;
            return 1;
        }
    }
    return 0;
}

/* ---- the tokenizer.json pipeline ------------------------------------------------------ */

/* Pre-tokenize s[0..n) (normalized) and run the model on each piece. */
static int encode_pieces(const dpo_bpe *t, bpe_cache *c, tk_ws *w, const unsigned char *s, size_t n,
                         int first, dpo_bpe_ids *out) {
    const tk_pieces *pc;
    const unsigned char *b;
    if (n == 0) return 0;
    if (!t->pre) return encode_piece(t, c, s, n, out);
    if (tk_pre_apply(t->pre, w, (const char *)s, n, first)) return -1;
    pc = &w->pcs[w->cp];
    b = (const unsigned char *)w->buf[w->cb].p;
    for (size_t k = 0; k < pc->n; k++)
        if (encode_piece(t, c, b + pc->p[k].off, pc->p[k].len, out)) return -1;
    return 0;
}

/* A text between added tokens: normalize, match the normalized added tokens
** (special) in it, encode the rest. first: it starts the input. */
static int encode_segment(const dpo_bpe *t, bpe_cache *c, tk_ws *w, const unsigned char *s,
                          size_t n, int first, int special, dpo_bpe_ids *out) {
    size_t start = 0, ms, me, nn;
    const unsigned char *x;
    int32_t id;
    if (n == 0) return 0;
    if (!t->norm) return encode_pieces(t, c, w, s, n, first, out);
    if (tk_norm_apply(t->norm, w->m, (const char *)s, n, &w->norm)) return -1;
    /* the pieces' buffers are reused below: work on a copy of the normalized text */
    if (bpe_sbuf_reserve(&w->norm2, w->norm.n)) return -1;
    memcpy(w->norm2.p, w->norm.p, w->norm.n);
    w->norm2.n = nn = w->norm.n;
    x = (const unsigned char *)w->norm2.p;
    if (special && t->has_norm_added)
        while (start < nn && find_added(t, 2, x, nn, start, &ms, &me, &id)) {
            if (encode_pieces(t, c, w, x + start, ms - start, first && start == 0, out) ||
                ids_push(out, id))
                return -1;
            start = me;
        }
    return encode_pieces(t, c, w, x + start, nn - start, first && start == 0, out);
}

static int encode_text(const dpo_bpe *t, bpe_cache *c, tk_ws *w, const unsigned char *s, size_t n,
                       int special, dpo_bpe_ids *out) {
    size_t start = 0, ms, me;
    int32_t id;
    int pass = t->norm ? 1 : 0;
    if (t->pipeline) {
        if (!w) return -1;
        if (special && t->nadded)
            while (start < n && find_added(t, pass, s, n, start, &ms, &me, &id)) {
                if (encode_segment(t, c, w, s + start, ms - start, start == 0, special, out) ||
                    ids_push(out, id))
                    return -1;
                start = me;
            }
        return encode_segment(t, c, w, s + start, n - start, start == 0, special, out);
    }
    if (!special || t->nadded == 0) return encode_plain(t, c, s, n, out);
    while (start < n && find_added(t, 0, s, n, start, &ms, &me, &id)) {
        if (encode_plain(t, c, s + start, ms - start, out) || ids_push(out, id)) return -1;
        start = me;
    }
    return encode_plain(t, c, s + start, n - start, out);
}

static int ensure_caches(dpo_bpe *t, int k) {
    bpe_cache *c;
    tk_ws **w;
    if (k <= t->ncache) return 0;
    w = (tk_ws **)realloc(t->ws, (size_t)k * sizeof *w);
    if (!w) return -1;
    t->ws = w;
    for (int i = t->ncache; i < k; i++) w[i] = NULL;
    if (t->pipeline)
        for (int i = t->ncache; i < k; i++)
            if (!(w[i] = tk_ws_new())) {
                for (int q = t->ncache; q < i; q++) tk_ws_free(w[q]), w[q] = NULL;
                return -1;
            }
    c = (bpe_cache *)realloc(t->cache, (size_t)k * sizeof *c);
    if (!c) {
        for (int q = t->ncache; q < k; q++) tk_ws_free(w[q]), w[q] = NULL;
        return -1;
    }
    memset(c + t->ncache, 0, (size_t)(k - t->ncache) * sizeof *c);
    t->cache = c;
    t->ncache = k;
    return 0;
}

/* One text, then the post-processor's tokens around it when asked. */
static int encode_one(const dpo_bpe *t, bpe_cache *c, tk_ws *w, const unsigned char *s, size_t n,
                      int flags, dpo_bpe_ids *out) {
    size_t start = out->n;
    if (encode_text(t, c, w, s, n, flags & DPO_BPE_SPECIAL, out)) return -1;
    return (flags & DPO_BPE_ADD_SPECIAL) ? tk_post_apply(&t->post, out, start) : 0;
}

dpo_status dpo_bpe_encode(dpo_bpe *t, const char *s, size_t n, int flags, dpo_bpe_ids *out,
                          dpo_error *e) {
    int ok = ensure_caches(t, 1) == 0;
    bpe_cache *c = ok ? &t->cache[0] : NULL;
    tk_ws *w = ok ? t->ws[0] : NULL;
    if (encode_one(t, c, w, (const unsigned char *)s, n, flags, out)) {
        dpo_fail(e, DPO_ERR_MEM, 0,
                 "out of memory encoding %zu bytes (or a regex ran past PCRE2's match limits)", n);
        return e->status;
    }
    return DPO_OK;
}

dpo_status dpo_bpe_encode_batch(dpo_bpe *t, size_t count, const char *const *texts,
                                const size_t *lens, int flags, dpo_bpe_ids *outs, dpo_error *e) {
    int nt = omp_get_max_threads(), failed = 0;
    if ((size_t)nt > count) nt = (int)count;
    if (nt < 1) nt = 1;
    if (ensure_caches(t, nt)) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory for %d word caches", nt);
        return e->status;
    }
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
    for (long k = 0; k < (long)count; k++) {
        bpe_cache *c = &t->cache[omp_get_thread_num()];
        tk_ws *w = t->ws[omp_get_thread_num()];
        dpo_bpe_ids v = outs[k]; /* a local copy: neighbours in outs share cache lines */
        if (encode_one(t, c, w, (const unsigned char *)texts[k], lens[k], flags, &v)) {
#pragma omp atomic write
            failed = 1;
        }
        outs[k] = v;
    }
    if (failed) {
        dpo_fail(e, DPO_ERR_MEM, 0,
                 "out of memory encoding a batch of %zu texts (or a regex ran past PCRE2's "
                 "match limits)",
                 count);
        return e->status;
    }
    return DPO_OK;
}

static int is_special(const dpo_bpe *t, int32_t id) {
    if (!t->tok[id].added) return 0;
    for (int k = 0; k < t->nadded; k++)
        if (t->added[k].id == id) return t->added[k].special;
    return 0;
}

/* Through tokenizer.json's decoders: the tokens' strings, then the chain. */
static char *decode_chain(const dpo_bpe *t, const int32_t *ids, size_t n, int skip_special,
                          size_t *len, dpo_error *e) {
    const char **strs = (const char **)malloc((n + 1) * sizeof *strs);
    size_t *lens = (size_t *)malloc((n + 1) * sizeof *lens), k = 0;
    tk_match *m = tk_match_new();
    char *out = NULL;
    if (strs && lens && m) {
        for (size_t i = 0; i < n; i++) {
            const tok_entry *te = &t->tok[ids[i]];
            int norm = 0;
            strs[k] = bpe_tok_str(t, ids[i]);
            lens[k] = te->str_len;
            /* a token matched after normalizing decodes from its normalized
               form, so the decoder undoes the normalizer; and, as in Hugging
               Face's, that form is not skipped as special unless it is the
               content itself */
            for (int q = 0; te->added && t->has_norm_added && q < t->nadded; q++)
                if (t->added[q].id == ids[i] && t->added[q].normalized) {
                    strs[k] = t->mstrs.p + t->added[q].moff;
                    lens[k] = t->added[q].mlen;
                    norm =
                        lens[k] != te->str_len || memcmp(strs[k], bpe_tok_str(t, ids[i]), lens[k]);
                }
            if (skip_special && te->added && !norm && is_special(t, ids[i])) continue;
            k++;
        }
        if (t->dec_join) { /* no decoder: the tokens joined by spaces */
            size_t total = 0;
            for (size_t q = 0; q < k; q++) total += lens[q] + 1;
            if ((out = (char *)malloc(total + 1)) != NULL) {
                *len = 0;
                for (size_t q = 0; q < k; q++) {
                    if (q) out[(*len)++] = ' ';
                    memcpy(out + *len, strs[q], lens[q]);
                    *len += lens[q];
                }
                out[*len] = '\0';
            }
        } else {
            out = tk_dec_apply(t->dec, m, strs, lens, k, len);
        }
    }
    free(strs), free(lens), tk_match_free(m);
    if (!out) return (char *)dpo_fail(e, DPO_ERR_MEM, 0, "out of memory decoding %zu ids", n);
    return out;
}

char *dpo_bpe_decode(const dpo_bpe *t, const int32_t *ids, size_t n, int skip_special, size_t *len,
                     dpo_error *e) {
    size_t total = 0, k = 0;
    char *out;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n)
            return (char *)dpo_fail(e, DPO_ERR_RANGE, 1,
                                    "id %ld is out of range (vocabulary of %ld tokens, 0..%ld)",
                                    (long)id, (long)t->n, (long)t->n - 1);
        if (!t->tok[id].used)
            return (char *)dpo_fail(e, DPO_ERR_RANGE, 1, "id %ld is not in the vocabulary",
                                    (long)id);
        total += t->tok[id].raw_len;
    }
    if (t->dec || t->dec_join) return decode_chain(t, ids, n, skip_special, len, e);
    out = (char *)malloc(total + 1);
    if (!out) return (char *)dpo_fail(e, DPO_ERR_MEM, 0, "out of memory decoding %zu ids", n);
    for (size_t i = 0; i < n; i++) {
        const tok_entry *te = &t->tok[ids[i]];
        if (skip_special && te->added && is_special(t, ids[i])) continue;
        memcpy(out + k, t->raws.p + te->raw, te->raw_len);
        k += te->raw_len;
    }
    out[k] = '\0';
    *len = k;
    return out;
}

/* ---- facts --------------------------------------------------------------------------- */

int32_t dpo_bpe_vocab_size(const dpo_bpe *t) {
    return t->n;
}

int32_t dpo_bpe_num_merges(const dpo_bpe *t) {
    return t->nmerges;
}

int dpo_bpe_byte_level(const dpo_bpe *t) {
    return t->byte_level;
}

int32_t dpo_bpe_token_to_id(const dpo_bpe *t, const char *s, size_t n) {
    return bpe_vmap_find(t, s, n);
}

const char *dpo_bpe_id_to_token(const dpo_bpe *t, int32_t id, size_t *n) {
    if (id < 0 || id >= t->n || !t->tok[id].used) return NULL;
    *n = t->tok[id].str_len;
    return bpe_tok_str(t, id);
}

const char *dpo_bpe_id_to_bytes(const dpo_bpe *t, int32_t id, size_t *n) {
    if (id < 0 || id >= t->n || !t->tok[id].used) return NULL;
    *n = t->tok[id].raw_len;
    return t->raws.p + t->tok[id].raw;
}

int32_t dpo_bpe_role_id(const dpo_bpe *t, dpo_bpe_role r) {
    return (r >= 0 && r < DPO_BPE_NROLES) ? t->role[r] : -1;
}

dpo_status dpo_bpe_set_role(dpo_bpe *t, dpo_bpe_role r, int32_t id, dpo_error *e) {
    if (r < 0 || r >= DPO_BPE_NROLES) {
        dpo_fail(e, DPO_ERR_ARG, 1, "no such role");
        return e->status;
    }
    if (id != -1 && (id < 0 || id >= t->n || !t->tok[id].used)) {
        dpo_fail(e, DPO_ERR_RANGE, 2, "id %ld is not in the vocabulary (0..%ld)", (long)id,
                 (long)t->n - 1);
        return e->status;
    }
    t->role[r] = id;
    return DPO_OK;
}

int dpo_bpe_num_added(const dpo_bpe *t) {
    return t->nadded;
}

int32_t dpo_bpe_added(const dpo_bpe *t, int k, int *special) {
    if (k < 0 || k >= t->nadded) return -1;
    if (special) *special = t->added[k].special;
    return t->added[k].id;
}

/* ---- the byte tokenizer --------------------------------------------------------------- */

dpo_status bpe_add_byte_tokens(dpo_bpe *t, dpo_error *e) {
    for (int b = 0; b < 256; b++) {
        char s[2];
        size_t n = bl_put(s, (unsigned char)b);
        if (bpe_set_token(t, b, s, n, 0, "bytes", e) != DPO_OK) return e->status;
    }
    return DPO_OK;
}

dpo_bpe *dpo_bpe_bytes(dpo_error *e) {
    dpo_bpe *t = bpe_new(e);
    if (!t) return NULL;
    if (bpe_add_byte_tokens(t, e) != DPO_OK ||
        bpe_set_token(t, 256, "<|endoftext|>", 13, 1, "bytes", e) != DPO_OK ||
        bpe_add_added(t, 256, 1, 0, 0, 0, 0, "bytes", e) != DPO_OK ||
        bpe_finish(t, "bytes", e) != DPO_OK) {
        dpo_bpe_free(t);
        return NULL;
    }
    bpe_default_roles(t, NULL);
    return t;
}
