/*
** pretok.c: tokenizer.json's pre-tokenizers (see pipeline.h).
**
** Each step turns a list of pieces into a finer one, as Hugging Face's
** tokenizers does: a piece is cut into matches and the text between them,
** and the split behaviour decides what becomes a piece (Removed drops the
** matches, Isolated keeps each span, MergedWithPrevious / MergedWithNext
** glue a match to its neighbour, Contiguous joins runs of one kind; invert
** swaps matches and the rest). Empty pieces are dropped.
**
**   Split          a regex or string pattern (PCRE2)
**   ByteLevel      add_prefix_space, use_regex (GPT-2's pattern, bpe.c's
**                  scanner); must be the last step: the model then reads the
**                  pieces' bytes through GPT-2's byte alphabet
**   Metaspace      spaces -> the replacement, prepended by the scheme
**                  (always / first / never), split before each replacement
**   Digits, Whitespace, WhitespaceSplit, Punctuation, CharDelimiterSplit,
**   BertPreTokenizer, Sequence
** Predicates cut at every single matching character, as the library's char
** patterns do. Others (UnicodeScripts, ...) are an error naming the type.
*/
#include "text/pipeline.h"

#include <utf8proc.h>

#include <stdlib.h>
#include <string.h>

/* ---- parsing ---------------------------------------------------------------------------- */

static int behavior_of(json_t *j, int def) {
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    json_t *b = json_object_get(j, "behavior");
    if (!json_is_string(b)) return def;
    for (int k = 0; k < 5; k++)
        if (strcmp(json_string_value(b), names[k]) == 0) return k;
    return -1;
}

static int scheme_of(json_t *j) {
    json_t *s = json_object_get(j, "prepend_scheme"), *a;
    if (json_is_string(s)) {
        const char *v = json_string_value(s);
        if (strcmp(v, "always") == 0) return TK_PREPEND_ALWAYS;
        if (strcmp(v, "first") == 0) return TK_PREPEND_FIRST;
        if (strcmp(v, "never") == 0) return TK_PREPEND_NEVER;
        return -1;
    }
    a = json_object_get(j, "add_prefix_space"); /* older files */
    return (a && !json_is_true(a)) ? TK_PREPEND_NEVER : TK_PREPEND_ALWAYS;
}

static dpo_status parse_one(tk_ops *o, json_t *j, int *byte_level, const char *where,
                            dpo_error *e) {
    json_t *ty = json_object_get(j, "type");
    const char *t = json_is_string(ty) ? json_string_value(ty) : "(no type)";
    tk_op *op;
    if (*byte_level) {
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s: pre-tokenizer '%s' after ByteLevel is not supported (ByteLevel must be last)",
                 where, t);
        return e->status;
    }
    if (strcmp(t, "Sequence") == 0) {
        json_t *list = json_object_get(j, "pretokenizers"), *v;
        size_t i;
        if (!json_is_array(list)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: pre_tokenizer Sequence has no \"pretokenizers\" list",
                     where);
            return e->status;
        }
        json_array_foreach(list, i,
                           v) if (parse_one(o, v, byte_level, where, e) != DPO_OK) return e->status;
        return DPO_OK;
    }
    if (!(op = tk_ops_add(o))) goto nomem;
    if (strcmp(t, "Split") == 0) {
        op->kind = TK_SPLIT;
        op->behavior = behavior_of(j, -1);
        op->invert = json_is_true(json_object_get(j, "invert"));
        if (op->behavior < 0) goto bad_behavior;
        if (!(op->re = tk_pattern(json_object_get(j, "pattern"), where, "pre-tokenizer Split", e)))
            return e->status;
    } else if (strcmp(t, "ByteLevel") == 0) {
        json_t *u = json_object_get(j, "use_regex");
        op->kind = TK_BYTELEVEL;
        op->a = json_is_true(json_object_get(j, "add_prefix_space"));
        op->b = u ? json_is_true(u) : 1;
        *byte_level = 1;
    } else if (strcmp(t, "Metaspace") == 0) {
        json_t *sp = json_object_get(j, "split");
        op->kind = TK_METASPACE;
        if (tk_strdup_field(j, "replacement", &op->s, &op->ns) ||
            (op->cp = tk_single_cp(op->s, op->ns)) < 0) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: Metaspace's replacement is not one character", where);
            return e->status;
        }
        if ((op->a = scheme_of(j)) < 0) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: Metaspace's prepend_scheme is not always/first/never",
                     where);
            return e->status;
        }
        op->b = sp ? json_is_true(sp) : 1;
    } else if (strcmp(t, "Digits") == 0) {
        op->kind = TK_DIGITS;
        op->a = json_is_true(json_object_get(j, "individual_digits"));
    } else if (strcmp(t, "Whitespace") == 0) {
        op->kind = TK_WHITESPACE;
        static const char ws[] = "\\w+|[^\\w\\s]+";
        if (!(op->re = tk_regex_new(ws, sizeof ws - 1, 0, where, e))) return e->status;
    } else if (strcmp(t, "WhitespaceSplit") == 0) {
        op->kind = TK_WSSPLIT;
    } else if (strcmp(t, "Punctuation") == 0) {
        op->kind = TK_PUNCT;
        if ((op->behavior = behavior_of(j, TK_ISOLATED)) < 0) goto bad_behavior;
    } else if (strcmp(t, "CharDelimiterSplit") == 0) {
        op->kind = TK_CHARDELIM;
        if (tk_strdup_field(j, "delimiter", &op->s, &op->ns) ||
            (op->cp = tk_single_cp(op->s, op->ns)) < 0) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: CharDelimiterSplit's delimiter is not one character",
                     where);
            return e->status;
        }
    } else if (strcmp(t, "BertPreTokenizer") == 0) {
        op->kind = TK_WSSPLIT;
        if (!(op = tk_ops_add(o))) goto nomem;
        op->kind = TK_PUNCT;
        op->behavior = TK_ISOLATED;
    } else {
        o->n--;
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s: unsupported pre_tokenizer '%s' (supported: Split, ByteLevel, Metaspace, "
                 "Digits, Whitespace, WhitespaceSplit, Punctuation, CharDelimiterSplit, "
                 "BertPreTokenizer, Sequence)",
                 where, t);
        return e->status;
    }
    return DPO_OK;
bad_behavior:
    dpo_fail(e, DPO_ERR_ARG, 0, "%s: pre-tokenizer %s has an unknown behavior", where, t);
    return e->status;
nomem:
    dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    return e->status;
}

tk_ops *tk_pre_parse(json_t *j, int *byte_level, const char *where, dpo_error *e) {
    tk_ops *o = (tk_ops *)calloc(1, sizeof *o);
    *byte_level = 0;
    if (!o) return (tk_ops *)dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    if (parse_one(o, j, byte_level, where, e) != DPO_OK) {
        tk_ops_free(o);
        return NULL;
    }
    return o;
}

/* ---- the workspace ------------------------------------------------------------------------ */

tk_ws *tk_ws_new(void) {
    tk_ws *w = (tk_ws *)calloc(1, sizeof *w);
    if (!w) return NULL;
    if (!(w->m = tk_match_new())) {
        free(w);
        return NULL;
    }
    return w;
}

void tk_ws_free(tk_ws *w) {
    if (!w) return;
    tk_match_free(w->m);
    for (int k = 0; k < 2; k++) {
        free(w->buf[k].p);
        free(w->pcs[k].p);
    }
    free(w->norm.p);
    free(w->norm2.p);
    free(w->sp);
    free(w);
}

static int push_piece(tk_pieces *v, size_t off, size_t len, int first) {
    if (len == 0) return 0;
    if (v->n == v->cap && bpe_grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) return -1;
    v->p[v->n].off = off;
    v->p[v->n].len = len;
    v->p[v->n].first = first;
    v->n++;
    return 0;
}

static int push_span(tk_ws *w, size_t a, size_t b, int match) {
    if (w->nsp == w->capsp && bpe_grow((void **)&w->sp, &w->capsp, w->nsp + 1, sizeof *w->sp))
        return -1;
    w->sp[w->nsp].a = a;
    w->sp[w->nsp].b = b;
    w->sp[w->nsp].match = match;
    w->nsp++;
    return 0;
}

/* ---- finding the matches of one step in one piece ------------------------------------------ */

static int is_punct(int32_t c) {
    if (c < 0x80)
        return c > 0x20 && c < 0x7F &&
               !((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'));
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        return 1;
    default:
        return 0;
    }
}

static int char_matches(const tk_op *op, int32_t c) {
    switch (op->kind) {
    case TK_DIGITS: {
        utf8proc_category_t k = utf8proc_category(c);
        return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
    }
    case TK_WSSPLIT:
        return (c >= 0x09 && c <= 0x0D) || c == 0x85 ||
               (c < 0x10000 && bpe_class_bmp[c] == CL_SPACE);
    case TK_PUNCT:
        return is_punct(c);
    default: /* CharDelimiterSplit, Metaspace's split */
        return c == op->cp;
    }
}

/* The spans of s[a..b): matches and the text between, in order, into w->sp. */
static int find_spans(const tk_op *op, tk_ws *w, const char *s, size_t a, size_t b) {
    size_t last = a;
    w->nsp = 0;
    if (op->re) {
        size_t i = a;
        while (i < b) {
            /* a run of valid UTF-8, then one invalid byte (a piece of its own) */
            size_t v = i + tk_utf8_valid(s + i, b - i), from = i, ms, me;
            int r;
            while ((r = tk_regex_next(op->re, w->m, s, v, from, &ms, &me)) == 1) {
                if (ms > last && push_span(w, last, ms, 0)) return -1;
                if (push_span(w, ms, me, 1)) return -1;
                last = me;
                if (me == ms) {
                    if (me >= v) break;
                    from = me + 1;
                    while (from < v && ((unsigned char)s[from] & 0xC0) == 0x80) from++;
                } else {
                    from = me;
                }
            }
            if (r < 0) return -1;
            if (v < b) {
                if (v > last && push_span(w, last, v, 0)) return -1;
                if (push_span(w, v, v + 1, 0)) return -1;
                last = v + 1;
            }
            i = v + 1;
        }
    } else {
        for (size_t i = a; i < b;) {
            utf8proc_int32_t c;
            utf8proc_ssize_t l =
                utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(b - i), &c);
            if (l <= 0) {
                i++;
                continue;
            }
            if (char_matches(op, c)) {
                if (i > last && push_span(w, last, i, 0)) return -1;
                if (push_span(w, i, i + (size_t)l, 1)) return -1;
                last = i + (size_t)l;
            }
            i += (size_t)l;
        }
    }
    if (b > last && push_span(w, last, b, 0)) return -1;
    return 0;
}

/* Cut piece p (over s) by the spans in w->sp and behaviour, into out. */
static int cut(tk_ws *w, int behavior, int invert, const tk_piece *p, tk_pieces *out) {
    size_t n = w->nsp;
    tk_span *sp = w->sp;
    if (invert)
        for (size_t k = 0; k < n; k++) sp[k].match = !sp[k].match;
    switch (behavior) {
    case TK_REMOVED:
        for (size_t k = 0; k < n; k++)
            if (!sp[k].match &&
                push_piece(out, sp[k].a, sp[k].b - sp[k].a, p->first && sp[k].a == p->off))
                return -1;
        return 0;
    case TK_ISOLATED:
        for (size_t k = 0; k < n; k++)
            if (push_piece(out, sp[k].a, sp[k].b - sp[k].a, p->first && sp[k].a == p->off))
                return -1;
        return 0;
    case TK_CONTIGUOUS:
    case TK_MERGED_PREV: {
        /* glue a span to the one before: Contiguous when both are of one kind,
           MergedWithPrevious when it is a match after a non-match */
        int prev = 0;
        size_t m = 0; /* spans kept, rewritten in place */
        for (size_t k = 0; k < n; k++) {
            int glue = behavior == TK_CONTIGUOUS ? sp[k].match == prev : (sp[k].match && !prev);
            if (glue && m > 0)
                sp[m - 1].b = sp[k].b;
            else
                sp[m++] = sp[k];
            prev = sp[k].match;
        }
        for (size_t k = 0; k < m; k++)
            if (push_piece(out, sp[k].a, sp[k].b - sp[k].a, p->first && sp[k].a == p->off))
                return -1;
        return 0;
    }
    case TK_MERGED_NEXT: {
        int prev = 0;
        size_t m = n; /* from the end: spans kept are sp[m..n) */
        for (size_t k = n; k-- > 0;) {
            int glue = sp[k].match && !prev;
            if (glue && m < n)
                sp[m].a = sp[k].a;
            else
                sp[--m] = sp[k];
            prev = sp[k].match;
        }
        for (size_t k = m; k < n; k++)
            if (push_piece(out, sp[k].a, sp[k].b - sp[k].a, p->first && sp[k].a == p->off))
                return -1;
        return 0;
    }
    default:
        return -1;
    }
}

/* ---- the steps ------------------------------------------------------------------------------ */

/* A step that cuts pieces without changing the text. */
static int split_step(const tk_op *op, tk_ws *w, int behavior) {
    const char *s = w->buf[w->cb].p;
    tk_pieces *in = &w->pcs[w->cp], *out = &w->pcs[1 - w->cp];
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        tk_piece p = in->p[k];
        if (find_spans(op, w, s, p.off, p.off + p.len) || cut(w, behavior, op->invert, &p, out))
            return -1;
    }
    w->cp = 1 - w->cp;
    return 0;
}

/* ByteLevel: the prefix space, then GPT-2's pattern. */
static int bytelevel_step(const tk_op *op, tk_ws *w) {
    if (op->a) { /* rewrite the text: " " before each piece that lacks it */
        sbuf *src = &w->buf[w->cb], *dst = &w->buf[1 - w->cb];
        tk_pieces *in = &w->pcs[w->cp], *out = &w->pcs[1 - w->cp];
        dst->n = 0;
        out->n = 0;
        for (size_t k = 0; k < in->n; k++) {
            tk_piece p = in->p[k];
            size_t at = dst->n;
            int pre = src->p[p.off] != ' ';
            if ((pre && bpe_sbuf_add(dst, " ", 1)) || bpe_sbuf_add(dst, src->p + p.off, p.len) ||
                push_piece(out, at, p.len + (size_t)pre, p.first))
                return -1;
        }
        w->cb = 1 - w->cb;
        w->cp = 1 - w->cp;
    }
    if (op->b) {
        const unsigned char *s = (const unsigned char *)w->buf[w->cb].p;
        tk_pieces *in = &w->pcs[w->cp], *out = &w->pcs[1 - w->cp];
        out->n = 0;
        for (size_t k = 0; k < in->n; k++) {
            tk_piece p = in->p[k];
            for (size_t i = p.off, end = p.off + p.len; i < end;) {
                size_t j = p.off + bpe_next_piece(s + p.off, p.len, i - p.off);
                if (push_piece(out, i, j - i, p.first && i == p.off)) return -1;
                i = j;
            }
        }
        w->cp = 1 - w->cp;
    }
    return 0;
}

/* Metaspace: spaces become the replacement, the prefix by the scheme, then the split. */
static int metaspace_step(const tk_op *op, tk_ws *w) {
    sbuf *src = &w->buf[w->cb], *dst = &w->buf[1 - w->cb];
    tk_pieces *in = &w->pcs[w->cp], *out = &w->pcs[1 - w->cp];
    dst->n = 0;
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        tk_piece p = in->p[k];
        const char *s = src->p + p.off;
        size_t at = dst->n;
        int starts = 0;
        /* does it start with the replacement, once spaces are replaced? */
        starts = (s[0] == ' ') || (p.len >= op->ns && memcmp(s, op->s, op->ns) == 0);
        if (!starts && (op->a == TK_PREPEND_ALWAYS || (op->a == TK_PREPEND_FIRST && p.first)) &&
            bpe_sbuf_add(dst, op->s, op->ns))
            return -1;
        for (size_t i = 0; i < p.len; i++)
            if (s[i] == ' ' ? bpe_sbuf_add(dst, op->s, op->ns) : bpe_sbuf_add(dst, s + i, 1))
                return -1;
        if (push_piece(out, at, dst->n - at, p.first)) return -1;
    }
    w->cb = 1 - w->cb;
    w->cp = 1 - w->cp;
    return op->b ? split_step(op, w, TK_MERGED_NEXT) : 0;
}

int tk_pre_apply(const tk_ops *o, tk_ws *w, const char *s, size_t n, int first) {
    w->cb = w->cp = 0;
    w->buf[0].n = 0;
    w->pcs[0].n = 0;
    if (bpe_sbuf_add(&w->buf[0], s, n) || push_piece(&w->pcs[0], 0, n, first)) return -1;
    for (int k = 0; o && k < o->n; k++) {
        const tk_op *op = &o->op[k];
        int r;
        switch (op->kind) {
        case TK_SPLIT:
        case TK_PUNCT:
            r = split_step(op, w, op->behavior);
            break;
        case TK_DIGITS:
            r = split_step(op, w, op->a ? TK_ISOLATED : TK_CONTIGUOUS);
            break;
        case TK_WHITESPACE: { /* keep the matches: Removed, inverted */
            tk_op inv = *op;
            inv.invert = 1;
            r = split_step(&inv, w, TK_REMOVED);
            break;
        }
        case TK_WSSPLIT:
        case TK_CHARDELIM:
            r = split_step(op, w, TK_REMOVED);
            break;
        case TK_BYTELEVEL:
            r = bytelevel_step(op, w);
            break;
        case TK_METASPACE:
            r = metaspace_step(op, w);
            break;
        default:
            r = 0;
        }
        if (r) return -1;
    }
    return 0;
}
