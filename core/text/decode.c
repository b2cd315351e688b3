/*
** decode.c: tokenizer.json's decoders (see pipeline.h): a list of token
** strings in, text out, each decoder turning the list into a new list as
** Hugging Face's decode_chain does, the last list joined.
**
**   ByteLevel     each token's characters back to GPT-2's bytes (a token
**                 with a character outside the alphabet stays as it is);
**                 the bytes are kept as they are where Hugging Face would
**                 write U+FFFD for a sequence that is not UTF-8, so
**                 decode(encode(s)) == s for any bytes
**   Metaspace     the replacement -> ' ', dropped in the first token unless
**                 the prepend scheme is "never"
**   Replace       every match of a string or regex in each token
**   ByteFallback  runs of <0xNN> tokens -> their bytes when those are UTF-8,
**                 else one U+FFFD per byte
**   Fuse          all tokens -> one
**   Strip         up to `start` / `stop` copies of a character at either end
**   Sequence      each in order
** Others (WordPiece, BPEDecoder, CTC) are an error naming the type.
*/
#include "text/pipeline.h"

#include <utf8proc.h>

#include <stdlib.h>
#include <string.h>

static dpo_status parse_one(tk_ops *o, json_t *j, const char *where, dpo_error *e) {
    json_t *ty = json_object_get(j, "type");
    const char *t = json_is_string(ty) ? json_string_value(ty) : "(no type)";
    tk_op *op;
    if (strcmp(t, "Sequence") == 0) {
        json_t *list = json_object_get(j, "decoders"), *v;
        size_t i;
        if (!json_is_array(list)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: decoder Sequence has no \"decoders\" list", where);
            return e->status;
        }
        json_array_foreach(list, i, v) if (parse_one(o, v, where, e) != DPO_OK) return e->status;
        return DPO_OK;
    }
    if (!(op = tk_ops_add(o))) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
        return e->status;
    }
    if (strcmp(t, "ByteLevel") == 0) {
        op->kind = TK_DEC_BYTELEVEL;
    } else if (strcmp(t, "ByteFallback") == 0) {
        op->kind = TK_DEC_BYTEFALLBACK;
    } else if (strcmp(t, "Fuse") == 0) {
        op->kind = TK_DEC_FUSE;
    } else if (strcmp(t, "Replace") == 0) {
        op->kind = TK_DEC_REPLACE;
        if (tk_strdup_field(j, "content", &op->c, &op->nc)) goto bad;
        if (!(op->re = tk_pattern(json_object_get(j, "pattern"), where, "decoder Replace", e)))
            return e->status;
    } else if (strcmp(t, "Metaspace") == 0) {
        json_t *s = json_object_get(j, "prepend_scheme"),
               *a = json_object_get(j, "add_prefix_space");
        op->kind = TK_DEC_METASPACE;
        if (tk_strdup_field(j, "replacement", &op->s, &op->ns) ||
            (op->cp = tk_single_cp(op->s, op->ns)) < 0)
            goto bad;
        if (json_is_string(s))
            op->a =
                strcmp(json_string_value(s), "never") == 0 ? TK_PREPEND_NEVER : TK_PREPEND_ALWAYS;
        else
            op->a = (a && !json_is_true(a)) ? TK_PREPEND_NEVER : TK_PREPEND_ALWAYS;
    } else if (strcmp(t, "Strip") == 0) {
        json_t *st = json_object_get(j, "start"), *sp = json_object_get(j, "stop");
        op->kind = TK_DEC_STRIP;
        if (tk_strdup_field(j, "content", &op->s, &op->ns) ||
            (op->cp = tk_single_cp(op->s, op->ns)) < 0 || !json_is_integer(st) ||
            !json_is_integer(sp) || json_integer_value(st) < 0 || json_integer_value(sp) < 0)
            goto bad;
        op->a = json_integer_value(st) > 1 << 20 ? 1 << 20 : (int)json_integer_value(st);
        op->b = json_integer_value(sp) > 1 << 20 ? 1 << 20 : (int)json_integer_value(sp);
    } else {
        o->n--;
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s: unsupported decoder '%s' (supported: ByteLevel, Metaspace, Replace, "
                 "ByteFallback, Fuse, Strip, Sequence)",
                 where, t);
        return e->status;
    }
    return DPO_OK;
bad:
    dpo_fail(e, DPO_ERR_ARG, 0, "%s: decoder %s has a missing or bad field", where, t);
    return e->status;
}

tk_ops *tk_dec_parse(json_t *j, const char *where, dpo_error *e) {
    tk_ops *o = (tk_ops *)calloc(1, sizeof *o);
    if (!o) return (tk_ops *)dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    if (parse_one(o, j, where, e) != DPO_OK) {
        tk_ops_free(o);
        return NULL;
    }
    return o;
}

/* ---- a list of tokens ------------------------------------------------------------------ */

typedef struct {
    sbuf text;
    size_t *off, *len;
    size_t n, cap;
} toklist;

static void list_free(toklist *l) {
    free(l->text.p);
    free(l->off);
    free(l->len);
    memset(l, 0, sizeof *l);
}

/* Start a new token in l (its bytes come with add()). */
static int open_tok(toklist *l) {
    if (l->n == l->cap) {
        size_t c = l->cap, c2 = l->cap;
        if (bpe_grow((void **)&l->off, &c, l->n + 1, sizeof *l->off) ||
            bpe_grow((void **)&l->len, &c2, l->n + 1, sizeof *l->len))
            return -1;
        l->cap = c < c2 ? c : c2;
    }
    l->off[l->n] = l->text.n;
    l->len[l->n] = 0;
    l->n++;
    return 0;
}

static int add(toklist *l, const void *s, size_t n) {
    if (bpe_sbuf_add(&l->text, s, n)) return -1;
    l->len[l->n - 1] += n;
    return 0;
}

static int add_tok(toklist *l, const void *s, size_t n) {
    return open_tok(l) || add(l, s, n) ? -1 : 0;
}

/* ---- the decoders ---------------------------------------------------------------------- */

static const char *tok_p(const toklist *l, size_t k) {
    return l->text.p + l->off[k];
}

static int bytelevel(const toklist *in, toklist *out) {
    if (open_tok(out)) return -1;
    for (size_t k = 0; k < in->n; k++) {
        long r;
        if (bpe_sbuf_reserve(&out->text, in->len[k])) return -1;
        r = bpe_bl_decode(tok_p(in, k), in->len[k], out->text.p + out->text.n);
        if (r < 0) {
            if (add(out, tok_p(in, k), in->len[k])) return -1;
        } else {
            out->text.n += (size_t)r;
            out->len[out->n - 1] += (size_t)r;
        }
    }
    return bpe_sbuf_add(&out->text, "", 0);
}

static int metaspace(const tk_op *op, const toklist *in, toklist *out) {
    for (size_t k = 0; k < in->n; k++) {
        const char *s = tok_p(in, k);
        size_t n = in->len[k];
        if (open_tok(out)) return -1;
        for (size_t i = 0; i < n;) {
            if (n - i >= op->ns && memcmp(s + i, op->s, op->ns) == 0) {
                if ((k > 0 || op->a == TK_PREPEND_NEVER) && add(out, " ", 1)) return -1;
                i += op->ns;
            } else {
                if (add(out, s + i, 1)) return -1;
                i++;
            }
        }
    }
    return 0;
}

static int replace(const tk_op *op, tk_match *m, const toklist *in, toklist *out) {
    for (size_t k = 0; k < in->n; k++) {
        const char *s = tok_p(in, k);
        size_t n = in->len[k], from = 0, done = 0, ms, me;
        int r = 0;
        if (open_tok(out)) return -1;
        if (tk_utf8_valid(s, n) == n)
            while ((r = tk_regex_next(op->re, m, s, n, from, &ms, &me)) == 1) {
                if (add(out, s + done, ms - done) || add(out, op->c, op->nc)) return -1;
                done = me;
                if (me == ms) {
                    if (me >= n) break;
                    from = me + 1;
                    while (from < n && ((unsigned char)s[from] & 0xC0) == 0x80) from++;
                    if (add(out, s + me, from - me)) return -1;
                    done = from;
                } else {
                    from = me;
                }
            }
        if (r < 0 || add(out, s + done, n - done)) return -1;
    }
    return 0;
}

/* <0xNN>: 0..255, else -1 */
static int byte_token(const char *s, size_t n) {
    int v = 0;
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                         : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int flush_bytes(toklist *out, sbuf *bytes) {
    int r = 0;
    if (bytes->n == 0) return 0;
    if (tk_utf8_valid(bytes->p, bytes->n) == bytes->n)
        r = add_tok(out, bytes->p, bytes->n);
    else
        for (size_t i = 0; i < bytes->n && r == 0; i++) r = add_tok(out, "\xEF\xBF\xBD", 3);
    bytes->n = 0;
    return r;
}

static int bytefallback(const toklist *in, toklist *out) {
    sbuf bytes = {0};
    int r = 0;
    for (size_t k = 0; k < in->n && r == 0; k++) {
        int b = byte_token(tok_p(in, k), in->len[k]);
        if (b >= 0) {
            unsigned char c = (unsigned char)b;
            r = bpe_sbuf_add(&bytes, &c, 1);
        } else {
            r = flush_bytes(out, &bytes) || add_tok(out, tok_p(in, k), in->len[k]) ? -1 : 0;
        }
    }
    if (r == 0) r = flush_bytes(out, &bytes);
    free(bytes.p);
    return r;
}

static int strip(const tk_op *op, const toklist *in, toklist *out) {
    for (size_t k = 0; k < in->n; k++) {
        const char *s = tok_p(in, k);
        size_t a = 0, b = in->len[k];
        for (int i = 0; i < op->a && b - a >= op->ns && memcmp(s + a, op->s, op->ns) == 0; i++)
            a += op->ns;
        for (int i = 0; i < op->b && b - a >= op->ns && memcmp(s + b - op->ns, op->s, op->ns) == 0;
             i++)
            b -= op->ns;
        if (add_tok(out, s + a, b - a)) return -1;
    }
    return 0;
}

char *tk_dec_apply(const tk_ops *o, tk_match *m, const char *const *strs, const size_t *lens,
                   size_t n, size_t *len) {
    toklist cur = {0}, nxt = {0};
    char *res;
    for (size_t k = 0; k < n; k++)
        if (add_tok(&cur, strs[k], lens[k])) goto nomem;
    for (int q = 0; o && q < o->n; q++) {
        const tk_op *op = &o->op[q];
        int r;
        memset(&nxt, 0, sizeof nxt);
        switch (op->kind) {
        case TK_DEC_BYTELEVEL:
            r = bytelevel(&cur, &nxt);
            break;
        case TK_DEC_METASPACE:
            r = metaspace(op, &cur, &nxt);
            break;
        case TK_DEC_REPLACE:
            r = replace(op, m, &cur, &nxt);
            break;
        case TK_DEC_BYTEFALLBACK:
            r = bytefallback(&cur, &nxt);
            break;
        case TK_DEC_FUSE:
            r = open_tok(&nxt) || add(&nxt, cur.text.p ? cur.text.p : "", cur.text.n) ? -1 : 0;
            break;
        case TK_DEC_STRIP:
            r = strip(op, &cur, &nxt);
            break;
        default:
            r = 0;
        }
        list_free(&cur);
        cur = nxt;
        if (r) goto nomem;
    }
    /* the tokens' texts are stored one after another: the join is the buffer,
       except after a decoder that skipped bytes (Strip): join explicitly */
    res = (char *)malloc(cur.text.n + 1);
    if (!res) goto nomem;
    *len = 0;
    for (size_t k = 0; k < cur.n; k++) {
        memcpy(res + *len, tok_p(&cur, k), cur.len[k]);
        *len += cur.len[k];
    }
    res[*len] = '\0';
    list_free(&cur);
    return res;
nomem:
    list_free(&cur);
    return NULL;
}
