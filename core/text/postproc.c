/*
** postproc.c: tokenizer.json's post-processors (see pipeline.h): what
** encode(text, add_special_tokens = true) puts around the ids of a single
** text. TemplateProcessing's "single" template (special tokens and $A, each
** special token with its list of ids), BertProcessing and
** RobertaProcessing ([cls] $A [sep]), ByteLevel (offsets only: no ids) and
** Sequence (each applied to the result of the one before). Others are an
** error naming the type.
*/
#include "text/pipeline.h"

#include <stdlib.h>
#include <string.h>

static int push(tk_post *p, int32_t id) {
    int32_t *q = (int32_t *)realloc(p->item, (p->n + 1) * sizeof *q);
    if (!q) return -1;
    p->item = q;
    p->item[p->n++] = id;
    return 0;
}

/* Compose: the new template t around the current one (the current one
** replaces t's $A). */
static int compose(tk_post *p, const tk_post *t) {
    tk_post r = {0};
    if (p->n == 0) {
        for (size_t k = 0; k < t->n; k++)
            if (push(&r, t->item[k])) goto nomem;
    } else {
        for (size_t k = 0; k < t->n; k++) {
            if (t->item[k] >= 0) {
                if (push(&r, t->item[k])) goto nomem;
                continue;
            }
            for (size_t q = 0; q < p->n; q++)
                if (push(&r, p->item[q])) goto nomem;
        }
    }
    free(p->item);
    *p = r;
    return 0;
nomem:
    free(r.item);
    return -1;
}

/* [token, id] of BertProcessing / RobertaProcessing */
static int32_t pair_id(json_t *v) {
    json_t *id = json_array_get(v, 1);
    if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= MAX_ID)
        return -1;
    return (int32_t)json_integer_value(id);
}

static dpo_status parse_one(json_t *j, tk_post *p, int *seen, const char *where, dpo_error *e) {
    json_t *ty = json_object_get(j, "type");
    const char *t = json_is_string(ty) ? json_string_value(ty) : "(no type)";
    tk_post tpl = {0};
    if (strcmp(t, "Sequence") == 0) {
        json_t *list = json_object_get(j, "processors"), *v;
        size_t i;
        if (!json_is_array(list)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: post_processor Sequence has no \"processors\" list",
                     where);
            return e->status;
        }
        json_array_foreach(list, i,
                           v) if (parse_one(v, p, seen, where, e) != DPO_OK) return e->status;
        return DPO_OK;
    }
    if (strcmp(t, "ByteLevel") == 0) return DPO_OK;
    if (strcmp(t, "BertProcessing") == 0 || strcmp(t, "RobertaProcessing") == 0) {
        int32_t cls = pair_id(json_object_get(j, "cls")), sep = pair_id(json_object_get(j, "sep"));
        if (cls < 0 || sep < 0) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: %s needs cls and sep as [token, id]", where, t);
            return e->status;
        }
        if (push(&tpl, cls) || push(&tpl, -1) || push(&tpl, sep)) goto nomem;
    } else if (strcmp(t, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(j, "single"),
               *specials = json_object_get(j, "special_tokens");
        json_t *v;
        size_t i;
        if (!json_is_array(single)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: TemplateProcessing has no \"single\" list", where);
            return e->status;
        }
        json_array_foreach(single, i, v) {
            json_t *sp = json_object_get(v, "SpecialToken"), *sq = json_object_get(v, "Sequence");
            if (json_is_object(sq)) {
                json_t *id = json_object_get(sq, "id");
                if (!json_is_string(id) || strcmp(json_string_value(id), "A") != 0) {
                    free(tpl.item);
                    dpo_fail(e, DPO_ERR_ARG, 0,
                             "%s: TemplateProcessing's single template uses a sequence other "
                             "than $A",
                             where);
                    return e->status;
                }
                if (push(&tpl, -1)) goto nomem;
            } else if (json_is_object(sp)) {
                json_t *name = json_object_get(sp, "id"), *st, *ids, *x;
                size_t q;
                st = json_is_string(name) ? json_object_get(specials, json_string_value(name))
                                          : NULL;
                ids = json_object_get(st, "ids");
                if (!json_is_array(ids)) {
                    free(tpl.item);
                    dpo_fail(e, DPO_ERR_ARG, 0,
                             "%s: TemplateProcessing's special token '%s' is not in its "
                             "special_tokens",
                             where, json_is_string(name) ? json_string_value(name) : "?");
                    return e->status;
                }
                json_array_foreach(ids, q, x) {
                    if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                        json_integer_value(x) >= MAX_ID) {
                        free(tpl.item);
                        dpo_fail(e, DPO_ERR_ARG, 0, "%s: TemplateProcessing: a bad id for '%s'",
                                 where, json_string_value(name));
                        return e->status;
                    }
                    if (push(&tpl, (int32_t)json_integer_value(x))) goto nomem;
                }
            } else {
                free(tpl.item);
                dpo_fail(e, DPO_ERR_ARG, 0,
                         "%s: TemplateProcessing: item %zu is neither SpecialToken nor Sequence",
                         where, i + 1);
                return e->status;
            }
        }
    } else {
        dpo_fail(e, DPO_ERR_ARG, 0,
                 "%s: unsupported post_processor '%s' (supported: TemplateProcessing, "
                 "BertProcessing, RobertaProcessing, ByteLevel, Sequence)",
                 where, t);
        return e->status;
    }
    if (!*seen) { /* the first template: as it is */
        free(p->item);
        *p = tpl;
        *seen = 1;
        return DPO_OK;
    }
    {
        int r = compose(p, &tpl);
        free(tpl.item);
        if (r) goto nomem2;
    }
    return DPO_OK;
nomem:
    free(tpl.item);
nomem2:
    dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", where);
    return e->status;
}

dpo_status tk_post_parse(json_t *j, const dpo_bpe *t, tk_post *p, const char *where, dpo_error *e) {
    int seen = 0;
    p->item = NULL;
    p->n = 0;
    if (parse_one(j, p, &seen, where, e) != DPO_OK) {
        free(p->item);
        p->item = NULL;
        p->n = 0;
        return e->status;
    }
    for (size_t k = 0; k < p->n; k++) {
        int32_t id = p->item[k];
        if (id >= 0 && (id >= t->n || !t->tok[id].used)) {
            dpo_fail(e, DPO_ERR_ARG, 0, "%s: post_processor: id %ld is not in the vocabulary",
                     where, (long)id);
            free(p->item);
            p->item = NULL;
            p->n = 0;
            return e->status;
        }
    }
    return DPO_OK;
}

int tk_post_apply(const tk_post *p, dpo_bpe_ids *out, size_t start) {
    size_t body = out->n - start, extra = 0, at;
    int32_t *tmp;
    if (p->n == 0) return 0;
    for (size_t k = 0; k < p->n; k++) extra += p->item[k] >= 0 ? 1 : body;
    if (bpe_grow((void **)&out->ids, &out->cap, start + extra, sizeof *out->ids)) return -1;
    tmp = (int32_t *)malloc((body + 1) * sizeof *tmp);
    if (!tmp) return -1;
    if (body) memcpy(tmp, out->ids + start, body * sizeof *tmp);
    at = start;
    for (size_t k = 0; k < p->n; k++) {
        if (p->item[k] >= 0) {
            out->ids[at++] = p->item[k];
        } else {
            if (body) memcpy(out->ids + at, tmp, body * sizeof *tmp);
            at += body;
        }
    }
    out->n = at;
    free(tmp);
    return 0;
}
