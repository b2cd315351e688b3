/*
** l_gpt.c: the Lua face of the GPT-2 model, metatable "dpo.GPT".
**
**   dpo.core.gpt_new{vocab_size=, n_ctx=, n_layer=, n_head=, n_embd=,
**                    dropout=0, seed=0, layer_norm_epsilon=1e-5}
**   m:logps(ids, mask) -> logps [N], counts [N]
**   m:parameters(), m:named_parameters([all]), m:num_params(), m:config()
**   m:lora_apply(opts), m:lora(), m:lora_enable(on), m:lora_merge()  (lua/dpo/lora.lua)
**   m:base_hash()
**   m:clone(), m:freeze(), m:train([on]), m:eval(), m:is_training(),
**   m:is_frozen(), m:zero_grad(), m:next_logits(ids), m:generate(ids, opts)
**
** lua/dpo/gpt.lua adds loading and saving Hugging Face checkpoints.
** Parameter tensors are views of the model's arena: they keep the model
** alive, and their .grad is the matching view of the gradient arena.
** With adapters, the trainable tensors are the adapters' A and B, named
** "<module>.lora_A.weight" and "<module>.lora_B.weight"; the base is frozen.
*/
#include "tensor/autograd.h"
#include "model/gpt.h"
#include "bind/l_util.h"

#include <float.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define GPT_MT "dpo.GPT"

static dpo_gpt *checkgpt(lua_State *L, int i) {
    dpo_gpt **p = (dpo_gpt **)luaL_checkudata(L, i, GPT_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a freed dpo.GPT");
    return *p;
}

/* Push m as a new userdata, taking over the caller's reference. */
static void pushgpt(lua_State *L, dpo_gpt *m, const dpo_error *e) {
    dpo_gpt **p;
    if (!m) {
        dpo_l_raise(L, e, 1);
        return;
    }
    p = (dpo_gpt **)lua_newuserdatauv(L, sizeof *p, 0);
    *p = m;
    luaL_setmetatable(L, GPT_MT);
    /* the arena is big: let the collector know */
    lua_gc(L, LUA_GCSTEP,
           (int)(dpo_gpt_num_params(m) / 256 > 1000000 ? 1000000 : dpo_gpt_num_params(m) / 256));
}

/* Option k of the table at t, a non-negative int (def when nil); fn names the caller. */
static int intfield(lua_State *L, int t, const char *fn, const char *k, int def, int required) {
    int isint;
    lua_Integer v;
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required) luaL_error(L, "%s: option '%s' is required", fn, k);
        return def;
    }
    v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || v > 2147483647)
        luaL_error(L, "%s: option '%s' must be a non-negative integer (got %s)", fn, k,
                   luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    return (int)v;
}

/* Option k, a number a float32 holds (def when nil). */
static float floatfield(lua_State *L, int t, const char *fn, const char *k, double def) {
    double v = dpo_l_numfield(L, t, fn, k, def);
    if (fabs(v) > FLT_MAX) luaL_error(L, "%s: option '%s' is too large (got %f)", fn, k, v);
    return (float)v;
}

/* Option k, any integer (a seed; 0 when nil). */
static uint64_t seedfield(lua_State *L, int t, const char *fn, const char *k) {
    int isint;
    lua_Integer v;
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    v = lua_tointegerx(L, -1, &isint);
    if (!isint)
        luaL_error(L, "%s: option '%s' must be an integer (got %s)", fn, k,
                   luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    return (uint64_t)v;
}

/* dpo.core.gpt_new(config) */
static int l_gpt_new(lua_State *L) {
    static const char *const known[] = {"vocab_size", "n_ctx",   "n_layer", "n_head",
                                        "n_embd",     "dropout", "seed",    "layer_norm_epsilon",
                                        NULL};
    static const char *const fn = "dpo.gpt.new";
    dpo_gpt_config c;
    dpo_error e;
    uint64_t seed;
    luaL_checktype(L, 1, LUA_TTABLE);
    dpo_l_check_keys(L, 1, fn, known);
    c.vocab_size = intfield(L, 1, fn, "vocab_size", 0, 1);
    c.n_ctx = intfield(L, 1, fn, "n_ctx", 0, 1);
    c.n_layer = intfield(L, 1, fn, "n_layer", 0, 1);
    c.n_head = intfield(L, 1, fn, "n_head", 0, 1);
    c.n_embd = intfield(L, 1, fn, "n_embd", 0, 1);
    c.dropout = floatfield(L, 1, fn, "dropout", 0.0);
    c.eps = floatfield(L, 1, fn, "layer_norm_epsilon", 1e-5);
    seed = seedfield(L, 1, fn, "seed");
    pushgpt(L, dpo_gpt_new(&c, seed, &e), &e);
    return 1;
}

static int l_gc(lua_State *L) {
    dpo_gpt **p = (dpo_gpt **)luaL_checkudata(L, 1, GPT_MT);
    dpo_gpt_release(*p);
    *p = NULL;
    return 0;
}

static int l_tostring(lua_State *L) {
    dpo_gpt **p = (dpo_gpt **)luaL_checkudata(L, 1, GPT_MT);
    dpo_gpt *m = *p;
    const dpo_gpt_config *c;
    double n;
    char size[32];
    if (!m) { /* a closed model still prints, as a closed file does */
        lua_pushliteral(L, "dpo.GPT (freed)");
        return 1;
    }
    c = dpo_gpt_cfg(m);
    n = (double)dpo_gpt_num_params(m);
    if (n >= 1e6)
        snprintf(size, sizeof size, "%.1fM params", n / 1e6);
    else
        snprintf(size, sizeof size, "%.1fK params", n / 1e3);
    lua_pushfstring(L, "dpo.GPT(layers=%d, heads=%d, d=%d, vocab=%d, ctx=%d, %s%s%s)", c->n_layer,
                    c->n_head, c->n_embd, c->vocab_size, c->n_ctx, size,
                    dpo_gpt_lora(m) ? ", LoRA" : "", dpo_gpt_frozen(m) ? ", frozen" : "");
    return 1;
}

/*
** Tensor i of the model as a view, with its gradient view when it trains:
** i < num_tensors, a base parameter; then the adapters' A and B in turn.
*/
static void push_param(lua_State *L, dpo_gpt *m, int i) {
    dpo_error e;
    int nb = dpo_gpt_num_tensors(m), base = i < nb;
    dpo_lora *lo = dpo_gpt_lora(m);
    dpo_tensor *t = base ? dpo_gpt_param_tensor(m, i, 0, &e) : dpo_lora_tensor(lo, i - nb, 0, &e);
    if (t && !dpo_gpt_frozen(m) &&
        (base ? dpo_gpt_base_trainable(m) : dpo_lora_grads(lo) != NULL)) {
        t->grad = base ? dpo_gpt_param_tensor(m, i, 1, &e) : dpo_lora_tensor(lo, i - nb, 1, &e);
        t->requires_grad = 1;
    }
    dpo_l_pushtensor(L, t, &e, 0);
}

/* The name of tensor i (as push_param numbers them) on the stack. */
static void push_param_name(lua_State *L, dpo_gpt *m, int i) {
    int nb = dpo_gpt_num_tensors(m);
    if (i < nb) {
        lua_pushstring(L, dpo_gpt_param_info(m, i)->name);
        return;
    }
    i -= nb;
    lua_pushfstring(L, "%s.lora_%s.weight", dpo_lora_site_info(dpo_gpt_lora(m), i / 2)->name,
                    i % 2 == 0 ? "A" : "B");
}

/* The tensors m:parameters() lists: [first, last) in push_param's numbering. */
static void trainable_range(dpo_gpt *m, int all, int *first, int *last) {
    int nb = dpo_gpt_num_tensors(m);
    dpo_lora *lo = dpo_gpt_lora(m);
    *first = lo && !all ? nb : 0;
    *last = nb + (lo ? 2 * dpo_lora_num_sites(lo) : 0);
}

/* m:parameters() -> list of the trainable tensors: all in Hugging Face order, or the adapters */
static int l_parameters(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    int first, last;
    trainable_range(m, 0, &first, &last);
    lua_createtable(L, last - first, 0);
    for (int i = first; i < last; i++) {
        push_param(L, m, i);
        lua_rawseti(L, -2, i - first + 1);
    }
    return 1;
}

/*
** m:named_parameters([all]) -> list of {name, tensor}, map name -> tensor:
** the tensors of m:parameters(); with all, the frozen base weights of a
** model with adapters too, first, each entry then {name, tensor, frozen}.
*/
static int l_named_parameters(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    int all = lua_toboolean(L, 2), nb = dpo_gpt_num_tensors(m), first, last;
    trainable_range(m, all, &first, &last);
    lua_createtable(L, last - first, 0);
    lua_createtable(L, 0, last - first);
    for (int i = first; i < last; i++) {
        lua_createtable(L, 3, 0);
        push_param_name(L, m, i);
        lua_rawseti(L, -2, 1);
        push_param(L, m, i);
        push_param_name(L, m, i);
        lua_pushvalue(L, -2);
        lua_settable(L, -5);
        lua_rawseti(L, -2, 2);
        if (all) {
            lua_pushboolean(L, dpo_gpt_frozen(m) || (i < nb && !dpo_gpt_base_trainable(m)));
            lua_rawseti(L, -2, 3);
        }
        lua_rawseti(L, -3, i - first + 1);
    }
    return 2;
}

static int l_num_params(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_gpt_num_params(checkgpt(L, 1)));
    return 1;
}

static int l_config(lua_State *L) {
    const dpo_gpt_config *c = dpo_gpt_cfg(checkgpt(L, 1));
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, c->vocab_size);
    lua_setfield(L, -2, "vocab_size");
    lua_pushinteger(L, c->n_ctx);
    lua_setfield(L, -2, "n_ctx");
    lua_pushinteger(L, c->n_layer);
    lua_setfield(L, -2, "n_layer");
    lua_pushinteger(L, c->n_head);
    lua_setfield(L, -2, "n_head");
    lua_pushinteger(L, c->n_embd);
    lua_setfield(L, -2, "n_embd");
    lua_pushnumber(L, c->dropout);
    lua_setfield(L, -2, "dropout");
    lua_pushnumber(L, c->eps);
    lua_setfield(L, -2, "layer_norm_epsilon");
    return 1;
}

/* m:clone([freeze=false]) -> a new model with the same parameters */
static int l_clone(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    dpo_error e;
    pushgpt(L, dpo_gpt_clone(m, lua_toboolean(L, 2), &e), &e);
    return 1;
}

/* m:freeze() -> m: logps never records again (the reference model) */
static int l_freeze(lua_State *L) {
    dpo_gpt_freeze(checkgpt(L, 1));
    dpo_gpt_set_training(checkgpt(L, 1), 0);
    lua_settop(L, 1);
    return 1;
}

static int l_is_frozen(lua_State *L) {
    lua_pushboolean(L, dpo_gpt_frozen(checkgpt(L, 1)));
    return 1;
}

/* m:train([on=true]) -> m: dropout on; m:eval() -> m: dropout off */
static int l_train(lua_State *L) {
    dpo_gpt_set_training(checkgpt(L, 1), lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2));
    lua_settop(L, 1);
    return 1;
}

static int l_eval(lua_State *L) {
    dpo_gpt_set_training(checkgpt(L, 1), 0);
    lua_settop(L, 1);
    return 1;
}

static int l_is_training(lua_State *L) {
    lua_pushboolean(L, dpo_gpt_training(checkgpt(L, 1)));
    return 1;
}

/* m:seed_dropout(n): restart the dropout generator */
static int l_seed_dropout(lua_State *L) {
    dpo_gpt_seed_dropout(checkgpt(L, 1), (uint64_t)luaL_checkinteger(L, 2));
    return 0;
}

/*
** m:dropout_state() -> string; m:set_dropout_state(s): the dropout
** generator saved and restored exactly (checkpoints). The string is the
** generator's words, little-endian as stored, with no padding bytes.
*/
static int l_dropout_state(lua_State *L) {
    dpo_rng *r = dpo_gpt_dropout_rng(checkgpt(L, 1));
    uint64_t w[6] = {r->s[0], r->s[1], r->s[2], r->s[3], r->seed, (uint64_t)(r->has_spare != 0)};
    char buf[sizeof w + sizeof r->spare];
    memcpy(buf, w, sizeof w);
    memcpy(buf + sizeof w, &r->spare, sizeof r->spare);
    lua_pushlstring(L, buf, sizeof buf);
    return 1;
}

static int l_set_dropout_state(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    uint64_t w[6];
    dpo_rng *r;
    luaL_argcheck(L, n == sizeof w + sizeof(double), 2, "not a state from m:dropout_state()");
    memcpy(w, s, sizeof w);
    luaL_argcheck(L, (w[0] | w[1] | w[2] | w[3]) != 0 && w[5] <= 1, 2,
                  "not a state from m:dropout_state()");
    r = dpo_gpt_dropout_rng(m);
    r->s[0] = w[0], r->s[1] = w[1], r->s[2] = w[2], r->s[3] = w[3];
    r->seed = w[4];
    r->has_spare = (int)w[5];
    memcpy(&r->spare, s + sizeof w, sizeof r->spare);
    return 0;
}

/* m:zero_grad() -> m */
static int l_zero_grad(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    dpo_error e;
    dpo_lora *lo = dpo_gpt_lora(m);
    for (int i = 0; i < dpo_gpt_num_tensors(m); i++) {
        dpo_tensor *g = dpo_gpt_param_tensor(m, i, 1, &e);
        if (!g) break;
        dpo_tensor_fill(g, 0);
        dpo_tensor_release(g);
    }
    if (lo && dpo_lora_grads(lo))
        memset(dpo_lora_grads(lo), 0, dpo_lora_num_params(lo) * sizeof(float));
    lua_settop(L, 1);
    return 1;
}

/*
** m:lora_apply{r=8, alpha=8, dropout=0, use_rslora=false, seed=0,
**              target_modules={...} | "all-linear" (nil: all)} -> m
** Adapters on the matching linear modules; the base freezes.
*/
static int l_lora_apply(lua_State *L) {
    static const char *const fn = "lora_apply";
    dpo_gpt *m = checkgpt(L, 1);
    dpo_lora_config c;
    dpo_error e;
    const char **targets;
    int n = dpo_l_lora_options(L, 2, fn, &c, &targets);
    if (dpo_gpt_lora_apply(m, &c, n, targets, &e) != DPO_OK)
        return luaL_error(L, "%s: %s", fn, e.msg);
    lua_settop(L, 1);
    return 1;
}

/* m:lora() -> nil, or {r, alpha, dropout, use_rslora, scale, enabled, modules, num_params} */
static int l_lora(lua_State *L) {
    dpo_lora *lo = dpo_gpt_lora(checkgpt(L, 1));
    if (lo)
        dpo_l_push_lora(L, lo, 1 /* Conv1D weights [in, out] */);
    else
        lua_pushnil(L);
    return 1;
}

/* m:lora_enable(on) -> whether they were on: the adapters switched on or off */
static int l_lora_enable(lua_State *L) {
    dpo_lora *lo = dpo_gpt_lora(checkgpt(L, 1));
    luaL_checkany(L, 2);
    if (!lo) return luaL_error(L, "lora_enable: the model has no adapters");
    lua_pushboolean(L, dpo_lora_enabled(lo));
    dpo_lora_set_enabled(lo, lua_toboolean(L, 2));
    return 1;
}

/*
** m:base_hash() -> "crc32:xxxxxxxx-adler32:xxxxxxxx": checksums (zlib's) of
** the config and the base weights' bytes, not the adapters: a LoRA
** checkpoint names the base it was trained on.
*/
static int l_base_hash(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    const dpo_gpt_config *c = dpo_gpt_cfg(m);
    int dims[5] = {c->vocab_size, c->n_ctx, c->n_layer, c->n_head, c->n_embd};
    const unsigned char *p = (const unsigned char *)dpo_gpt_params(m);
    size_t n = dpo_gpt_num_params(m) * sizeof(float);
    uLong crc = crc32(0L, (const Bytef *)dims, sizeof dims),
          ad = adler32(1L, (const Bytef *)dims, sizeof dims);
    while (n > 0) { /* zlib takes uInt lengths */
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, p, k);
        ad = adler32(ad, p, k);
        p += k, n -= k;
    }
    char buf[48];
    snprintf(buf, sizeof buf, "crc32:%08x-adler32:%08x", (unsigned)crc, (unsigned)ad);
    lua_pushstring(L, buf);
    return 1;
}

/* m:lora_merge() -> m: adapters folded into the base weights, which train again */
static int l_lora_merge(lua_State *L) {
    dpo_error e;
    if (dpo_gpt_lora_merge(checkgpt(L, 1), &e) != DPO_OK)
        return luaL_error(L, "lora_merge: %s", e.msg);
    lua_settop(L, 1);
    return 1;
}

/* m:logps(ids, mask) -> logps [N] (an autograd tensor unless frozen or under no_grad), counts [N]
 */
static int l_logps(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    dpo_tensor *ids = dpo_l_checktensor(L, 2), *mask = dpo_l_checktensor(L, 3), *counts = NULL;
    dpo_error e;
    dpo_tensor *lp = dpo_gpt_logps(m, ids, mask, dpo_grad_enabled(), &counts, &e);
    dpo_l_pushtensor(L, lp, &e, 2);
    dpo_l_pushtensor(L, counts, &e, 2);
    return 2;
}

/* A 1-D list of token ids at index i: an int32 tensor (1-D or [1, T]) or a table. */
static int32_t *check_ids(lua_State *L, int i, int *n) {
    dpo_tensor *t = dpo_l_totensor(L, i);
    int32_t *ids;
    if (t) {
        int64_t len = dpo_tensor_numel(t);
        if (t->dtype != DPO_I32 || (t->ndim != 1 && !(t->ndim == 2 && t->shape[0] == 1)))
            luaL_argerror(L, i, "expected token ids: an int32 tensor [T] or [1, T], or a table");
        luaL_argcheck(L, len <= INT32_MAX / 8, i, "too many token ids");
        ids = (int32_t *)lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(len + 1), 0);
        for (int64_t k = 0; k < len; k++) ids[k] = (int32_t)dpo_tensor_get(t, k);
        *n = (int)len;
        return ids;
    }
    luaL_argexpected(L, lua_istable(L, i), i, "dpo.Tensor or table of token ids");
    {
        lua_Integer len = luaL_len(L, i); /* a __len may say anything */
        luaL_argcheck(L, len >= 0 && len <= INT32_MAX / 8, i, "too many token ids");
        *n = (int)len;
    }
    ids = (int32_t *)lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(*n + 1), 0);
    for (int k = 0; k < *n; k++) {
        int isint;
        lua_Integer v;
        lua_geti(L, i, k + 1);
        v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < INT32_MIN || v > INT32_MAX)
            luaL_argerror(L, i, lua_pushfstring(L, "element %d is not a token id", k + 1));
        ids[k] = (int32_t)v;
        lua_pop(L, 1);
    }
    return ids;
}

/* m:next_logits(ids) -> logits [V] of the token after ids (no cache) */
static int l_next_logits(lua_State *L) {
    dpo_gpt *m = checkgpt(L, 1);
    int n;
    int32_t *ids = check_ids(L, 2, &n);
    int64_t V = dpo_gpt_cfg(m)->vocab_size;
    dpo_error e;
    dpo_tensor *out = dpo_tensor_new(DPO_F32, 1, &V, &e);
    dpo_l_pushtensor(L, out, &e, 0);
    if (dpo_gpt_next_logits(m, ids, n, dpo_f32(out), &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    return 1;
}

/*
** m:generate(ids, {max_new_tokens=32, temperature=0, top_k=0, top_p=1, seed=0,
**                  stop_ids={...} or n, use_cache=true}) -> new ids, int32 [n]
*/
static int l_generate(lua_State *L) {
    static const char *const known[] = {"max_new_tokens", "temperature", "top_k",     "top_p",
                                        "seed",           "stop_ids",    "use_cache", NULL};
    dpo_gpt *m = checkgpt(L, 1);
    dpo_gen_opts o = {32, 0.0, 0, 1.0, 0, NULL, 0, 1};
    int n, nout;
    int32_t *ids = check_ids(L, 2, &n), *out, stop1;
    dpo_error e;
    dpo_tensor *t;
    int64_t len;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        dpo_l_check_keys(L, 3, "generate", known);
        o.max_new_tokens = intfield(L, 3, "generate", "max_new_tokens", 32, 0);
        o.temperature = dpo_l_numfield(L, 3, "generate", "temperature", 0.0);
        o.top_k = intfield(L, 3, "generate", "top_k", 0, 0);
        o.top_p = dpo_l_numfield(L, 3, "generate", "top_p", 1.0);
        o.seed = seedfield(L, 3, "generate", "seed");
        lua_getfield(L, 3, "use_cache");
        if (!lua_isnil(L, -1)) o.use_cache = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (o.temperature < 0) return luaL_error(L, "generate: temperature must be >= 0");
        if (!(o.top_p > 0 && o.top_p <= 1))
            return luaL_error(L, "generate: top_p must be in (0, 1]");
        lua_getfield(L, 3, "stop_ids");
        if (lua_isinteger(L, -1)) {
            stop1 = (int32_t)lua_tointeger(L, -1);
            o.stop_ids = &stop1, o.n_stop = 1;
        } else if (lua_istable(L, -1)) {
            int top = lua_gettop(L);
            o.stop_ids = check_ids(L, top, &o.n_stop);
        } else if (!lua_isnil(L, -1)) {
            return luaL_error(L, "generate: stop_ids must be a token id or a table of them");
        }
    }
    out = dpo_gpt_generate(m, ids, n, &o, &nout, &e);
    if (!out) return dpo_l_raise(L, &e, 1);
    len = nout;
    t = dpo_tensor_new(DPO_I32, 1, &len, &e);
    if (t) memcpy(dpo_i32(t), out, sizeof(int32_t) * (size_t)nout);
    free(out);
    dpo_l_pushtensor(L, t, &e, 0);
    return 1;
}

static const luaL_Reg meta[] = {
    {"__gc", l_gc},
    {"__close", l_gc},
    {"__tostring", l_tostring},
    {NULL, NULL},
};

static const luaL_Reg methods[] = {
    {"base_hash", l_base_hash},
    {"clone", l_clone},
    {"config", l_config},
    {"dropout_state", l_dropout_state},
    {"eval", l_eval},
    {"freeze", l_freeze},
    {"generate", l_generate},
    {"is_frozen", l_is_frozen},
    {"is_training", l_is_training},
    {"logps", l_logps},
    {"lora", l_lora},
    {"lora_apply", l_lora_apply},
    {"lora_enable", l_lora_enable},
    {"lora_merge", l_lora_merge},
    {"named_parameters", l_named_parameters},
    {"next_logits", l_next_logits},
    {"num_params", l_num_params},
    {"parameters", l_parameters},
    {"seed_dropout", l_seed_dropout},
    {"set_dropout_state", l_set_dropout_state},
    {"train", l_train},
    {"zero_grad", l_zero_grad},
    {NULL, NULL},
};

int dpo_open_gpt(lua_State *L) {
    luaL_newmetatable(L, GPT_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods); /* core mt methods */
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__index");
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__methods");
    lua_setfield(L, -3, "GPT"); /* core.GPT = methods, for lua/dpo/gpt.lua to extend */
    lua_pop(L, 1);
    lua_pushcfunction(L, l_gpt_new);
    lua_setfield(L, -2, "gpt_new");
    return 0;
}
