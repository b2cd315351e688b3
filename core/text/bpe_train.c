/*
** bpe_train.c: byte-level BPE training (see bpe.h, dpo_bpe_train).
**
** Words are counted with GPT-2's pre-tokenization (special tokens split the
** text first), then the most frequent adjacent pair is merged, again and
** again, with pair counts kept in a hash map and a max-heap and each merge
** updating only the words that hold the pair, until the vocabulary is full or
** no pair reaches min_frequency. Ties go to the pair of smaller token ids,
** so a corpus always gives the same merges.
*/
#include "text/bpe_impl.h"

#include <omp.h>
#include <utf8proc.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- training: counting words ------------------------------------------------------ */

#define CHUNK ((size_t)1 << 20)  /* texts are counted in pieces of about this size */
#define BLOCK ((size_t)32 << 20) /* files are read in blocks of this size */

/* The special tokens cut out of a corpus: leftmost, then longest. */
typedef struct {
    const char *const *s;
    size_t *len;
    int n, has_nl;
    uint8_t first[256];
} specials;

static size_t find_special(const specials *sp, const unsigned char *s, size_t n, size_t from,
                           size_t *mlen) {
    if (sp->n == 0) return n;
    for (size_t p = from; p < n; p++) {
        size_t best = 0;
        if (!sp->first[s[p]]) continue;
        for (int k = 0; k < sp->n; k++)
            if (sp->len[k] > best && sp->len[k] <= n - p &&
                memcmp(sp->s[k], s + p, sp->len[k]) == 0)
                best = sp->len[k];
        if (best) {
            *mlen = best;
            return p;
        }
    }
    return n;
}

/* Unique words with their counts: open addressing over entries. */
typedef struct {
    uint32_t *slot; /* [cap] entry + 1, 0: empty */
    size_t cap;
    uint64_t *hash; /* [n] */
    size_t *off;    /* [n] in keys */
    size_t *len;    /* [n] */
    int64_t *count; /* [n] */
    size_t n, ecap;
    sbuf keys;
} wordmap;

static void wm_free(wordmap *m) {
    free(m->slot), free(m->hash), free(m->off), free(m->len), free(m->count), free(m->keys.p);
    memset(m, 0, sizeof *m);
}

static int wm_rehash(wordmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 4096;
    uint32_t *slot = (uint32_t *)calloc(cap, sizeof *slot);
    if (!slot || cap > ((size_t)1 << 33)) {
        free(slot);
        return -1;
    }
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (size_t)m->hash[k] & (cap - 1);
        while (slot[i]) i = (i + 1) & (cap - 1);
        slot[i] = (uint32_t)(k + 1);
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    return 0;
}

static int wm_add(wordmap *m, const unsigned char *w, size_t n, uint64_t h, int64_t count) {
    size_t i, k;
    if ((m->n + 1) * 2 > m->cap && wm_rehash(m)) return -1;
    for (i = (size_t)h & (m->cap - 1); m->slot[i]; i = (i + 1) & (m->cap - 1)) {
        k = m->slot[i] - 1;
        if (m->hash[k] == h && m->len[k] == n && memcmp(m->keys.p + m->off[k], w, n) == 0) {
            m->count[k] += count;
            return 0;
        }
    }
    if (m->n == m->ecap) {
        size_t c = m->ecap ? 2 * m->ecap : 1024, c1 = m->ecap, c2 = m->ecap, c3 = m->ecap,
               c4 = m->ecap;
        if (m->n >= UINT32_MAX - 1 || bpe_grow((void **)&m->hash, &c1, c, sizeof *m->hash) ||
            bpe_grow((void **)&m->off, &c2, c, sizeof *m->off) ||
            bpe_grow((void **)&m->len, &c3, c, sizeof *m->len) ||
            bpe_grow((void **)&m->count, &c4, c, sizeof *m->count))
            return -1;
        m->ecap = c;
    }
    k = m->n++;
    m->hash[k] = h;
    m->off[k] = m->keys.n;
    m->len[k] = n;
    m->count[k] = count;
    m->slot[i] = (uint32_t)(k + 1);
    return bpe_sbuf_add(&m->keys, w, n);
}

/* Count the pieces of s[0..n), special tokens cut out. */
static int count_text(wordmap *m, const unsigned char *s, size_t n, const specials *sp) {
    size_t start = 0, ml = 0;
    while (start < n) {
        size_t p = find_special(sp, s, n, start, &ml);
        for (size_t i = start; i < p;) {
            size_t j = bpe_next_piece(s, p, i);
            if (wm_add(m, s + i, j - i, bpe_hash_bytes(s + i, j - i), 1)) return -1;
            i = j;
        }
        start = p < n ? p + ml : n;
    }
    return 0;
}

/*
** Whether a text may be cut before s[p] without changing its pieces: after
** a lone "\n" that follows a non-space ASCII byte and precedes one, outside
** any special token. The "\n" is a piece of its own on both sides.
*/
static int cut_ok(const unsigned char *s, size_t n, size_t p, const specials *sp) {
    if (p < 2 || p >= n || s[p - 1] != '\n' || s[p - 2] >= 0x80 || s[p] >= 0x80 ||
        bpe_class_bmp[s[p - 2]] == CL_SPACE || bpe_class_bmp[s[p]] == CL_SPACE)
        return 0;
    for (int k = 0; sp->has_nl && k < sp->n; k++)
        for (size_t q = 0; q < sp->len[k]; q++)
            if (sp->s[k][q] == '\n' && p - 1 >= q && p - 1 - q + sp->len[k] <= n &&
                memcmp(s + p - 1 - q, sp->s[k], sp->len[k]) == 0)
                return 0;
    return 1;
}

typedef struct {
    const unsigned char *p;
    size_t n;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spans;

/* Cut s[0..n) into spans of about CHUNK bytes at safe places. */
static int add_spans(spans *v, const unsigned char *s, size_t n, const specials *sp) {
    size_t pos = 0;
    while (pos < n) {
        size_t end = n;
        if (n - pos > 2 * CHUNK) {
            const unsigned char *q = s + pos + CHUNK, *nl;
            while ((nl = (const unsigned char *)memchr(q, '\n', (size_t)(s + n - q))) != NULL) {
                size_t p = (size_t)(nl - s) + 1;
                if (cut_ok(s, n, p, sp)) {
                    end = p;
                    break;
                }
                q = nl + 1;
            }
        }
        if (bpe_grow((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v)) return -1;
        v->v[v->n].p = s + pos;
        v->v[v->n].n = end - pos;
        v->n++;
        pos = end;
    }
    return 0;
}

/* Count every span, a word map per thread, then fold them into m. */
static int count_spans(wordmap *m, const spans *v, const specials *sp) {
    int nt = omp_get_max_threads(), failed = 0;
    wordmap *local;
    if ((size_t)nt > v->n) nt = (int)v->n;
    if (nt <= 1) {
        for (size_t k = 0; k < v->n; k++)
            if (count_text(m, v->v[k].p, v->v[k].n, sp)) return -1;
        return 0;
    }
    local = (wordmap *)calloc((size_t)nt, sizeof *local);
    if (!local) return -1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (long k = 0; k < (long)v->n; k++) {
        int f;
#pragma omp atomic read
        f = failed;
        if (!f && count_text(&local[omp_get_thread_num()], v->v[k].p, v->v[k].n, sp)) {
#pragma omp atomic write
            failed = 1;
        }
    }
    for (int i = 0; i < nt; i++) {
        for (size_t k = 0; !failed && k < local[i].n; k++)
            if (wm_add(m, (const unsigned char *)local[i].keys.p + local[i].off[k], local[i].len[k],
                       local[i].hash[k], local[i].count[k]))
                failed = 1;
        wm_free(&local[i]);
    }
    free(local);
    return failed ? -1 : 0;
}

/* A file, in blocks cut at safe places. */
static dpo_status count_file(wordmap *m, const char *path, const specials *sp, dpo_error *e) {
    FILE *f = fopen(path, "rb");
    size_t cap = BLOCK, have = 0;
    unsigned char *buf;
    spans v = {0};
    int eof = 0;
    if (!f) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(errno));
        return e->status;
    }
    buf = (unsigned char *)malloc(cap);
    if (!buf) goto nomem;
    while (!eof) {
        size_t got = fread(buf + have, 1, cap - have, f), cut;
        have += got;
        if (ferror(f)) {
            dpo_fail(e, DPO_ERR_IO, 0, "%s: read error: %s", path, strerror(errno));
            goto fail;
        }
        eof = feof(f) != 0;
        if (!eof && have < cap) continue; /* a short read: read on */
        cut = have;
        if (!eof) {
            for (cut = have - 1; cut >= 2 && !(buf[cut - 1] == '\n' && cut_ok(buf, have, cut, sp));)
                cut--;
            if (cut < 2) { /* no safe place in the block: take a bigger one */
                unsigned char *q =
                    cap > SIZE_MAX / 2 ? NULL : (unsigned char *)realloc(buf, cap * 2);
                if (!q) goto nomem;
                buf = q;
                cap *= 2;
                continue;
            }
        }
        v.n = 0;
        if (add_spans(&v, buf, cut, sp) || count_spans(m, &v, sp)) goto nomem;
        memmove(buf, buf + cut, have - cut);
        have -= cut;
        if (dpo_interrupted) {
            dpo_fail(e, DPO_ERR_ARG, 0, "interrupted");
            goto fail;
        }
    }
    free(v.v);
    free(buf);
    fclose(f);
    return DPO_OK;
nomem:
    dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory counting its words", path);
fail:
    free(v.v);
    free(buf);
    fclose(f);
    return e->status;
}

/* ---- training: merging --------------------------------------------------------------- */

typedef struct {
    int32_t *w; /* words where the pair occurs (or occurred) */
    uint32_t n, cap;
} wlist;

typedef struct {
    int64_t count;
    int32_t a, b;
} hentry;

enum { PF_TOUCHED = 1, PF_FORBIDDEN = 2 };

typedef struct {
    int32_t *sym;    /* symbols of every word, word after word */
    size_t *woff;    /* [nw] */
    uint32_t *wlen;  /* [nw] */
    int64_t *wcount; /* [nw] */
    size_t nw;
    uint64_t *pkey; /* [pcap] pair -> index map */
    int32_t *pidx;
    size_t pcap;
    int32_t *pa, *pb; /* [np] */
    int64_t *pcnt;
    wlist *pw;
    uint8_t *pflag;
    size_t np, pecap;
    hentry *heap;
    size_t hn, hcap;
    int32_t *touched;
    size_t ntouched, tcap;
} trainer;

static void trainer_free(trainer *tr) {
    for (size_t p = 0; p < tr->np; p++) free(tr->pw[p].w);
    free(tr->sym), free(tr->woff), free(tr->wlen), free(tr->wcount), free(tr->pkey);
    free(tr->pidx), free(tr->pa), free(tr->pb), free(tr->pcnt), free(tr->pw), free(tr->pflag);
    free(tr->heap), free(tr->touched);
}

/* The index of pair (a, b); create: add it when new. -1: absent or out of memory. */
static long pair_index(trainer *tr, int32_t a, int32_t b, int create) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i;
    if (create && (tr->np + 1) * 2 > tr->pcap) {
        size_t cap = tr->pcap ? tr->pcap * 2 : 4096;
        uint64_t *key = (uint64_t *)malloc(cap * sizeof *key);
        int32_t *idx = (int32_t *)malloc(cap * sizeof *idx);
        if (!key || !idx) {
            free(key), free(idx);
            return -1;
        }
        memset(key, 0xff, cap * sizeof *key);
        for (size_t q = 0; q < tr->pcap; q++) {
            if (tr->pkey[q] == PAIR_EMPTY) continue;
            i = (size_t)bpe_mix64(tr->pkey[q]) & (cap - 1);
            while (key[i] != PAIR_EMPTY) i = (i + 1) & (cap - 1);
            key[i] = tr->pkey[q];
            idx[i] = tr->pidx[q];
        }
        free(tr->pkey), free(tr->pidx);
        tr->pkey = key, tr->pidx = idx, tr->pcap = cap;
    }
    if (!tr->pcap) return -1;
    for (i = (size_t)bpe_mix64(k) & (tr->pcap - 1); tr->pkey[i] != PAIR_EMPTY;
         i = (i + 1) & (tr->pcap - 1))
        if (tr->pkey[i] == k) return tr->pidx[i];
    if (!create || tr->np >= INT32_MAX) return -1;
    if (tr->np == tr->pecap) {
        size_t c = tr->pecap ? 2 * tr->pecap : 4096, c1 = tr->pecap, c2 = c1, c3 = c1, c4 = c1,
               c5 = c1;
        if (bpe_grow((void **)&tr->pa, &c1, c, sizeof *tr->pa) ||
            bpe_grow((void **)&tr->pb, &c2, c, sizeof *tr->pb) ||
            bpe_grow((void **)&tr->pcnt, &c3, c, sizeof *tr->pcnt) ||
            bpe_grow((void **)&tr->pw, &c4, c, sizeof *tr->pw) ||
            bpe_grow((void **)&tr->pflag, &c5, c, sizeof *tr->pflag))
            return -1;
        tr->pecap = c;
    }
    tr->pkey[i] = k;
    tr->pidx[i] = (int32_t)tr->np;
    tr->pa[tr->np] = a;
    tr->pb[tr->np] = b;
    tr->pcnt[tr->np] = 0;
    memset(&tr->pw[tr->np], 0, sizeof *tr->pw);
    tr->pflag[tr->np] = 0;
    return (long)tr->np++;
}

static int wlist_add(wlist *l, int32_t w) {
    if (l->n && l->w[l->n - 1] == w) return 0;
    if (l->n == l->cap) {
        uint32_t c = l->cap ? 2 * l->cap : 4;
        int32_t *q = (int32_t *)realloc(l->w, (size_t)c * sizeof *q);
        if (!q || c < l->cap) return -1;
        l->w = q;
        l->cap = c;
    }
    l->w[l->n++] = w;
    return 0;
}

/* Max-heap: the larger count first, then the smaller (a, b). */
static int h_before(const hentry *x, const hentry *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

static int h_push(trainer *tr, int64_t count, int32_t a, int32_t b) {
    hentry v = {count, a, b};
    size_t i;
    if (bpe_grow((void **)&tr->heap, &tr->hcap, tr->hn + 1, sizeof *tr->heap)) return -1;
    for (i = tr->hn++; i > 0 && h_before(&v, &tr->heap[(i - 1) / 2]); i = (i - 1) / 2)
        tr->heap[i] = tr->heap[(i - 1) / 2];
    tr->heap[i] = v;
    return 0;
}

static hentry h_pop(trainer *tr) {
    hentry top = tr->heap[0], v = tr->heap[--tr->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= tr->hn) break;
        if (c + 1 < tr->hn && h_before(&tr->heap[c + 1], &tr->heap[c])) c++;
        if (!h_before(&tr->heap[c], &v)) break;
        tr->heap[i] = tr->heap[c];
        i = c;
    }
    if (tr->hn) tr->heap[i] = v;
    return top;
}

/* The words of m as byte symbols, their pairs counted, the heap filled. */
static int trainer_init(trainer *tr, const wordmap *m) {
    size_t total = m->keys.n;
    tr->nw = m->n;
    tr->sym = (int32_t *)malloc((total + 1) * sizeof *tr->sym);
    tr->woff = (size_t *)malloc((m->n + 1) * sizeof *tr->woff);
    tr->wlen = (uint32_t *)malloc((m->n + 1) * sizeof *tr->wlen);
    tr->wcount = (int64_t *)malloc((m->n + 1) * sizeof *tr->wcount);
    if (!tr->sym || !tr->woff || !tr->wlen || !tr->wcount) return -1;
    for (size_t w = 0; w < m->n; w++) {
        const unsigned char *k = (const unsigned char *)m->keys.p + m->off[w];
        if (m->len[w] > UINT32_MAX) return -1;
        tr->woff[w] = m->off[w];
        tr->wlen[w] = (uint32_t)m->len[w];
        tr->wcount[w] = m->count[w];
        for (size_t i = 0; i < m->len[w]; i++) tr->sym[m->off[w] + i] = k[i];
        for (size_t i = 0; i + 1 < m->len[w]; i++) {
            long p = pair_index(tr, k[i], k[i + 1], 1);
            if (p < 0 || wlist_add(&tr->pw[p], (int32_t)w)) return -1;
            tr->pcnt[p] += m->count[w];
        }
    }
    for (size_t p = 0; p < tr->np; p++)
        if (h_push(tr, tr->pcnt[p], tr->pa[p], tr->pb[p])) return -1;
    return 0;
}

/* Merge (a, b) -> x in every word that holds it, keeping the pair counts. */
static int apply_merge(trainer *tr, long p, int32_t a, int32_t b, int32_t x) {
    wlist l = tr->pw[p];
    memset(&tr->pw[p], 0, sizeof tr->pw[p]);
    for (uint32_t q = 0; q < l.n; q++) {
        int32_t w = l.w[q], *s = tr->sym + tr->woff[l.w[q]];
        uint32_t m = tr->wlen[w], k = 0, i;
        int64_t c = tr->wcount[w];
        int has = 0;
        for (i = 0; i + 1 < m && !has; i++) has = s[i] == a && s[i + 1] == b;
        if (!has) continue;
        for (i = 0; i + 1 < m; i++) {
            long r = pair_index(tr, s[i], s[i + 1], 0);
            if (r >= 0) tr->pcnt[r] -= c;
        }
        for (i = 0; i < m;) {
            if (s[i] == a && i + 1 < m && s[i + 1] == b) {
                s[k++] = x;
                i += 2;
            } else {
                s[k++] = s[i++];
            }
        }
        tr->wlen[w] = m = k;
        for (i = 0; i + 1 < m; i++) {
            long r = pair_index(tr, s[i], s[i + 1], 1);
            if (r < 0) goto nomem;
            tr->pcnt[r] += c;
            if (s[i] != x && s[i + 1] != x) continue;
            if (wlist_add(&tr->pw[r], w)) goto nomem;
            if (!(tr->pflag[r] & PF_TOUCHED)) {
                if (bpe_grow((void **)&tr->touched, &tr->tcap, tr->ntouched + 1,
                             sizeof *tr->touched))
                    goto nomem;
                tr->pflag[r] |= PF_TOUCHED;
                tr->touched[tr->ntouched++] = (int32_t)r;
            }
        }
    }
    free(l.w);
    for (size_t k = 0; k < tr->ntouched; k++) {
        int32_t r = tr->touched[k];
        tr->pflag[r] &= (uint8_t)~PF_TOUCHED;
        if (tr->pcnt[r] > 0 && h_push(tr, tr->pcnt[r], tr->pa[r], tr->pb[r])) return -1;
    }
    tr->ntouched = 0;
    return 0;
nomem:
    free(l.w);
    return -1;
}

/* Is the byte-level string s one of the special tokens? */
static int is_special_str(const specials *sp, const char *s, size_t n) {
    for (int k = 0; k < sp->n; k++)
        if (sp->len[k] == n && memcmp(sp->s[k], s, n) == 0) return 1;
    return 0;
}

/* Merge until the vocabulary holds `target` tokens (specials aside). */
static dpo_status train_merges(dpo_bpe *t, trainer *tr, int32_t target, int64_t min_frequency,
                               const specials *sp, dpo_error *e) {
    sbuf cat = {0};
    while (t->n < target && tr->hn) {
        hentry top = h_pop(tr);
        long p = pair_index(tr, top.a, top.b, 0);
        int32_t x;
        if (dpo_interrupted) {
            free(cat.p);
            dpo_fail(e, DPO_ERR_ARG, 0, "interrupted");
            return e->status;
        }
        if (p < 0 || (tr->pflag[p] & PF_FORBIDDEN)) continue;
        if (tr->pcnt[p] != top.count) { /* a stale entry: requeue at its count */
            if (tr->pcnt[p] > 0 && h_push(tr, tr->pcnt[p], top.a, top.b)) goto nomem;
            continue;
        }
        if (top.count < min_frequency) break;
        cat.n = 0;
        if (bpe_sbuf_add(&cat, bpe_tok_str(t, top.a), t->tok[top.a].str_len) ||
            bpe_sbuf_add(&cat, bpe_tok_str(t, top.b), t->tok[top.b].str_len))
            goto nomem;
        if (is_special_str(sp, cat.p, cat.n)) { /* never shadow a special token */
            tr->pflag[p] |= PF_FORBIDDEN;
            continue;
        }
        x = bpe_vmap_find(t, cat.p, cat.n);
        if (x < 0) {
            x = t->n;
            if (bpe_set_token(t, x, cat.p, cat.n, 0, "train", e) != DPO_OK) {
                free(cat.p);
                return e->status;
            }
        }
        if (bpe_add_merge(t, top.a, top.b, "train", 0, e) != DPO_OK) {
            free(cat.p);
            return e->status;
        }
        if (apply_merge(tr, p, top.a, top.b, x)) goto nomem;
    }
    free(cat.p);
    return DPO_OK;
nomem:
    free(cat.p);
    dpo_fail(e, DPO_ERR_MEM, 0, "out of memory training the merges");
    return e->status;
}

/* The options and special tokens, checked; sp filled. */
static dpo_status train_check(const dpo_bpe_train_opts *o, specials *sp, dpo_error *e) {
    memset(sp, 0, sizeof *sp);
    if (o->nspecial < 0 || o->nspecial > 4096) {
        dpo_fail(e, DPO_ERR_ARG, 0, "at most 4096 special tokens (got %d)", o->nspecial);
        return e->status;
    }
    if (o->vocab_size < 256 + o->nspecial || o->vocab_size >= MAX_ID) {
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "vocab_size must be in %d..%d (256 bytes + %d special tokens at least), not %ld",
                 256 + o->nspecial, MAX_ID - 1, o->nspecial, (long)o->vocab_size);
        return e->status;
    }
    sp->s = o->special;
    sp->n = o->nspecial;
    sp->len = (size_t *)calloc((size_t)o->nspecial + 1, sizeof *sp->len);
    if (!sp->len) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        return e->status;
    }
    for (int k = 0; k < o->nspecial; k++) {
        const char *s = o->special[k];
        size_t n = strlen(s), i = 0;
        char b1[SHOWN + 4];
        while (i < n) {
            utf8proc_int32_t c;
            utf8proc_ssize_t l =
                utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
            if (l <= 0) break;
            i += (size_t)l;
        }
        if (n == 0 || i < n) {
            dpo_fail(e, DPO_ERR_ARG, 0, "special token %d is %s", k + 1,
                     n ? "not valid UTF-8" : "empty");
            return e->status;
        }
        if (n <= 2 && bpe_bl_decode(s, n, b1) == 1) {
            dpo_fail(e, DPO_ERR_ARG, 0, "special token '%s' is the name of a byte token", s);
            return e->status;
        }
        for (int q = 0; q < k; q++)
            if (strcmp(o->special[q], s) == 0) {
                dpo_fail(e, DPO_ERR_ARG, 0, "special token '%s' is given twice",
                         bpe_shown(s, n, b1));
                return e->status;
            }
        sp->len[k] = n;
        sp->first[(unsigned char)s[0]] = 1;
        if (memchr(s, '\n', n)) sp->has_nl = 1;
    }
    return DPO_OK;
}

dpo_bpe *dpo_bpe_train(const dpo_bpe_corpus *c, const dpo_bpe_train_opts *o, dpo_error *e) {
    specials sp;
    wordmap wm = {0};
    trainer tr;
    spans v = {0};
    dpo_bpe *t = NULL;
    bpe_tables();
    memset(&tr, 0, sizeof tr);
    if (train_check(o, &sp, e) != DPO_OK) goto fail;
    for (size_t k = 0; k < c->ntexts; k++)
        if (add_spans(&v, (const unsigned char *)c->texts[k], c->lens[k], &sp)) goto nomem;
    if (count_spans(&wm, &v, &sp)) goto nomem;
    for (size_t k = 0; k < c->npaths; k++)
        if (count_file(&wm, c->paths[k], &sp, e) != DPO_OK) goto fail;
    if (!(t = bpe_new(e)) || bpe_add_byte_tokens(t, e) != DPO_OK) goto fail;
    if (trainer_init(&tr, &wm)) goto nomem;
    wm_free(&wm);
    if (train_merges(t, &tr, o->vocab_size - o->nspecial,
                     o->min_frequency > 1 ? o->min_frequency : 1, &sp, e) != DPO_OK)
        goto fail;
    for (int k = 0; k < o->nspecial; k++) {
        int32_t id = t->n;
        if (bpe_set_token(t, id, o->special[k], sp.len[k], 1, "special_tokens", e) != DPO_OK ||
            bpe_add_added(t, id, 1, 0, 0, 0, 0, "special_tokens", e) != DPO_OK)
            goto fail;
    }
    if (bpe_finish(t, "train", e) != DPO_OK) goto fail;
    bpe_default_roles(t, NULL);
    goto done;
nomem:
    dpo_fail(e, DPO_ERR_MEM, 0, "out of memory counting the corpus");
fail:
    dpo_bpe_free(t);
    t = NULL;
done:
    trainer_free(&tr);
    wm_free(&wm);
    free(v.v);
    free(sp.len);
    return t;
}
