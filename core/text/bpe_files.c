/*
** bpe_files.c: a tokenizer's files (see bpe.h for the contract).
**
** Reading: a Hugging Face tokenizer.json (model BPE with the ByteLevel
** pre-tokenizer and decoder), GPT-2's vocab.json + merges.txt (or
** encoder.json + vocab.bpe), and a directory holding either, whose
** tokenizer_config.json / special_tokens_map.json name the special roles.
** Every bad entry is an error naming the file (and the line of a merges
** file). Writing: tokenizer.json and tokenizer_config.json, each written
** atomically (base/io), that load back to the same ids and that Hugging
** Face reads. The tokenizer itself (vocabulary, merges, encoding) is
** bpe.c's; this file fills it through bpe_impl.h.
*/
#include "text/bpe_impl.h"
#include "text/pipeline.h"
#include "base/io.h"

#include <jansson.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- loading ------------------------------------------------------------------------- */

static const char *const role_key[DPO_BPE_NROLES] = {"eos_token", "bos_token", "pad_token",
                                                     "unk_token"};

/* A merge's token that the vocabulary lacks. */
static dpo_status merge_token_missing(const char *s, size_t n, const char *path, long line,
                                      dpo_error *e) {
    char b1[SHOWN + 4], wb[4200];
    dpo_fail(e, DPO_ERR_ARG, 0, "%s: the merge's token '%s' is not in the vocabulary",
             bpe_merge_where(path, line, wb, sizeof wb), bpe_shown(s, n, b1));
    return e->status;
}

/* Parse the merge "first second" (one space). */
static dpo_status add_merge_str(dpo_bpe *t, const char *s, size_t n, const char *path, long line,
                                dpo_error *e) {
    char b1[SHOWN + 4], wb[4200];
    const char *sp = (const char *)memchr(s, ' ', n);
    size_t na, nb;
    int32_t a, b;
    if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1))) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: a merge is two tokens separated by one space, not '%s'",
                 bpe_merge_where(path, line, wb, sizeof wb), bpe_shown(s, n, b1));
        return e->status;
    }
    na = (size_t)(sp - s);
    nb = n - na - 1;
    if ((a = bpe_vmap_find(t, s, na)) < 0) return merge_token_missing(s, na, path, line, e);
    if ((b = bpe_vmap_find(t, sp + 1, nb)) < 0)
        return merge_token_missing(sp + 1, nb, path, line, e);
    return bpe_add_merge(t, a, b, path, line, e);
}

static char *read_file(const char *path, size_t *len, dpo_error *e) {
    FILE *f = fopen(path, "rb");
    sbuf b = {0};
    if (!f) return (char *)dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(errno));
    for (;;) {
        size_t got;
        if (bpe_sbuf_reserve(&b, (size_t)1 << 16)) {
            fclose(f);
            free(b.p);
            return (char *)dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory reading it", path);
        }
        got = fread(b.p + b.n, 1, b.cap - b.n - 1, f);
        b.n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        int err = errno;
        fclose(f);
        free(b.p);
        return (char *)dpo_fail(e, DPO_ERR_IO, 0, "%s: read error: %s", path, strerror(err));
    }
    fclose(f);
    b.p[b.n] = '\0';
    *len = b.n;
    return b.p;
}

/* flags: 0, or JSON_DECODE_INT_AS_REAL for files with huge integers
** (tokenizer_config.json's model_max_length of 1e30). */
static json_t *parse_json_flags(const char *path, size_t flags, dpo_error *e) {
    size_t n;
    json_error_t je;
    json_t *j;
    char *s = read_file(path, &n, e);
    if (!s) return NULL;
    j = json_loadb(s, n, JSON_REJECT_DUPLICATES | flags, &je);
    free(s);
    if (!j)
        return (json_t *)dpo_fail(e, DPO_ERR_ARG, 0, "%s:%d:%d: %s", path, je.line, je.column,
                                  je.text);
    return j;
}

static json_t *parse_json(const char *path, dpo_error *e) {
    return parse_json_flags(path, 0, e);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* dir/name, malloc'd (NULL when out of memory). */
static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = (char *)malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* An id from JSON: an integer in 0..MAX_ID-1, else a message and -1. */
static int32_t json_id(json_t *v, const char *where, const char *what, const char *s, size_t n,
                       dpo_error *e) {
    char b1[SHOWN + 4];
    if (!json_is_integer(v)) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: the id of %s '%s' is not an integer", where, what,
                 bpe_shown(s, n, b1));
        return -1;
    }
    if (json_integer_value(v) < 0 || json_integer_value(v) >= MAX_ID) {
        dpo_fail(e, DPO_ERR_RANGE, 0, "%s: the id %lld of %s '%s' is out of range 0..%d", where,
                 (long long)json_integer_value(v), what, bpe_shown(s, n, b1), MAX_ID - 1);
        return -1;
    }
    return (int32_t)json_integer_value(v);
}

/* Every entry of a JSON object token -> id. */
static dpo_status add_vocab(dpo_bpe *t, json_t *vocab, int added, const char *where, dpo_error *e) {
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(vocab, key, klen, v) {
        int32_t id = json_id(v, where, "token", key, klen, e);
        if (id < 0 || bpe_set_token(t, id, key, klen, added, where, e) != DPO_OK) return e->status;
        if (added && bpe_add_added(t, id, 1, 0, 0, 0, 0, where, e) != DPO_OK) return e->status;
    }
    return DPO_OK;
}

static int flag(json_t *o, const char *key) {
    return json_is_true(json_object_get(o, key));
}

static const char *const stage_key[4] = {"normalizer", "pre_tokenizer", "post_processor",
                                         "decoder"};

/* A component that is exactly {"type": "ByteLevel", ...}. */
static int is_bytelevel(json_t *c) {
    json_t *ty = json_object_get(c, "type");
    return json_is_string(ty) && strcmp(json_string_value(ty), "ByteLevel") == 0;
}

/*
** The normalizer, pre-tokenizer and decoder (the post-processor comes once
** the vocabulary is in), and each component's JSON kept for saving. GPT-2's
** own layout (no normalizer, one ByteLevel pre-tokenizer) keeps GPT-2's fast
** path; anything else goes through the pipeline. A ByteLevel decoder alone
** is GPT-2's byte decoding.
*/
static dpo_status read_stages(dpo_bpe *t, const char *path, json_t *root, dpo_error *e) {
    json_t *norm = json_object_get(root, "normalizer"),
           *pre = json_object_get(root, "pre_tokenizer");
    json_t *dec = json_object_get(root, "decoder"), *j;
    for (int k = 0; k < 4; k++) {
        json_t *c = json_object_get(root, stage_key[k]);
        if (!c || json_is_null(c)) continue;
        if (!(t->src[k] = json_dumps(c, JSON_COMPACT))) {
            dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
            return e->status;
        }
    }
    if (norm && !json_is_null(norm) && !(t->norm = tk_norm_parse(norm, path, e))) return e->status;
    if (pre && !json_is_null(pre) && is_bytelevel(pre) && !t->norm) {
        t->add_prefix_space = flag(pre, "add_prefix_space");
        j = json_object_get(pre, "use_regex");
        t->use_regex = j ? json_is_true(j) : 1;
    } else {
        t->pipeline = 1;
        t->byte_level = 0;
        if (pre && !json_is_null(pre) && !(t->pre = tk_pre_parse(pre, &t->byte_level, path, e)))
            return e->status;
    }
    if (dec && !json_is_null(dec) && !is_bytelevel(dec) && !(t->dec = tk_dec_parse(dec, path, e)))
        return e->status;
    t->dec_join = t->pipeline && (!dec || json_is_null(dec));
    return DPO_OK;
}

static dpo_status fill_from_json(dpo_bpe *t, const char *path, json_t *root, dpo_error *e) {
    json_t *model, *vocab, *merges, *added, *j, *v;
    const char *ty;
    size_t idx;
    if (!json_is_object(root) || !json_is_object(model = json_object_get(root, "model")))
        goto not_tokenizer;
    j = json_object_get(model, "type");
    ty = json_is_string(j) ? json_string_value(j) : NULL;
    if (!ty && !json_object_get(model, "merges")) goto not_tokenizer;
    if (ty && strcmp(ty, "BPE") != 0) {
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s: unsupported model type '%s' (only BPE is supported; WordPiece and "
                 "Unigram tokenizers are not)",
                 path, ty);
        return e->status;
    }
    if (read_stages(t, path, root, e) != DPO_OK) return e->status;
    j = json_object_get(model, "dropout");
    if (j && !json_is_null(j) && !(json_is_number(j) && json_number_value(j) <= 0.0)) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: BPE dropout is not supported", path);
        return e->status;
    }
    for (int k = 0; k < 2; k++) {
        const char *key = k ? "end_of_word_suffix" : "continuing_subword_prefix";
        char **dst = k ? &t->eow_suffix : &t->cprefix;
        size_t *len = k ? &t->neow : &t->ncprefix;
        j = json_object_get(model, key);
        if (!j || json_is_null(j) || (json_is_string(j) && json_string_length(j) == 0)) continue;
        if (tk_strdup_field(model, key, dst, len)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: the model's %s is not a string", path, key);
            return e->status;
        }
    }
    t->byte_fallback = flag(model, "byte_fallback");
    t->fuse_unk = flag(model, "fuse_unk");
    t->ignore_merges = flag(model, "ignore_merges");
    vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: the BPE model has no \"vocab\" object", path);
        return e->status;
    }
    if (add_vocab(t, vocab, 0, path, e) != DPO_OK) return e->status;
    added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: \"added_tokens\" is not a list", path);
        return e->status;
    }
    json_array_foreach(added, idx, v) {
        json_t *c = json_object_get(v, "content");
        int32_t id;
        if (!json_is_string(c)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: added token %zu has no \"content\" string", path,
                     idx + 1);
            return e->status;
        }
        id = json_id(json_object_get(v, "id"), path, "added token", json_string_value(c),
                     json_string_length(c), e);
        if (id < 0 ||
            bpe_set_token(t, id, json_string_value(c), json_string_length(c), 1, path, e) !=
                DPO_OK ||
            bpe_add_added(t, id, flag(v, "special"), flag(v, "lstrip"), flag(v, "rstrip"),
                          flag(v, "single_word"), flag(v, "normalized"), path, e) != DPO_OK)
            return e->status;
    }
    merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) {
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: the BPE model has no \"merges\" list", path);
        return e->status;
    }
    json_array_foreach(merges, idx, v) {
        json_t *a = json_array_get(v, 0), *b = json_array_get(v, 1);
        long k = -(long)idx - 1;
        if (json_is_string(v)) {
            if (add_merge_str(t, json_string_value(v), json_string_length(v), path, k, e) != DPO_OK)
                return e->status;
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(a) &&
                   json_is_string(b)) {
            int32_t ia = bpe_vmap_find(t, json_string_value(a), json_string_length(a));
            int32_t ib = bpe_vmap_find(t, json_string_value(b), json_string_length(b));
            json_t *m = ia < 0 ? a : b;
            if (ia < 0 || ib < 0)
                return merge_token_missing(json_string_value(m), json_string_length(m), path, k, e);
            if (bpe_add_merge(t, ia, ib, path, k, e) != DPO_OK) return e->status;
        } else {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: merge %zu: neither \"a b\" nor [\"a\", \"b\"]", path,
                     idx + 1);
            return e->status;
        }
    }
    j = json_object_get(model, "unk_token");
    if (json_is_string(j))
        t->role[DPO_BPE_UNK] = bpe_vmap_find(t, json_string_value(j), json_string_length(j));
    j = json_object_get(root, "post_processor");
    if (j && !json_is_null(j) && tk_post_parse(j, t, &t->post, path, e) != DPO_OK) return e->status;
    return bpe_finish(t, path, e);
not_tokenizer:
    dpo_fail(e, DPO_ERR_ARG, 0, "%s: not a tokenizer.json (no \"model\" object with a type)", path);
    return e->status;
}

static dpo_bpe *json_tokenizer(const char *path, dpo_error *e) {
    dpo_bpe *t;
    json_t *root = parse_json(path, e);
    if (!root) return NULL;
    t = bpe_new(e);
    if (t && fill_from_json(t, path, root, e) != DPO_OK) {
        dpo_bpe_free(t);
        t = NULL;
    }
    json_decref(root);
    return t;
}

dpo_bpe *dpo_bpe_load_json(const char *path, dpo_error *e) {
    dpo_bpe *t = json_tokenizer(path, e);
    if (t) bpe_default_roles(t, NULL);
    return t;
}

/* GPT-2's vocabulary and merges, without bpe_finish(). */
static dpo_status fill_gpt2(dpo_bpe *t, const char *vocab_path, const char *merges_path,
                            dpo_error *e) {
    json_t *root = parse_json(vocab_path, e);
    char *s;
    const char *p, *end;
    size_t n;
    long line = 0;
    int32_t eot;
    if (!root) return e->status;
    if (!json_is_object(root)) {
        json_decref(root);
        dpo_fail(e, DPO_ERR_ARG, 0, "%s: not a vocabulary (a JSON object of token: id)",
                 vocab_path);
        return e->status;
    }
    if (add_vocab(t, root, 0, vocab_path, e) != DPO_OK) {
        json_decref(root);
        return e->status;
    }
    json_decref(root);
    eot = bpe_vmap_find(t, "<|endoftext|>", 13);
    if (eot >= 0 && (bpe_set_token(t, eot, "<|endoftext|>", 13, 1, vocab_path, e) != DPO_OK ||
                     bpe_add_added(t, eot, 1, 0, 0, 0, 0, vocab_path, e) != DPO_OK))
        return e->status;
    s = read_file(merges_path, &n, e);
    if (!s) return e->status;
    for (p = s, end = s + n; p < end;) {
        const char *nl = (const char *)memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl ? nl : end) - p);
        line++;
        if (len && p[len - 1] == '\r') len--;
        if (len && !(len >= 8 && memcmp(p, "#version", 8) == 0)) {
            if (add_merge_str(t, p, len, merges_path, line, e) != DPO_OK) {
                free(s);
                return e->status;
            }
        }
        p = nl ? nl + 1 : end;
    }
    free(s);
    return DPO_OK;
}

dpo_bpe *dpo_bpe_load_gpt2(const char *vocab_path, const char *merges_path, dpo_error *e) {
    dpo_bpe *t = bpe_new(e);
    if (!t) return NULL;
    if (fill_gpt2(t, vocab_path, merges_path, e) != DPO_OK ||
        bpe_finish(t, merges_path, e) != DPO_OK) {
        dpo_bpe_free(t);
        return NULL;
    }
    bpe_default_roles(t, NULL);
    return t;
}

/* Roles named by a directory's special_tokens_map.json and tokenizer_config.json. */
static dpo_status read_roles(dpo_bpe *t, const char *dir, int *explicit_role, dpo_error *e) {
    static const char *const files[] = {"special_tokens_map.json", "tokenizer_config.json"};
    for (int f = 0; f < 2; f++) {
        char *path = join(dir, files[f]);
        json_t *root;
        if (!path) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
            return e->status;
        }
        if (!is_file(path)) {
            free(path);
            continue;
        }
        root = parse_json_flags(path, JSON_DECODE_INT_AS_REAL, e);
        if (root && f == 1 && json_is_object(root) && !t->config &&
            !(t->config = json_dumps(root, JSON_COMPACT))) {
            json_decref(root);
            free(path);
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
            return e->status;
        }
        if (!root || !json_is_object(root)) {
            if (root) dpo_fail(e, DPO_ERR_ARG, 0, "%s: not a JSON object", path);
            json_decref(root);
            free(path);
            return e->status;
        }
        for (int r = 0; r < DPO_BPE_NROLES; r++) {
            json_t *v = json_object_get(root, role_key[r]);
            int32_t id;
            if (!v) continue;
            if (json_is_null(v)) {
                t->role[r] = -1;
                explicit_role[r] = 1;
                continue;
            }
            if (json_is_object(v)) v = json_object_get(v, "content");
            if (!json_is_string(v)) continue;
            id = bpe_vmap_find(t, json_string_value(v), json_string_length(v));
            if (id >= 0) {
                t->role[r] = id;
                explicit_role[r] = 1;
            }
        }
        json_decref(root);
        free(path);
    }
    return DPO_OK;
}

/* dir's vocabulary and merges files (+ added_tokens.json); *found = 0 when
** they are not there (t NULL, e untouched), else t or NULL with e filled. */
static dpo_bpe *load_pair(const char *dir, const char *vname, const char *mname, int *found,
                          dpo_error *e) {
    char *v = join(dir, vname), *m = join(dir, mname), *a = join(dir, "added_tokens.json");
    dpo_bpe *t = NULL;
    json_t *root = NULL;
    *found = 1;
    if (!v || !m || !a) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        goto done;
    }
    if (!is_file(v) || !is_file(m)) {
        *found = 0;
        goto done;
    }
    t = bpe_new(e);
    if (!t || fill_gpt2(t, v, m, e) != DPO_OK) goto fail;
    if (is_file(a)) {
        root = parse_json(a, e);
        if (!root) goto fail;
        if (!json_is_object(root)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: not a JSON object of token: id", a);
            goto fail;
        }
        if (add_vocab(t, root, 1, a, e) != DPO_OK) goto fail;
    }
    if (bpe_finish(t, m, e) == DPO_OK) goto done;
fail:
    dpo_bpe_free(t);
    t = NULL;
done:
    json_decref(root);
    free(v), free(m), free(a);
    return t;
}

/* {"SpecialToken": {"id": name, "type_id": k}} */
static json_t *tpl_special(const dpo_bpe *t, int32_t id, int k) {
    return json_pack("{s{ss%si}}", "SpecialToken", "id", bpe_tok_str(t, id),
                     (size_t)t->tok[id].str_len, "type_id", k);
}

/* Append [bos] $X [eos] to list a (k: type id, X: "A" or "B"). */
static int tpl_add(json_t *a, const dpo_bpe *t, int32_t bos, int32_t eos, int k, const char *x) {
    return (bos < 0 || json_array_append_new(a, tpl_special(t, bos, k)) == 0) &&
           json_array_append_new(a, json_pack("{s{sssi}}", "Sequence", "id", x, "type_id", k)) ==
               0 &&
           (eos < 0 || json_array_append_new(a, tpl_special(t, eos, k)) == 0);
}

/*
** transformers' Llama and Gemma tokenizers (tokenizer_class LlamaTokenizer,
** GemmaTokenizer, CodeLlamaTokenizer, with or without Fast) rebuild the
** post-processor from tokenizer_config.json's add_bos_token / add_eos_token
** (defaults true and false): [bos] $A [eos]. Done here too, and written to
** the tokenizer.json that tok:save writes, as transformers' save does.
*/
static dpo_status class_template(dpo_bpe *t, const char *dir, dpo_error *e) {
    static const char *const classes[] = {"LlamaTokenizer", "GemmaTokenizer", "CodeLlamaTokenizer"};
    json_t *root, *cls, *v, *tpl = NULL, *single, *pair, *sp;
    int32_t bos, eos;
    int match = 0, add_bos = 1, add_eos = 0, ok;
    if (!t->config || !(root = json_loads(t->config, JSON_DECODE_INT_AS_REAL, NULL))) return DPO_OK;
    cls = json_object_get(root, "tokenizer_class");
    for (int k = 0; k < 3 && json_is_string(cls); k++)
        match |= strncmp(json_string_value(cls), classes[k], strlen(classes[k])) == 0 &&
                 (json_string_value(cls)[strlen(classes[k])] == '\0' ||
                  strcmp(json_string_value(cls) + strlen(classes[k]), "Fast") == 0);
    if ((v = json_object_get(root, "add_bos_token"))) add_bos = json_is_true(v);
    if ((v = json_object_get(root, "add_eos_token"))) add_eos = json_is_true(v);
    json_decref(root);
    if (!match) return DPO_OK;
    bos = add_bos ? t->role[DPO_BPE_BOS] : -1;
    eos = add_eos ? t->role[DPO_BPE_EOS] : -1;
    if ((add_bos && bos < 0) || (add_eos && eos < 0)) {
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s/tokenizer_config.json: add_%s_token is true but there is no %s token", dir,
                 add_bos && bos < 0 ? "bos" : "eos", add_bos && bos < 0 ? "bos" : "eos");
        return e->status;
    }
    single = json_array();
    pair = json_array();
    sp = json_object();
    ok = single && pair && sp && tpl_add(single, t, bos, eos, 0, "A") &&
         tpl_add(pair, t, bos, eos, 0, "A") && tpl_add(pair, t, bos, eos, 1, "B");
    for (int k = 0; ok && k < 2; k++) {
        int32_t id = k ? eos : bos;
        if (id < 0) continue;
        ok = json_object_setn_new(sp, bpe_tok_str(t, id), t->tok[id].str_len,
                                  json_pack("{ss%s[i]s[s%]}", "id", bpe_tok_str(t, id),
                                            (size_t)t->tok[id].str_len, "ids", (int)id, "tokens",
                                            bpe_tok_str(t, id), (size_t)t->tok[id].str_len)) == 0;
    }
    if (ok) {
        tpl = json_pack("{sssOsOsO}", "type", "TemplateProcessing", "single", single, "pair", pair,
                        "special_tokens", sp);
        free(t->src[2]);
        t->src[2] = tpl ? json_dumps(tpl, JSON_COMPACT) : NULL;
        ok = t->src[2] != NULL;
    }
    if (ok) {
        size_t n = 0;
        int32_t *items = (int32_t *)malloc(3 * sizeof *items);
        ok = items != NULL;
        if (ok) {
            if (bos >= 0) items[n++] = bos;
            items[n++] = -1;
            if (eos >= 0) items[n++] = eos;
            free(t->post.item);
            t->post.item = items;
            t->post.n = n;
        }
    }
    json_decref(tpl), json_decref(single), json_decref(pair), json_decref(sp);
    if (!ok) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", dir);
        return e->status;
    }
    return DPO_OK;
}

/* A directory's files: tokenizer.json, or a vocabulary and its merges. */
static dpo_bpe *load_dir(const char *dir, dpo_error *e) {
    int explicit_role[DPO_BPE_NROLES] = {0}, found = 0;
    char *tj = join(dir, "tokenizer.json");
    dpo_bpe *t = NULL;
    if (!tj) return (dpo_bpe *)dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    if (is_file(tj)) {
        t = json_tokenizer(tj, e);
        found = 1;
    }
    free(tj);
    if (!found) t = load_pair(dir, "vocab.json", "merges.txt", &found, e);
    if (!found) t = load_pair(dir, "encoder.json", "vocab.bpe", &found, e);
    if (!found)
        return (dpo_bpe *)dpo_fail(e, DPO_ERR_IO, 0,
                                   "%s: no tokenizer.json, vocab.json + merges.txt or "
                                   "encoder.json + vocab.bpe in this directory",
                                   dir);
    if (t && read_roles(t, dir, explicit_role, e) != DPO_OK) {
        dpo_bpe_free(t);
        return NULL;
    }
    if (t) bpe_default_roles(t, explicit_role);
    if (t && class_template(t, dir, e) != DPO_OK) {
        dpo_bpe_free(t);
        return NULL;
    }
    return t;
}

dpo_bpe *dpo_bpe_load(const char *path, dpo_error *e) {
    struct stat st;
    if (stat(path, &st) != 0)
        return (dpo_bpe *)dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return load_dir(path, e);
    return dpo_bpe_load_json(path, e);
}

/* ---- saving ------------------------------------------------------------------------ */

/* o[key] = v, taking v; 0 when either is missing (out of memory). */
static int jset(json_t *o, const char *key, json_t *v) {
    return o && v && json_object_set_new(o, key, v) == 0;
}

static json_t *bytelevel_json(int add_prefix_space, int trim_offsets, int use_regex) {
    json_t *o = json_object();
    if (jset(o, "type", json_string("ByteLevel")) &&
        jset(o, "add_prefix_space", json_boolean(add_prefix_space)) &&
        jset(o, "trim_offsets", json_boolean(trim_offsets)) &&
        jset(o, "use_regex", json_boolean(use_regex)))
        return o;
    json_decref(o);
    return NULL;
}

/* Stage k as it was read, else def (taken or released either way). */
static json_t *stage(const dpo_bpe *t, int k, json_t *def) {
    json_t *j;
    if (!t->src[k]) return def;
    j = json_loads(t->src[k], 0, NULL);
    json_decref(def);
    return j;
}

/* The tokenizer.json document, laid out as Hugging Face writes it. */
static json_t *to_json(const dpo_bpe *t) {
    json_t *root = json_object(), *added = json_array(), *model = json_object();
    json_t *vocab = json_object(), *merges = json_array();
    int32_t unk = t->role[DPO_BPE_UNK];
    sbuf m = {0};
    int ok = jset(root, "version", json_string("1.0")) && jset(root, "truncation", json_null()) &&
             jset(root, "padding", json_null()) && jset(root, "added_tokens", json_incref(added));
    for (int k = 0; ok && k < t->nadded; k++) {
        const added_tok *a = &t->added[k];
        json_t *o = json_object();
        ok = jset(o, "id", json_integer(a->id)) &&
             jset(o, "content", json_stringn(bpe_tok_str(t, a->id), t->tok[a->id].str_len)) &&
             jset(o, "single_word", json_boolean(a->single_word)) &&
             jset(o, "lstrip", json_boolean(a->lstrip)) &&
             jset(o, "rstrip", json_boolean(a->rstrip)) &&
             jset(o, "normalized", json_boolean(a->normalized)) &&
             jset(o, "special", json_boolean(a->special)) && json_array_append_new(added, o) == 0;
    }
    ok = ok && jset(root, "normalizer", stage(t, 0, json_null())) &&
         jset(root, "pre_tokenizer",
              stage(t, 1,
                    t->pipeline ? json_null()
                                : bytelevel_json(t->add_prefix_space, 1, t->use_regex))) &&
         jset(root, "post_processor",
              stage(t, 2, t->pipeline ? json_null() : bytelevel_json(1, 0, 1))) &&
         jset(root, "decoder", stage(t, 3, t->pipeline ? json_null() : bytelevel_json(1, 1, 1))) &&
         jset(root, "model", json_incref(model)) && jset(model, "type", json_string("BPE")) &&
         jset(model, "dropout", json_null()) &&
         jset(model, "unk_token",
              unk >= 0 ? json_stringn(bpe_tok_str(t, unk), t->tok[unk].str_len) : json_null()) &&
         jset(model, "continuing_subword_prefix",
              t->cprefix ? json_stringn(t->cprefix, t->ncprefix) : json_null()) &&
         jset(model, "end_of_word_suffix",
              t->eow_suffix ? json_stringn(t->eow_suffix, t->neow) : json_null()) &&
         jset(model, "fuse_unk", json_boolean(t->fuse_unk)) &&
         jset(model, "byte_fallback", json_boolean(t->byte_fallback)) &&
         (!t->ignore_merges || jset(model, "ignore_merges", json_true())) &&
         jset(model, "vocab", json_incref(vocab)) && jset(model, "merges", json_incref(merges));
    for (int32_t id = 0; ok && id < t->n; id++)
        if (t->tok[id].used)
            ok = json_object_setn_new(vocab, bpe_tok_str(t, id), t->tok[id].str_len,
                                      json_integer(id)) == 0;
    for (int32_t r = 0; ok && r < t->nmerges; r++) {
        int32_t a = t->merge[3 * r], b = t->merge[3 * r + 1];
        const char *sa = bpe_tok_str(t, a), *sb = bpe_tok_str(t, b);
        size_t na = t->tok[a].str_len, nb = t->tok[b].str_len;
        /* "a b" as GPT-2 writes them, unless a token holds a space: ["a", "b"] */
        if (memchr(sa, ' ', na) || memchr(sb, ' ', nb)) {
            ok = json_array_append_new(merges, json_pack("[s%s%]", sa, na, sb, nb)) == 0;
            continue;
        }
        m.n = 0;
        ok = bpe_sbuf_add(&m, sa, na) == 0 && bpe_sbuf_add(&m, " ", 1) == 0 &&
             bpe_sbuf_add(&m, sb, nb) == 0 &&
             json_array_append_new(merges, json_stringn(m.p, m.n)) == 0;
    }
    free(m.p);
    json_decref(added), json_decref(model), json_decref(vocab), json_decref(merges);
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* The roles, as transformers' AutoTokenizer reads them beside tokenizer.json. */
static json_t *config_json(const dpo_bpe *t) {
    json_t *root = t->config ? json_loads(t->config, JSON_DECODE_INT_AS_REAL, NULL) : json_object();
    int ok = root != NULL;
    if (ok && !t->config) /* a new file; one read keeps its fields (chat_template, ...) */
        ok = jset(root, "tokenizer_class", json_string("PreTrainedTokenizerFast")) &&
             jset(root, "clean_up_tokenization_spaces", json_false());
    for (int r = 0; ok && r < DPO_BPE_NROLES; r++)
        if (t->role[r] >= 0)
            ok = jset(root, role_key[r],
                      json_stringn(bpe_tok_str(t, t->role[r]), t->tok[t->role[r]].str_len));
        else if (json_object_get(root, role_key[r]))
            ok = jset(root, role_key[r], json_null());
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

static dpo_status save_doc(json_t *doc, const char *path, dpo_error *e) {
    char *s = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    dpo_status st;
    size_t n;
    json_decref(doc);
    if (!s) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory writing it", path);
        return e->status;
    }
    n = strlen(s);
    s[n] = '\n'; /* json_dumps leaves no newline; its NUL is ours to replace */
    st = dpo_write_file_atomic(path, s, n + 1, e);
    free(s);
    return st;
}

dpo_status dpo_bpe_save(const dpo_bpe *t, const char *path, dpo_error *e) {
    int dir = is_dir(path);
    char *file = dir ? join(path, "tokenizer.json") : NULL;
    dpo_status st;
    if (dir && !file) {
        dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        return e->status;
    }
    st = save_doc(to_json(t), dir ? file : path, e);
    free(file);
    if (st == DPO_OK && dir) {
        file = join(path, "tokenizer_config.json");
        st = file ? save_doc(config_json(t), file, e) : DPO_ERR_MEM;
        if (!file) dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
        free(file);
    }
    return st;
}
