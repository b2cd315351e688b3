/*
** l_llama.c: the Lua face of the Llama-family decoder, metatable "dpo.Llama".
**
**   dpo.core.llama_new{vocab_size=, hidden_size=, intermediate_size=,
**       num_hidden_layers=, num_attention_heads=, num_key_value_heads=,
**       head_dim=, max_position_embeddings=, rms_norm_eps=, rope_theta=,
**       rope_type="default"|"linear"|"llama3", rope_factor=, low_freq_factor=,
**       high_freq_factor=, original_max_position_embeddings=, sliding_window=0,
**       tie_word_embeddings=, qkv_bias=, o_bias=, mlp_bias=, qk_norm=,
**       initializer_range=0.02, seed=0}
**   The same methods as dpo.GPT (l_gpt.c), with the same meaning:
**   m:logps(ids, mask), m:parameters(), m:named_parameters(), m:num_params(),
**   m:config(), m:clone([freeze]), m:freeze(), m:train([on]), m:eval(),
**   m:is_training(), m:is_frozen(), m:zero_grad(), m:seed_dropout(n),
**   m:dropout_state(), m:set_dropout_state(s), m:next_logits(ids),
**   m:generate(ids, opts),
**   m:lora_apply(opts), m:lora(), m:lora_enable(on), m:lora_merge(),
**   m:base_hash()  (lua/dpo/lora.lua).
**
** lua/dpo/model.lua reads Hugging Face configs and checkpoints into this
** table and adds m:save(dir). Parameter tensors are views of the arena.
** With adapters, the trainable tensors are the adapters' A and B, named
** "<module>.lora_A.weight" and "<module>.lora_B.weight" (module as
** "model.layers.0.self_attn.q_proj"); the base is frozen.
*/
#include "bind/l_util.h"
#include "model/llama.h"
#include "tensor/autograd.h"

#include <float.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define LLAMA_MT "dpo.Llama"

static dpo_llama *checkllama(lua_State *L, int i) {
    dpo_llama **p = (dpo_llama **)luaL_checkudata(L, i, LLAMA_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a freed dpo.Llama");
    return *p;
}

/* Push m as a new userdata, taking over the caller's reference. */
static void pushllama(lua_State *L, dpo_llama *m, const dpo_error *e) {
    dpo_llama **p;
    size_t n;
    if (!m) {
        dpo_l_raise(L, e, 1);
        return;
    }
    p = (dpo_llama **)lua_newuserdatauv(L, sizeof *p, 0);
    *p = m;
    luaL_setmetatable(L, LLAMA_MT);
    n = dpo_llama_num_params(m) / 256;
    lua_gc(L, LUA_GCSTEP, (int)(n > 1000000 ? 1000000 : n)); /* the arena is big */
}

/* Option k of the table at t, an integer in lo..hi (def when nil). */
static int intfield(lua_State *L, int t, const char *k, int def, int required, lua_Integer lo,
                    lua_Integer hi) {
    int isint;
    lua_Integer v;
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required) luaL_error(L, "dpo.model.new: option '%s' is required", k);
        return def;
    }
    v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < lo || v > hi)
        luaL_error(L, "dpo.model.new: option '%s' must be an integer in %I..%I (got %s)", k, lo, hi,
                   luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    return (int)v;
}

/* Option k, a boolean (def when nil). */
static int boolfield(lua_State *L, int t, const char *k, int def) {
    int v;
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    if (!lua_isboolean(L, -1))
        luaL_error(L, "dpo.model.new: option '%s' must be a boolean (got %s)", k,
                   luaL_typename(L, -1));
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static const char *const rope_names[] = {"default", "linear", "llama3", NULL};

/* dpo.core.llama_new(config) */
static int l_llama_new(lua_State *L) {
    static const char *const known[] = {"vocab_size",
                                        "hidden_size",
                                        "intermediate_size",
                                        "num_hidden_layers",
                                        "num_attention_heads",
                                        "num_key_value_heads",
                                        "head_dim",
                                        "max_position_embeddings",
                                        "sliding_window",
                                        "rms_norm_eps",
                                        "rope_theta",
                                        "rope_type",
                                        "rope_factor",
                                        "low_freq_factor",
                                        "high_freq_factor",
                                        "original_max_position_embeddings",
                                        "tie_word_embeddings",
                                        "qkv_bias",
                                        "o_bias",
                                        "mlp_bias",
                                        "qk_norm",
                                        "initializer_range",
                                        "seed",
                                        NULL};
    static const char *const fn = "dpo.model.new";
    const lua_Integer big = 2147483647;
    dpo_llama_config c;
    dpo_error e;
    double init, eps;
    lua_Integer seed;
    luaL_checktype(L, 1, LUA_TTABLE);
    dpo_l_check_keys(L, 1, fn, known);
    memset(&c, 0, sizeof c);
    c.vocab_size = intfield(L, 1, "vocab_size", 0, 1, 1, big);
    c.hidden_size = intfield(L, 1, "hidden_size", 0, 1, 1, big);
    c.intermediate_size = intfield(L, 1, "intermediate_size", 0, 1, 1, big);
    c.n_layer = intfield(L, 1, "num_hidden_layers", 0, 1, 1, big);
    c.n_head = intfield(L, 1, "num_attention_heads", 0, 1, 1, big);
    c.n_kv_head = intfield(L, 1, "num_key_value_heads", c.n_head, 0, 1, big);
    c.head_dim = intfield(L, 1, "head_dim", c.hidden_size / c.n_head, 0, 1, big);
    c.n_ctx = intfield(L, 1, "max_position_embeddings", 2048, 0, 1, big);
    c.sliding_window = intfield(L, 1, "sliding_window", 0, 0, 0, big);
    eps = dpo_l_numfield(L, 1, fn, "rms_norm_eps", 1e-6);
    if (!(eps > 0 && eps < 1)) return luaL_error(L, "%s: rms_norm_eps must be in (0, 1)", fn);
    c.rms_eps = (float)eps;
    c.rope_theta = dpo_l_numfield(L, 1, fn, "rope_theta", 10000.0);
    lua_getfield(L, 1, "rope_type");
    c.rope_type = (dpo_rope_type)luaL_checkoption(L, -1, "default", rope_names);
    lua_pop(L, 1);
    c.rope_factor = dpo_l_numfield(L, 1, fn, "rope_factor", 1.0);
    c.rope_low_freq_factor = dpo_l_numfield(L, 1, fn, "low_freq_factor", 1.0);
    c.rope_high_freq_factor = dpo_l_numfield(L, 1, fn, "high_freq_factor", 4.0);
    c.rope_original_ctx = intfield(L, 1, "original_max_position_embeddings", 8192, 0, 1, big);
    c.tie_embeddings = boolfield(L, 1, "tie_word_embeddings", 0);
    c.qkv_bias = boolfield(L, 1, "qkv_bias", 0);
    c.o_bias = boolfield(L, 1, "o_bias", 0);
    c.mlp_bias = boolfield(L, 1, "mlp_bias", 0);
    c.qk_norm = boolfield(L, 1, "qk_norm", 0);
    init = dpo_l_numfield(L, 1, fn, "initializer_range", 0.02);
    lua_getfield(L, 1, "seed");
    seed = lua_isnil(L, -1) ? 0 : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    pushllama(L, dpo_llama_new(&c, init, (uint64_t)seed, &e), &e);
    return 1;
}

static int l_gc(lua_State *L) {
    dpo_llama **p = (dpo_llama **)luaL_checkudata(L, 1, LLAMA_MT);
    dpo_llama_release(*p);
    *p = NULL;
    return 0;
}

static int l_tostring(lua_State *L) {
    dpo_llama **p = (dpo_llama **)luaL_checkudata(L, 1, LLAMA_MT);
    const dpo_llama_config *c;
    double n;
    char size[32];
    if (!*p) {
        lua_pushliteral(L, "dpo.Llama (freed)");
        return 1;
    }
    c = dpo_llama_cfg(*p);
    n = (double)dpo_llama_num_params(*p);
    if (n >= 1e6)
        snprintf(size, sizeof size, "%.1fM params", n / 1e6);
    else
        snprintf(size, sizeof size, "%.1fK params", n / 1e3);
    lua_pushfstring(L,
                    "dpo.Llama(layers=%d, heads=%d, kv_heads=%d, head_dim=%d, d=%d, ffn=%d, "
                    "vocab=%d, ctx=%d, %s%s%s%s)",
                    c->n_layer, c->n_head, c->n_kv_head, c->head_dim, c->hidden_size,
                    c->intermediate_size, c->vocab_size, c->n_ctx, size,
                    c->tie_embeddings ? ", tied" : "", dpo_llama_lora(*p) ? ", LoRA" : "",
                    dpo_llama_frozen(*p) ? ", frozen" : "");
    return 1;
}

/*
** Tensor i of the model as a view, with its gradient view when it trains:
** i < num_tensors, a base parameter; then the adapters' A and B in turn.
*/
static void push_param(lua_State *L, dpo_llama *m, int i) {
    dpo_error e;
    int nb = dpo_llama_num_tensors(m), base = i < nb;
    dpo_lora *lo = dpo_llama_lora(m);
    dpo_tensor *t = base ? dpo_llama_param_tensor(m, i, 0, &e) : dpo_lora_tensor(lo, i - nb, 0, &e);
    if (t && !dpo_llama_frozen(m) &&
        (base ? dpo_llama_base_trainable(m) : dpo_lora_grads(lo) != NULL)) {
        t->grad = base ? dpo_llama_param_tensor(m, i, 1, &e) : dpo_lora_tensor(lo, i - nb, 1, &e);
        t->requires_grad = 1;
    }
    dpo_l_pushtensor(L, t, &e, 0);
}

/* The name of tensor i (as push_param numbers them) on the stack. */
static void push_param_name(lua_State *L, dpo_llama *m, int i) {
    int nb = dpo_llama_num_tensors(m);
    if (i < nb) {
        lua_pushstring(L, dpo_llama_param_info(m, i)->name);
        return;
    }
    i -= nb;
    lua_pushfstring(L, "%s.lora_%s.weight", dpo_lora_site_info(dpo_llama_lora(m), i / 2)->name,
                    i % 2 == 0 ? "A" : "B");
}

/* The tensors m:parameters() lists: [first, last) in push_param's numbering. */
static void trainable_range(dpo_llama *m, int all, int *first, int *last) {
    int nb = dpo_llama_num_tensors(m);
    dpo_lora *lo = dpo_llama_lora(m);
    *first = lo && !all ? nb : 0;
    *last = nb + (lo ? 2 * dpo_lora_num_sites(lo) : 0);
}

/* m:parameters() -> list of the trainable tensors: all in the model's order, or the adapters */
static int l_parameters(lua_State *L) {
    dpo_llama *m = checkllama(L, 1);
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
    dpo_llama *m = checkllama(L, 1);
    int all = lua_toboolean(L, 2), nb = dpo_llama_num_tensors(m), first, last;
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
            lua_pushboolean(L, dpo_llama_frozen(m) || (i < nb && !dpo_llama_base_trainable(m)));
            lua_rawseti(L, -2, 3);
        }
        lua_rawseti(L, -3, i - first + 1);
    }
    return 2;
}

static int l_num_params(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_llama_num_params(checkllama(L, 1)));
    return 1;
}

/*
** m:config() -> the engine's settings under Hugging Face's names (as
** llama_new takes them), plus GPT-2's n_ctx, n_layer, n_head, n_embd and
** model_type "llama", so code written for dpo.GPT reads the same fields.
*/
static int l_config(lua_State *L) {
    const dpo_llama_config *c = dpo_llama_cfg(checkllama(L, 1));
#define SETI(k, v) (lua_pushinteger(L, (v)), lua_setfield(L, -2, k))
#define SETN(k, v) (lua_pushnumber(L, (v)), lua_setfield(L, -2, k))
#define SETB(k, v) (lua_pushboolean(L, (v)), lua_setfield(L, -2, k))
    lua_createtable(L, 0, 28);
    SETI("vocab_size", c->vocab_size);
    SETI("hidden_size", c->hidden_size);
    SETI("intermediate_size", c->intermediate_size);
    SETI("num_hidden_layers", c->n_layer);
    SETI("num_attention_heads", c->n_head);
    SETI("num_key_value_heads", c->n_kv_head);
    SETI("head_dim", c->head_dim);
    SETI("max_position_embeddings", c->n_ctx);
    SETI("sliding_window", c->sliding_window);
    SETN("rms_norm_eps", c->rms_eps);
    SETN("rope_theta", c->rope_theta);
    lua_pushstring(L, rope_names[c->rope_type]);
    lua_setfield(L, -2, "rope_type");
    SETN("rope_factor", c->rope_factor);
    SETN("low_freq_factor", c->rope_low_freq_factor);
    SETN("high_freq_factor", c->rope_high_freq_factor);
    SETI("original_max_position_embeddings", c->rope_original_ctx);
    SETB("tie_word_embeddings", c->tie_embeddings);
    SETB("qkv_bias", c->qkv_bias);
    SETB("o_bias", c->o_bias);
    SETB("mlp_bias", c->mlp_bias);
    SETB("qk_norm", c->qk_norm);
    SETI("n_ctx", c->n_ctx);
    SETI("n_layer", c->n_layer);
    SETI("n_head", c->n_head);
    SETI("n_embd", c->hidden_size);
    SETN("dropout", 0);
#undef SETI
#undef SETN
#undef SETB
    return 1;
}

/* m:clone([freeze=false]) -> a new model with the same parameters */
static int l_clone(lua_State *L) {
    dpo_llama *m = checkllama(L, 1);
    dpo_error e;
    pushllama(L, dpo_llama_clone(m, lua_toboolean(L, 2), &e), &e);
    return 1;
}

static int l_freeze(lua_State *L) {
    dpo_llama_freeze(checkllama(L, 1));
    dpo_llama_set_training(checkllama(L, 1), 0);
    lua_settop(L, 1);
    return 1;
}

static int l_is_frozen(lua_State *L) {
    lua_pushboolean(L, dpo_llama_frozen(checkllama(L, 1)));
    return 1;
}

/*
** m:lora_apply{r=8, alpha=r, dropout=0, use_rslora=false, seed=0,
**              target_modules={...} | "all-linear" (nil: all)} -> m
** Adapters on the matching linear modules; the base freezes.
*/
static int l_lora_apply(lua_State *L) {
    static const char *const fn = "lora_apply";
    dpo_llama *m = checkllama(L, 1);
    dpo_lora_config c;
    dpo_error e;
    const char **targets;
    int n = dpo_l_lora_options(L, 2, fn, &c, &targets);
    if (dpo_llama_lora_apply(m, &c, n, targets, &e) != DPO_OK)
        return luaL_error(L, "%s: %s", fn, e.msg);
    lua_settop(L, 1);
    return 1;
}

/*
** m:lora() -> nil, or {r, alpha, dropout, use_rslora, scale, enabled,
** fan_in_fan_out (false: Linear weights [out, in]), num_params, modules}
*/
static int l_lora(lua_State *L) {
    dpo_lora *lo = dpo_llama_lora(checkllama(L, 1));
    if (lo)
        dpo_l_push_lora(L, lo, 0 /* Linear weights [out, in] */);
    else
        lua_pushnil(L);
    return 1;
}

/* m:lora_enable(on) -> whether they were on: the adapters switched on or off */
static int l_lora_enable(lua_State *L) {
    dpo_lora *lo = dpo_llama_lora(checkllama(L, 1));
    luaL_checkany(L, 2);
    if (!lo) return luaL_error(L, "lora_enable: the model has no adapters");
    lua_pushboolean(L, dpo_lora_enabled(lo));
    dpo_lora_set_enabled(lo, lua_toboolean(L, 2));
    return 1;
}

/* m:lora_merge() -> m: adapters folded into the base weights, which train again */
static int l_lora_merge(lua_State *L) {
    dpo_error e;
    if (dpo_llama_lora_merge(checkllama(L, 1), &e) != DPO_OK)
        return luaL_error(L, "lora_merge: %s", e.msg);
    lua_settop(L, 1);
    return 1;
}

/*
** m:base_hash() -> "crc32:xxxxxxxx-adler32:xxxxxxxx": checksums (zlib's) of
** the architecture's sizes and the base weights' bytes, not the adapters: a
** LoRA checkpoint names the base it was trained on.
*/
static int l_base_hash(lua_State *L) {
    dpo_llama *m = checkllama(L, 1);
    const dpo_llama_config *c = dpo_llama_cfg(m);
    int dims[13] = {
        c->vocab_size, c->hidden_size, c->intermediate_size, c->n_layer,  c->n_head, c->n_kv_head,
        c->head_dim,   c->n_ctx,       c->tie_embeddings,    c->qkv_bias, c->o_bias, c->mlp_bias,
        c->qk_norm};
    const unsigned char *p = (const unsigned char *)dpo_llama_params(m);
    size_t n = dpo_llama_num_params(m) * sizeof(float);
    uLong crc = crc32(0L, (const Bytef *)dims, sizeof dims),
          ad = adler32(1L, (const Bytef *)dims, sizeof dims);
    char buf[48];
    while (n > 0) { /* zlib takes uInt lengths */
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, p, k);
        ad = adler32(ad, p, k);
        p += k, n -= k;
    }
    snprintf(buf, sizeof buf, "crc32:%08x-adler32:%08x", (unsigned)crc, (unsigned)ad);
    lua_pushstring(L, buf);
    return 1;
}

static int l_train(lua_State *L) {
    dpo_llama_set_training(checkllama(L, 1), lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2));
    lua_settop(L, 1);
    return 1;
}

static int l_eval(lua_State *L) {
    dpo_llama_set_training(checkllama(L, 1), 0);
    lua_settop(L, 1);
    return 1;
}

static int l_is_training(lua_State *L) {
    lua_pushboolean(L, dpo_llama_training(checkllama(L, 1)));
    return 1;
}

static int l_seed_dropout(lua_State *L) {
    dpo_rng_seed(dpo_llama_dropout_rng(checkllama(L, 1)), (uint64_t)luaL_checkinteger(L, 2));
    return 0;
}

/* m:dropout_state() / m:set_dropout_state(s): as dpo.GPT's (the same bytes). */
static int l_dropout_state(lua_State *L) {
    dpo_rng *r = dpo_llama_dropout_rng(checkllama(L, 1));
    uint64_t w[6] = {r->s[0], r->s[1], r->s[2], r->s[3], r->seed, (uint64_t)(r->has_spare != 0)};
    char buf[sizeof w + sizeof r->spare];
    memcpy(buf, w, sizeof w);
    memcpy(buf + sizeof w, &r->spare, sizeof r->spare);
    lua_pushlstring(L, buf, sizeof buf);
    return 1;
}

static int l_set_dropout_state(lua_State *L) {
    dpo_llama *m = checkllama(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    uint64_t w[6];
    dpo_rng *r;
    luaL_argcheck(L, n == sizeof w + sizeof(double), 2, "not a state from m:dropout_state()");
    memcpy(w, s, sizeof w);
    luaL_argcheck(L, (w[0] | w[1] | w[2] | w[3]) != 0 && w[5] <= 1, 2,
                  "not a state from m:dropout_state()");
    r = dpo_llama_dropout_rng(m);
    r->s[0] = w[0], r->s[1] = w[1], r->s[2] = w[2], r->s[3] = w[3];
    r->seed = w[4];
    r->has_spare = (int)w[5];
    memcpy(&r->spare, s + sizeof w, sizeof r->spare);
    return 0;
}

static int l_zero_grad(lua_State *L) {
    dpo_llama *m = checkllama(L, 1);
    dpo_error e;
    dpo_lora *lo = dpo_llama_lora(m);
    for (int i = 0; i < dpo_llama_num_tensors(m); i++) {
        dpo_tensor *g = dpo_llama_param_tensor(m, i, 1, &e);
        if (!g) break;
        dpo_tensor_fill(g, 0);
        dpo_tensor_release(g);
    }
    if (lo && dpo_lora_grads(lo))
        memset(dpo_lora_grads(lo), 0, dpo_lora_num_params(lo) * sizeof(float));
    lua_settop(L, 1);
    return 1;
}

/* m:logps(ids, mask) -> logps [N] (autograd unless frozen or under no_grad), counts [N] */
static int l_logps(lua_State *L) {
    dpo_llama *m = checkllama(L, 1);
    dpo_tensor *ids = dpo_l_checktensor(L, 2), *mask = dpo_l_checktensor(L, 3), *counts = NULL;
    dpo_error e;
    dpo_tensor *lp = dpo_llama_logps(m, ids, mask, dpo_grad_enabled(), &counts, &e);
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
        lua_Integer len = luaL_len(L, i);
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
    dpo_llama *m = checkllama(L, 1);
    int n;
    int32_t *ids = check_ids(L, 2, &n);
    int64_t V = dpo_llama_cfg(m)->vocab_size;
    dpo_error e;
    dpo_tensor *out = dpo_tensor_new(DPO_F32, 1, &V, &e);
    dpo_l_pushtensor(L, out, &e, 0);
    if (dpo_llama_next_logits(m, ids, n, dpo_f32(out), &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    return 1;
}

/* m:generate(ids, opts) -> new ids, int32 [n]; the options of dpo.GPT's generate */
static int l_generate(lua_State *L) {
    static const char *const known[] = {"max_new_tokens", "temperature", "top_k",     "top_p",
                                        "seed",           "stop_ids",    "use_cache", NULL};
    dpo_llama *m = checkllama(L, 1);
    dpo_gen_opts o = {32, 0.0, 0, 1.0, 0, NULL, 0, 1};
    int n, nout;
    int32_t *ids = check_ids(L, 2, &n), *out, stop1;
    dpo_error e;
    dpo_tensor *t;
    int64_t len;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        dpo_l_check_keys(L, 3, "generate", known);
        lua_getfield(L, 3, "max_new_tokens");
        if (!lua_isnil(L, -1)) {
            int isint;
            lua_Integer v = lua_tointegerx(L, -1, &isint);
            if (!isint || v < 0 || v > 2147483647)
                return luaL_error(L, "generate: option 'max_new_tokens' must be a non-negative "
                                     "integer");
            o.max_new_tokens = (int)v;
        }
        lua_pop(L, 1);
        o.temperature = dpo_l_numfield(L, 3, "generate", "temperature", 0.0);
        lua_getfield(L, 3, "top_k");
        if (!lua_isnil(L, -1)) {
            int isint;
            lua_Integer v = lua_tointegerx(L, -1, &isint);
            if (!isint || v < 0 || v > 2147483647)
                return luaL_error(L, "generate: option 'top_k' must be a non-negative integer");
            o.top_k = (int)v;
        }
        lua_pop(L, 1);
        o.top_p = dpo_l_numfield(L, 3, "generate", "top_p", 1.0);
        lua_getfield(L, 3, "seed");
        if (!lua_isnil(L, -1)) o.seed = (uint64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
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
    out = dpo_llama_generate(m, ids, n, &o, &nout, &e);
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

int dpo_open_llama(lua_State *L) {
    luaL_newmetatable(L, LLAMA_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__index");
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__methods");
    lua_setfield(L, -3, "Llama"); /* core.Llama = methods, for lua/dpo/model.lua to extend */
    lua_pop(L, 1);
    lua_pushcfunction(L, l_llama_new);
    lua_setfield(L, -2, "llama_new");
    return 0;
}
