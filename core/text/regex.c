/*
** regex.c: the regexes of tokenizer.json files, by PCRE2 (see pipeline.h).
**
** Hugging Face's tokenizers runs its patterns with Oniguruma; PCRE2 with
** PCRE2_UTF | PCRE2_UCP reads the same syntax for what those files use
** (\p{L}, \p{N}, (?i:...), lookahead, counted repeats). Two differences
** are translated: Oniguruma's \s is Unicode's White_Space, PCRE2's is Z*
** plus TAB..CR, so U+0085 (NEL) is added to every \s and \S; Oniguruma's
** \w also holds marks and the joiners and not other numbers (WORD below). Subjects are
** checked for UTF-8 once by the caller (tk_utf8_valid) and matched with
** PCRE2_NO_UTF_CHECK, so a long text is not re-checked at every piece.
** A match after an empty match starts one code point further, as
** Oniguruma's iterator does. Also here: the small helpers the stages share.
*/
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/pipeline.h"

#include <pcre2.h>
#include <utf8proc.h>

#include <stdlib.h>
#include <string.h>

struct tk_regex {
    pcre2_code *code;
};

struct tk_match {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
};

/* Oniguruma's \w: letters, marks, decimal digits, letter numbers,
** connector punctuation and the joiners ZWNJ / ZWJ (PCRE2's is L, N, _). */
#define WORD "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}"

/* Rewrite \s, \S, \w, \W as Oniguruma reads them; NULL when out of memory. */
static char *translate(const char *p, size_t n, size_t *outn) {
    sbuf b = {0};
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        const char *add = NULL;
        size_t skip = 0;
        if (p[i] == '\\' && i + 1 < n) {
            char c = p[i + 1];
            if (c == 's')
                add = in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
            else if (c == 'S' && !in_class)
                add = "[^\\s\\x{85}]";
            else if (c == 'w')
                add = in_class ? WORD : "[" WORD "]";
            else if (c == 'W' && !in_class)
                add = "[^" WORD "]";
            if (add) {
                skip = 2;
            } else if (bpe_sbuf_add(&b, p + i, 2)) {
                goto nomem;
            } else {
                i++;
                continue;
            }
        } else if (p[i] == '[' && !in_class) {
            in_class = 1;
            if (bpe_sbuf_add(&b, p + i, 1)) goto nomem;
            /* a ']' right after '[' or '[^' is a member, not the end */
            if (i + 1 < n && p[i + 1] == '^') {
                if (bpe_sbuf_add(&b, "^", 1)) goto nomem;
                i++;
            }
            if (i + 1 < n && p[i + 1] == ']') {
                if (bpe_sbuf_add(&b, "]", 1)) goto nomem;
                i++;
            }
            continue;
        } else if (p[i] == ']' && in_class) {
            in_class = 0;
        }
        if (add) {
            if (bpe_sbuf_add(&b, add, strlen(add))) goto nomem;
            i += skip - 1;
        } else if (bpe_sbuf_add(&b, p + i, 1)) {
            goto nomem;
        }
    }
    if (bpe_sbuf_add(&b, "", 0)) goto nomem;
    *outn = b.n;
    return b.p;
nomem:
    free(b.p);
    return NULL;
}

tk_regex *tk_regex_new(const char *pat, size_t n, int literal, const char *where, dpo_error *e) {
    tk_regex *r = (tk_regex *)calloc(1, sizeof *r);
    char *src = NULL;
    size_t sn = n;
    int err;
    PCRE2_SIZE off;
    uint32_t opt = PCRE2_UTF | PCRE2_UCP;
    if (!r) return (tk_regex *)dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    if (literal)
        opt = PCRE2_UTF | PCRE2_LITERAL; /* PCRE2 takes no UCP with LITERAL */
    else if (!(src = translate(pat, n, &sn))) {
        free(r);
        return (tk_regex *)dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    }
    r->code = pcre2_compile((PCRE2_SPTR)(src ? src : pat), sn, opt, &err, &off, NULL);
    free(src);
    if (!r->code) {
        PCRE2_UCHAR msg[256];
        char b1[SHOWN + 4];
        pcre2_get_error_message(err, msg, sizeof msg);
        free(r);
        return (tk_regex *)dpo_fail(e, DPO_ERR_ARG, 0,
                                    "%s: the pattern '%s' is not a regex PCRE2 reads: %s (at %zu)",
                                    where, bpe_shown(pat, n, b1), (const char *)msg, (size_t)off);
    }
    pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE); /* without JIT it is slower, not wrong */
    return r;
}

void tk_regex_free(tk_regex *r) {
    if (!r) return;
    pcre2_code_free(r->code);
    free(r);
}

tk_match *tk_match_new(void) {
    tk_match *m = (tk_match *)calloc(1, sizeof *m);
    if (!m) return NULL;
    m->md = pcre2_match_data_create(1, NULL);
    m->mc = pcre2_match_context_create(NULL);
    m->js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (!m->md || !m->mc) {
        tk_match_free(m);
        return NULL;
    }
    if (m->js) pcre2_jit_stack_assign(m->mc, NULL, m->js);
    return m;
}

void tk_match_free(tk_match *m) {
    if (!m) return;
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
    free(m);
}

int tk_regex_next(const tk_regex *r, tk_match *m, const char *s, size_t n, size_t from, size_t *ms,
                  size_t *me) {
    int rc;
    PCRE2_SIZE *ov;
    if (from > n) return 0;
    rc = pcre2_match(r->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, m->md, m->mc);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return -1;
    ov = pcre2_get_ovector_pointer(m->md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

size_t tk_utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t l;
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (l <= 0) return i;
        i += (size_t)l;
    }
    return n;
}

/* ---- shared small parts ------------------------------------------------------------ */

int32_t tk_single_cp(const char *s, size_t n) {
    utf8proc_int32_t c;
    utf8proc_ssize_t l;
    if (n == 0) return -1;
    l = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &c);
    return (l > 0 && (size_t)l == n) ? c : -1;
}

int tk_put_cp(sbuf *b, int32_t c) {
    utf8proc_uint8_t u[4];
    utf8proc_ssize_t l = utf8proc_encode_char(c, u);
    return bpe_sbuf_add(b, u, (size_t)l);
}

tk_regex *tk_pattern(json_t *pat, const char *where, const char *what, dpo_error *e) {
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s))
        return tk_regex_new(json_string_value(s), json_string_length(s), 1, where, e);
    if (json_is_string(r))
        return tk_regex_new(json_string_value(r), json_string_length(r), 0, where, e);
    return (tk_regex *)dpo_fail(
        e, DPO_ERR_ARG, 0, "%s: %s: the pattern is neither {\"String\": ...} nor {\"Regex\": ...}",
        where, what);
}

tk_op *tk_ops_add(tk_ops *o) {
    size_t cap = (size_t)o->cap;
    if (bpe_grow((void **)&o->op, &cap, (size_t)o->n + 1, sizeof *o->op)) return NULL;
    o->cap = (int)cap;
    memset(&o->op[o->n], 0, sizeof *o->op);
    return &o->op[o->n++];
}

void tk_ops_free(tk_ops *o) {
    if (!o) return;
    for (int k = 0; k < o->n; k++) {
        free(o->op[k].s);
        free(o->op[k].c);
        tk_regex_free(o->op[k].re);
    }
    free(o->op);
    free(o);
}

int tk_strdup_field(json_t *o, const char *key, char **out, size_t *n) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return -1;
    *n = json_string_length(v);
    *out = (char *)malloc(*n + 1);
    if (!*out) return -1;
    memcpy(*out, json_string_value(v), *n + 1);
    return 0;
}
