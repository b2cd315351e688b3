/*
** l_bpe.c: the Lua face of tokenizers, metatable "dpo.Tokenizer".
**
** A userdata holds one pointer to a dpo_bpe (core/text/bpe.c); it is created
** empty before the engine allocates, so an error never leaks one, and __gc
** (or `:free()`, or `<close>`) frees it. Ids are the 0-based ids of the
** vocabulary, as Hugging Face numbers them; encode gives an int32 tensor.
** The constructors live in `dpo.core.tokenizer`; lua/dpo/tokenizer.lua
** builds the user's `dpo.tokenizer` on them.
*/
#include "text/bpe.h"
#include "bind/l_util.h"

#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DPO_TOKENIZER_MT "dpo.Tokenizer"
#define IDS_BOX_MT       "dpo.TokenizerIds"

/* ---- boxes ------------------------------------------------------------------------- */

/* A new, empty tokenizer userdata on the stack. */
static dpo_bpe **newbox(lua_State *L) {
    dpo_bpe **p = (dpo_bpe **)lua_newuserdatauv(L, sizeof(dpo_bpe *), 0);
    *p = NULL;
    luaL_setmetatable(L, DPO_TOKENIZER_MT);
    return p;
}

/* Fill the box on top of the stack with t, or raise e. */
static int fill(lua_State *L, dpo_bpe **box, dpo_bpe *t, const dpo_error *e, int argbase) {
    if (!t) return dpo_l_raise(L, e, argbase);
    *box = t;
    return 1;
}

static dpo_bpe *check(lua_State *L, int i) {
    dpo_bpe **p = (dpo_bpe **)luaL_checkudata(L, i, DPO_TOKENIZER_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a freed dpo.Tokenizer");
    return *p;
}

/* n id lists owned by a collectable userdata, so a raise frees them. */
typedef struct {
    size_t n;
    dpo_bpe_ids v[1];
} ids_box;

static int ids_box_gc(lua_State *L) {
    ids_box *b = (ids_box *)luaL_checkudata(L, 1, IDS_BOX_MT);
    for (size_t k = 0; k < b->n; k++) dpo_bpe_ids_free(&b->v[k]);
    b->n = 0;
    return 0;
}

static ids_box *new_ids_box(lua_State *L, size_t n) {
    ids_box *b;
    if (n > (SIZE_MAX - sizeof *b) / sizeof(dpo_bpe_ids)) luaL_error(L, "too many texts");
    b = (ids_box *)lua_newuserdatauv(L, sizeof *b + n * sizeof(dpo_bpe_ids), 0);
    memset(b, 0, sizeof *b + n * sizeof(dpo_bpe_ids));
    luaL_setmetatable(L, IDS_BOX_MT);
    b->n = n > 0 ? n : 1;
    return b;
}

/* Push ids as an int32 tensor and release them. */
static void push_ids(lua_State *L, dpo_bpe_ids *v) {
    int64_t n = (int64_t)v->n;
    dpo_error e;
    dpo_tensor *t = dpo_tensor_new(DPO_I32, 1, &n, &e);
    if (t && n) memcpy(dpo_i32(t), v->ids, v->n * sizeof *v->ids);
    dpo_bpe_ids_free(v);
    dpo_l_pushtensor(L, t, &e, 0);
}

/* `special` of an options table at index i (default 1). */
static int opt_flag(lua_State *L, int i, const char *key, int def) {
    int v = def;
    if (lua_isnoneornil(L, i)) return def;
    luaL_checktype(L, i, LUA_TTABLE);
    if (lua_getfield(L, i, key) != LUA_TNIL) v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A path argument: a string without zero bytes (the engine takes C strings). */
static const char *checkpath(lua_State *L, int i) {
    size_t len;
    const char *s = luaL_checklstring(L, i, &len);
    if (strlen(s) != len) luaL_argerror(L, i, "path contains a zero byte");
    return s;
}

/* ---- constructors ------------------------------------------------------------------- */

/* tokenizer.load(path): a tokenizer.json file or a directory. */
static int l_load(lua_State *L) {
    const char *path = checkpath(L, 1);
    dpo_bpe **box = newbox(L);
    dpo_error e;
    return fill(L, box, dpo_bpe_load(path, &e), &e, 1);
}

/* tokenizer.from_files(vocab_json, merges_txt): GPT-2's two files. */
static int l_from_files(lua_State *L) {
    const char *v = checkpath(L, 1), *m = checkpath(L, 2);
    dpo_bpe **box = newbox(L);
    dpo_error e;
    return fill(L, box, dpo_bpe_load_gpt2(v, m, &e), &e, 1);
}

static int l_bytes(lua_State *L) {
    dpo_bpe **box = newbox(L);
    dpo_error e;
    return fill(L, box, dpo_bpe_bytes(&e), &e, 0);
}

/* The strings of the list at index i, into a collectable array; *n its length. */
static const char **string_list(lua_State *L, int i, size_t **lens, size_t *n, const char *what) {
    lua_Integer len = luaL_len(L, i);
    const char **s;
    if (len < 0 || (lua_Unsigned)len > SIZE_MAX / 32) luaL_argerror(L, i, "too many items");
    *n = (size_t)len;
    s = (const char **)lua_newuserdatauv(L, (*n + 1) * (sizeof *s + sizeof **lens), 0);
    *lens = (size_t *)(s + *n + 1);
    for (lua_Integer k = 1; k <= len; k++) {
        if (lua_geti(L, i, k) != LUA_TSTRING)
            luaL_argerror(L, i,
                          lua_pushfstring(L, "%s %d is a %s, not a string", what, (int)k,
                                          luaL_typename(L, -1)));
        s[k - 1] = lua_tolstring(L, -1, &(*lens)[k - 1]); /* the table keeps it alive */
        lua_pop(L, 1);
    }
    return s;
}

/*
** tokenizer.train(texts, paths, vocab_size, min_frequency, special_tokens):
** the checked arguments of dpo.tokenizer.train.
*/
static int l_train(lua_State *L) {
    dpo_bpe_corpus c = {0};
    dpo_bpe_train_opts o = {0};
    size_t *tl, *pl, *sl, ns;
    lua_Integer vs, mf;
    dpo_bpe **box;
    dpo_error e;
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    vs = luaL_checkinteger(L, 3);
    mf = luaL_checkinteger(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_argcheck(L, vs >= 0 && vs <= INT32_MAX, 3, "vocab_size out of range");
    luaL_argcheck(L, mf >= 0, 4, "min_frequency must not be negative");
    c.texts = string_list(L, 1, &tl, &c.ntexts, "text");
    c.lens = tl;
    c.paths = string_list(L, 2, &pl, &c.npaths, "path");
    o.special = string_list(L, 5, &sl, &ns, "special token");
    luaL_argcheck(L, ns <= 4096, 5, "at most 4096 special tokens");
    for (size_t k = 0; k < ns; k++)
        if (strlen(o.special[k]) != sl[k])
            luaL_argerror(L, 5,
                          lua_pushfstring(L, "special token %d holds a NUL byte", (int)k + 1));
    for (size_t k = 0; k < c.npaths; k++)
        if (strlen(c.paths[k]) != pl[k])
            luaL_argerror(L, 2, lua_pushfstring(L, "path %d holds a NUL byte", (int)k + 1));
    o.nspecial = (int)ns;
    o.vocab_size = (int32_t)vs;
    o.min_frequency = mf;
    box = newbox(L);
    return fill(L, box, dpo_bpe_train(&c, &o, &e), &e, 0);
}

/* tokenizer.pretokenize(text) -> the pieces of GPT-2's pattern. */
static int l_pretokenize(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_Integer k = 1;
    lua_newtable(L);
    for (size_t i = 0; i < n;) {
        size_t j = dpo_bpe_next_piece(s, n, i);
        lua_pushlstring(L, s + i, j - i);
        lua_rawseti(L, -2, k++);
        i = j;
    }
    return 1;
}

/* ---- methods ------------------------------------------------------------------------ */

/* encode's options at index i: special (match added tokens, default true)
** and add_special_tokens (the post-processor's tokens, default true). */
static int encode_flags(lua_State *L, int i) {
    return (opt_flag(L, i, "special", 1) ? DPO_BPE_SPECIAL : 0) |
           (opt_flag(L, i, "add_special_tokens", 1) ? DPO_BPE_ADD_SPECIAL : 0);
}

/* tok:encode(text [, {special = true, add_special_tokens = true}]) -> int32 tensor */
static int l_encode(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    int special = encode_flags(L, 3);
    ids_box *b = new_ids_box(L, 1);
    dpo_error e;
    if (dpo_bpe_encode(t, s, n, special, &b->v[0], &e) != DPO_OK) return dpo_l_raise(L, &e, 0);
    push_ids(L, &b->v[0]);
    return 1;
}

/* tok:encode_batch(texts [, opts]) -> {tensor, ...}, the texts spread over threads */
static int l_encode_batch(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    size_t n, *lens;
    const char **texts;
    int special;
    ids_box *b;
    dpo_error e;
    luaL_checktype(L, 2, LUA_TTABLE);
    special = encode_flags(L, 3);
    texts = string_list(L, 2, &lens, &n, "text");
    b = new_ids_box(L, n);
    if (n && dpo_bpe_encode_batch(t, n, texts, lens, special, b->v, &e) != DPO_OK)
        return dpo_l_raise(L, &e, 0);
    lua_createtable(L, (int)(n < INT32_MAX ? n : INT32_MAX), 0);
    for (size_t k = 0; k < n; k++) {
        push_ids(L, &b->v[k]);
        lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    return 1;
}

/* The ids at index i (a tensor of integral values or a list of integers),
** into a collectable int32 array; *n their number. */
static int32_t *check_ids(lua_State *L, int i, size_t *n) {
    dpo_tensor *t = dpo_l_totensor(L, i);
    int32_t *ids;
    if (t) {
        int64_t m = dpo_tensor_numel(t);
        *n = (size_t)m;
        ids = (int32_t *)lua_newuserdatauv(L, (*n + 1) * sizeof *ids, 0);
        if (t->dtype == DPO_I32) {
            dpo_tensor_pack(t, ids);
            return ids;
        }
        for (int64_t k = 0; k < m; k++) {
            double v = dpo_tensor_get(t, k);
            if (!(v == floor(v) && v >= INT32_MIN && v <= INT32_MAX))
                luaL_argerror(L, i,
                              lua_pushfstring(L, "element %d (%f) is not an id", (int)k + 1, v));
            ids[k] = (int32_t)v;
        }
        return ids;
    }
    if (lua_type(L, i) != LUA_TTABLE)
        luaL_argerror(L, i,
                      lua_pushfstring(L, "a dpo.Tensor or a table of ids expected, got %s",
                                      luaL_typename(L, i)));
    {
        lua_Integer len = luaL_len(L, i); /* a __len may say anything */
        luaL_argcheck(L, len >= 0 && len <= INT32_MAX, i, "too many ids");
        *n = (size_t)len;
    }
    ids = (int32_t *)lua_newuserdatauv(L, (*n + 1) * sizeof *ids, 0);
    for (size_t k = 0; k < *n; k++) {
        int isint;
        lua_Integer v;
        lua_geti(L, i, (lua_Integer)k + 1);
        v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < INT32_MIN || v > INT32_MAX)
            luaL_argerror(L, i,
                          lua_pushfstring(L, "item %d (%s) is not an id", (int)k + 1,
                                          luaL_tolstring(L, -1, NULL)));
        ids[k] = (int32_t)v;
        lua_pop(L, 1);
    }
    return ids;
}

/* tok:decode(ids [, {skip_special = false}]) -> string */
static int l_decode(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    size_t n, len;
    int skip = opt_flag(L, 3, "skip_special", 0);
    int32_t *ids = check_ids(L, 2, &n);
    dpo_error e;
    char *s = dpo_bpe_decode(t, ids, n, skip, &len, &e);
    if (!s) return dpo_l_raise(L, &e, 2);
    lua_pushlstring(L, s, len); /* may raise: s is lost only when Lua itself is out of memory */
    free(s);
    return 1;
}

static int l_vocab_size(lua_State *L) {
    lua_pushinteger(L, dpo_bpe_vocab_size(check(L, 1)));
    return 1;
}

static int l_token_to_id(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    int32_t id = dpo_bpe_token_to_id(t, s, n);
    if (id < 0)
        luaL_pushfail(L);
    else
        lua_pushinteger(L, id);
    return 1;
}

static int l_id_to_token(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    lua_Integer id = luaL_checkinteger(L, 2);
    size_t n;
    const char *s = (id >= 0 && id < INT32_MAX) ? dpo_bpe_id_to_token(t, (int32_t)id, &n) : NULL;
    if (!s)
        luaL_pushfail(L);
    else
        lua_pushlstring(L, s, n);
    return 1;
}

/* tok:special_tokens() -> {content = id} of the special added tokens */
static int l_special_tokens(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    lua_newtable(L);
    for (int k = 0; k < dpo_bpe_num_added(t); k++) {
        int special;
        int32_t id = dpo_bpe_added(t, k, &special);
        size_t n;
        const char *s = dpo_bpe_id_to_token(t, id, &n);
        if (!special || !s) continue;
        lua_pushlstring(L, s, n);
        lua_pushinteger(L, id);
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_save(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    const char *path = checkpath(L, 2);
    dpo_error e;
    if (dpo_bpe_save(t, path, &e) != DPO_OK) return dpo_l_raise(L, &e, 0);
    lua_settop(L, 1);
    return 1;
}

static int l_gc(lua_State *L) {
    dpo_bpe **p = (dpo_bpe **)luaL_checkudata(L, 1, DPO_TOKENIZER_MT);
    dpo_bpe_free(*p);
    *p = NULL;
    return 0;
}

static int l_tostring(lua_State *L) {
    dpo_bpe **p = (dpo_bpe **)luaL_checkudata(L, 1, DPO_TOKENIZER_MT);
    luaL_Buffer b;
    int shown = 0;
    if (!*p) {
        lua_pushliteral(L, "dpo.Tokenizer (freed)");
        return 1;
    }
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "dpo.Tokenizer (%s: %d tokens, %d merges",
                    dpo_bpe_byte_level(*p) ? "byte-level BPE" : "BPE", (int)dpo_bpe_vocab_size(*p),
                    (int)dpo_bpe_num_merges(*p));
    luaL_addvalue(&b);
    for (int k = 0; k < dpo_bpe_num_added(*p) && shown < 8; k++) {
        int special;
        int32_t id = dpo_bpe_added(*p, k, &special);
        size_t n;
        const char *s = dpo_bpe_id_to_token(*p, id, &n);
        if (!special || !s) continue;
        luaL_addstring(&b, shown++ ? ", " : "; special ");
        luaL_addlstring(&b, s, n < 40 ? n : 40);
        lua_pushfstring(L, "=%d", (int)id);
        luaL_addvalue(&b);
    }
    luaL_addchar(&b, ')');
    luaL_pushresult(&b);
    return 1;
}

/* The fields eos_id, bos_id, pad_id, unk_id: the role's id, -1 when the key is none. */
static int role_of(lua_State *L, int i) {
    static const char *const keys[] = {"eos_id", "bos_id", "pad_id", "unk_id"};
    const char *k = lua_type(L, i) == LUA_TSTRING ? lua_tostring(L, i) : NULL;
    for (int r = 0; k && r < DPO_BPE_NROLES; r++)
        if (strcmp(k, keys[r]) == 0) return r;
    return -1;
}

static int l_index(lua_State *L) {
    int r = role_of(L, 2);
    if (r >= 0) {
        int32_t id = dpo_bpe_role_id(check(L, 1), (dpo_bpe_role)r);
        if (id < 0) return 0;
        lua_pushinteger(L, id);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

/* tok.pad_id = id (or nil): roles may be set; nothing else. */
static int l_newindex(lua_State *L) {
    dpo_bpe *t = check(L, 1);
    int r = role_of(L, 2);
    lua_Integer id = -1;
    dpo_error e;
    if (r < 0)
        return luaL_error(L,
                          "dpo.Tokenizer has no field '%s' to set (only eos_id, bos_id, "
                          "pad_id, unk_id)",
                          luaL_tolstring(L, 2, NULL));
    if (!lua_isnil(L, 3)) {
        int isint;
        id = lua_tointegerx(L, 3, &isint);
        if (!isint || id < 0 || id >= INT32_MAX)
            return luaL_error(L, "dpo.Tokenizer.%s must be an id or nil, not %s",
                              lua_tostring(L, 2), luaL_tolstring(L, 3, NULL));
    }
    if (dpo_bpe_set_role(t, (dpo_bpe_role)r, (int32_t)id, &e) != DPO_OK)
        return luaL_error(L, "dpo.Tokenizer.%s: %s", lua_tostring(L, 2), e.msg);
    return 0;
}

/* ---- registration ------------------------------------------------------------------- */

static const luaL_Reg meta[] = {
    {"__gc", l_gc}, {"__close", l_gc}, {"__tostring", l_tostring}, {"__newindex", l_newindex},
    {NULL, NULL},
};

static const luaL_Reg methods[] = {
    {"decode", l_decode},
    {"encode", l_encode},
    {"encode_batch", l_encode_batch},
    {"free", l_gc},
    {"id_to_token", l_id_to_token},
    {"save", l_save},
    {"special_tokens", l_special_tokens},
    {"token_to_id", l_token_to_id},
    {"vocab_size", l_vocab_size},
    {NULL, NULL},
};

static const luaL_Reg functions[] = {
    {"bytes", l_bytes}, {"from_files", l_from_files},
    {"load", l_load},   {"pretokenize", l_pretokenize},
    {"train", l_train}, {NULL, NULL},
};

/* Fill the core table on top of the stack: core.tokenizer = {load, bytes, ...}. */
int dpo_open_bpe(lua_State *L) {
    if (luaL_newmetatable(L, IDS_BOX_MT)) {
        lua_pushcfunction(L, ids_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newmetatable(L, DPO_TOKENIZER_MT); /* core mt */
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods); /* core mt methods */
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__methods");
    lua_pushcclosure(L, l_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "tokenizer");
    return 0;
}
