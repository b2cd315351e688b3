/*
** normalize.c: tokenizer.json's normalizers (see pipeline.h).
**
** NFC, NFD, NFKC, NFKD (utf8proc_map), Lowercase (utf8proc_tolower, code
** point by code point, as Rust's char::to_lowercase: U+0130 -> i + U+0307), StripAccents (drops the
*combining marks M*), Prepend
** (before a non-empty text), Replace (every match of a string or a regex),
** Strip (Unicode White_Space at either end) and Sequence. A text that is not
** valid UTF-8 goes through the Unicode forms and Lowercase unchanged.
** Other normalizers (BertNormalizer, Precompiled, ...) are an error naming
** the type.
*/
#include "text/pipeline.h"

#include <utf8proc.h>

#include <stdlib.h>
#include <string.h>

static dpo_status parse_one(tk_ops *o, json_t *j, const char *where, dpo_error *e) {
    json_t *ty = json_object_get(j, "type");
    const char *t = json_is_string(ty) ? json_string_value(ty) : "(no type)";
    static const char *const uni[] = {"NFC", "NFD", "NFKC", "NFKD"};
    tk_op *op;
    if (strcmp(t, "Sequence") == 0) {
        json_t *list = json_object_get(j, "normalizers"), *v;
        size_t i;
        if (!json_is_array(list)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: normalizer Sequence has no \"normalizers\" list",
                     where);
            return e->status;
        }
        json_array_foreach(list, i, v) if (parse_one(o, v, where, e) != DPO_OK) return e->status;
        return DPO_OK;
    }
    if (!(op = tk_ops_add(o))) goto nomem;
    for (int k = 0; k < 4; k++)
        if (strcmp(t, uni[k]) == 0) {
            op->kind = (tk_kind)(TK_NFC + k);
            return DPO_OK;
        }
    if (strcmp(t, "Lowercase") == 0) {
        op->kind = TK_LOWERCASE;
    } else if (strcmp(t, "StripAccents") == 0) {
        op->kind = TK_STRIP_ACCENTS;
    } else if (strcmp(t, "Prepend") == 0) {
        op->kind = TK_PREPEND;
        if (tk_strdup_field(j, "prepend", &op->s, &op->ns)) goto bad;
    } else if (strcmp(t, "Replace") == 0) {
        op->kind = TK_REPLACE;
        if (tk_strdup_field(j, "content", &op->c, &op->nc)) goto bad;
        if (!(op->re = tk_pattern(json_object_get(j, "pattern"), where, "normalizer Replace", e)))
            return e->status;
    } else if (strcmp(t, "Strip") == 0) {
        op->kind = TK_STRIP;
        op->a = json_is_true(json_object_get(j, "strip_left"));
        op->b = json_is_true(json_object_get(j, "strip_right"));
    } else {
        o->n--;
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s: unsupported normalizer '%s' (supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                 "StripAccents, Prepend, Replace, Strip, Sequence)",
                 where, t);
        return e->status;
    }
    return DPO_OK;
bad:
    dpo_fail(e, DPO_ERR_ARG, 0, "%s: normalizer %s lacks a string field", where, t);
    return e->status;
nomem:
    dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    return e->status;
}

tk_ops *tk_norm_parse(json_t *j, const char *where, dpo_error *e) {
    tk_ops *o = (tk_ops *)calloc(1, sizeof *o);
    if (!o) return (tk_ops *)dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    if (parse_one(o, j, where, e) != DPO_OK) {
        tk_ops_free(o);
        return NULL;
    }
    return o;
}

static int is_ws(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x85 || bpe_class_bmp[c < 0x10000 ? c : 0] == CL_SPACE;
}

/* Replace every match of re in s by c, into out. */
static int replace_all(const tk_regex *re, tk_match *m, const char *s, size_t n, const char *c,
                       size_t nc, sbuf *out) {
    size_t from = 0, done = 0, ms, me;
    int r;
    while ((r = tk_regex_next(re, m, s, n, from, &ms, &me)) == 1) {
        if (bpe_sbuf_add(out, s + done, ms - done) || bpe_sbuf_add(out, c, nc)) return -1;
        done = me;
        if (me == ms) { /* an empty match: go on one code point later */
            if (me >= n) break;
            size_t l = 1;
            while (me + l < n && ((unsigned char)s[me + l] & 0xC0) == 0x80) l++;
            if (bpe_sbuf_add(out, s + me, l)) return -1;
            done = from = me + l;
        } else {
            from = me;
        }
    }
    if (r < 0) return -1;
    return done < n ? bpe_sbuf_add(out, s + done, n - done) : bpe_sbuf_add(out, "", 0);
}

/* One operation: s[0..n) -> out (cleared). */
static int apply_one(const tk_op *op, tk_match *m, const char *s, size_t n, sbuf *out) {
    out->n = 0;
    switch (op->kind) {
    case TK_NFC:
    case TK_NFD:
    case TK_NFKC:
    case TK_NFKD: {
        static const int flags[4] = {UTF8PROC_COMPOSE, UTF8PROC_DECOMPOSE,
                                     UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
                                     UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT};
        utf8proc_uint8_t *r = NULL;
        utf8proc_ssize_t k;
        if (n == 0) return bpe_sbuf_add(out, "", 0);
        k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &r,
                         (utf8proc_option_t)(UTF8PROC_STABLE | flags[op->kind - TK_NFC]));
        if (k == UTF8PROC_ERROR_NOMEM) return -1;
        if (k < 0) return bpe_sbuf_add(out, s, n); /* not UTF-8: unchanged */
        k = bpe_sbuf_add(out, r, (size_t)k);
        free(r);
        return (int)k;
    }
    case TK_LOWERCASE:
    case TK_STRIP_ACCENTS:
        if (tk_utf8_valid(s, n) != n) return bpe_sbuf_add(out, s, n);
        for (size_t i = 0; i < n;) {
            utf8proc_int32_t c;
            utf8proc_ssize_t l =
                utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
            i += (size_t)l;
            if (op->kind == TK_STRIP_ACCENTS) {
                utf8proc_category_t k = utf8proc_category(c);
                if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_MC ||
                    k == UTF8PROC_CATEGORY_ME)
                    continue;
            } else if (c == 0x130) { /* the one full lowercase mapping of more than one
                                        code point: I with dot above -> i + U+0307 */
                if (tk_put_cp(out, 'i')) return -1;
                c = 0x307;
            } else {
                c = utf8proc_tolower(c);
            }
            if (tk_put_cp(out, c)) return -1;
        }
        return bpe_sbuf_add(out, "", 0);
    case TK_PREPEND:
        if (n == 0) return bpe_sbuf_add(out, "", 0);
        return bpe_sbuf_add(out, op->s, op->ns) || bpe_sbuf_add(out, s, n) ? -1 : 0;
    case TK_REPLACE: {
        size_t v = tk_utf8_valid(s, n);
        if (v != n) return bpe_sbuf_add(out, s, n);
        return replace_all(op->re, m, s, n, op->c, op->nc, out);
    }
    case TK_STRIP: {
        size_t a = 0, b = n;
        while (op->a && a < b) {
            utf8proc_int32_t c;
            utf8proc_ssize_t l =
                utf8proc_iterate((const utf8proc_uint8_t *)s + a, (utf8proc_ssize_t)(b - a), &c);
            if (l <= 0 || !is_ws(c)) break;
            a += (size_t)l;
        }
        while (op->b && b > a) {
            size_t j = b - 1;
            utf8proc_int32_t c;
            utf8proc_ssize_t l;
            while (j > a && ((unsigned char)s[j] & 0xC0) == 0x80 && b - j < 4) j--;
            l = utf8proc_iterate((const utf8proc_uint8_t *)s + j, (utf8proc_ssize_t)(b - j), &c);
            if (l <= 0 || (size_t)l != b - j || !is_ws(c)) break;
            b = j;
        }
        return bpe_sbuf_add(out, s + a, b - a);
    }
    default:
        return bpe_sbuf_add(out, s, n);
    }
}

int tk_norm_apply(const tk_ops *o, tk_match *m, const char *s, size_t n, sbuf *out) {
    sbuf tmp = {0};
    int r = 0;
    out->n = 0;
    if (o->n == 0) return bpe_sbuf_add(out, s, n);
    for (int k = 0; k < o->n && r == 0; k++) {
        if (k == 0) {
            r = apply_one(&o->op[k], m, s, n, out);
        } else {
            sbuf t = tmp;
            tmp = *out;
            *out = t; /* the last result is in tmp now */
            r = apply_one(&o->op[k], m, tmp.p, tmp.n, out);
        }
    }
    free(tmp.p);
    return r;
}
