/*
** l_data.c: the Lua face of the data engine (core/data/jsonl.c), `dpo.core.data`.
** lua/dpo/data.lua builds the user's `dpo.data` on these:
**
**   data.open(path) -> reader | nil, "path: reason"        metatable dpo.JsonlReader
**     r:read() -> line, lineno | nil (the end) | false, "reason", lineno
**     r:gzip() -> boolean; r:offset() -> bytes read; r:buffer_size() -> bytes held
**     r:close(), also by __close and __gc
**   data.writer(path, gzip) -> writer | nil, "path: reason"  metatable dpo.JsonlWriter
**     w:write(s, ...) -> w; w:commit() -> true | nil, "path: reason"; w:abort()
**     (__close and __gc abort a writer that was not committed)
**   data.pairs(pad_id) -> store                              metatable dpo.TokenPairs
**     s:add(prompts, chosens, rejecteds, opts) -> info
**         three lists of 1-D int32 tensors (one per pair, as tok:encode_batch
**         gives them); opts {max_length, max_prompt_length, truncation =
**         "keep_end" | "keep_start", eos_id, bos_id}. info is one flat list,
**         INFO_FIELDS integers per pair: fate (0 kept, 1 empty response,
**         2 empty prompt), row (1-based, 0 when dropped), the prompt, chosen
**         and rejected tokens kept, the same before truncation, prompt cut
**         (0/1), responses cut (0/1).
**     s:collate(rows [, sft]) -> ids, mask, prompt_lengths, response_lengths
**     s:part(row, part) -> int32 tensor (part 1 prompt, 2 chosen, 3 rejected)
**     #s, s:tokens(), s:pad_id()
**
** As in LuaFileSystem, a file that cannot be opened is nil and a message;
** misuse (wrong types, bad options, a row out of range) raises.
*/
#include "data/jsonl.h"
#include "bind/l_util.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#define READER_MT "dpo.JsonlReader"
#define WRITER_MT "dpo.JsonlWriter"
#define PAIRS_MT  "dpo.TokenPairs"

#define INFO_FIELDS 10

static const char *checkpath(lua_State *L, int i) {
    size_t len;
    const char *s = luaL_checklstring(L, i, &len);
    if (strlen(s) != len) luaL_argerror(L, i, "path contains a zero byte");
    return s;
}

/* ---- the reader ---------------------------------------------------------------------- */

static dpo_jsonl *checkreader(lua_State *L, int i) {
    dpo_jsonl **p = (dpo_jsonl **)luaL_checkudata(L, i, READER_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a closed dpo.JsonlReader");
    return *p;
}

/* data.open(path) -> reader | nil, "path: reason" */
static int l_open(lua_State *L) {
    const char *path = checkpath(L, 1);
    dpo_error e;
    dpo_jsonl **p = (dpo_jsonl **)lua_newuserdatauv(L, sizeof *p, 0);
    *p = NULL;
    luaL_setmetatable(L, READER_MT);
    if (!(*p = dpo_jsonl_open(path, &e))) {
        luaL_pushfail(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    return 1;
}

/* r:read() -> line, lineno | nil | false, reason, lineno */
static int l_read(lua_State *L) {
    dpo_jsonl *r = checkreader(L, 1);
    const char *s;
    size_t n;
    int64_t lineno;
    dpo_error e;
    int rc = dpo_jsonl_next(r, &s, &n, &lineno, &e);
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    if (rc < 0) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, e.msg);
        lua_pushinteger(L, (lua_Integer)lineno);
        return 3;
    }
    lua_pushlstring(L, s, n);
    lua_pushinteger(L, (lua_Integer)lineno);
    return 2;
}

static int l_reader_gzip(lua_State *L) {
    lua_pushboolean(L, dpo_jsonl_is_gzip(checkreader(L, 1)));
    return 1;
}

static int l_reader_offset(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_jsonl_offset(checkreader(L, 1)));
    return 1;
}

static int l_reader_buffer(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_jsonl_buffer_size(checkreader(L, 1)));
    return 1;
}

static int l_reader_close(lua_State *L) {
    dpo_jsonl **p = (dpo_jsonl **)luaL_checkudata(L, 1, READER_MT);
    dpo_jsonl_close(*p);
    *p = NULL;
    return 0;
}

static int l_reader_tostring(lua_State *L) {
    dpo_jsonl **p = (dpo_jsonl **)luaL_checkudata(L, 1, READER_MT);
    if (*p == NULL)
        lua_pushliteral(L, "dpo.JsonlReader (closed)");
    else
        lua_pushfstring(L, "dpo.JsonlReader (%s)", dpo_jsonl_is_gzip(*p) ? "gzip" : "plain");
    return 1;
}

static const luaL_Reg reader_meta[] = {
    {"__gc", l_reader_close},
    {"__close", l_reader_close},
    {"__tostring", l_reader_tostring},
    {NULL, NULL},
};

static const luaL_Reg reader_methods[] = {
    {"read", l_read},
    {"gzip", l_reader_gzip},
    {"offset", l_reader_offset},
    {"buffer_size", l_reader_buffer},
    {"close", l_reader_close},
    {NULL, NULL},
};

/* ---- the writer ---------------------------------------------------------------------- */

static dpo_jsonl_writer *checkwriter(lua_State *L, int i) {
    dpo_jsonl_writer **p = (dpo_jsonl_writer **)luaL_checkudata(L, i, WRITER_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a finished dpo.JsonlWriter");
    return *p;
}

/* data.writer(path, gzip) -> writer | nil, "path: reason" */
static int l_writer(lua_State *L) {
    const char *path = checkpath(L, 1);
    int gzip = lua_toboolean(L, 2);
    dpo_error e;
    dpo_jsonl_writer **p = (dpo_jsonl_writer **)lua_newuserdatauv(L, sizeof *p, 0);
    *p = NULL;
    luaL_setmetatable(L, WRITER_MT);
    if (!(*p = dpo_jsonl_writer_open(path, gzip, &e))) {
        luaL_pushfail(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    return 1;
}

/* w:write(s, ...) -> w */
static int l_write(lua_State *L) {
    dpo_jsonl_writer *w = checkwriter(L, 1);
    int top = lua_gettop(L);
    for (int i = 2; i <= top; i++) {
        size_t n;
        const char *s = luaL_checklstring(L, i, &n);
        dpo_jsonl_write(w, s, n);
    }
    lua_settop(L, 1);
    return 1;
}

/* w:commit() -> true | nil, "path: reason" */
static int l_commit(lua_State *L) {
    dpo_jsonl_writer **p = (dpo_jsonl_writer **)luaL_checkudata(L, 1, WRITER_MT);
    dpo_jsonl_writer *w = checkwriter(L, 1);
    dpo_error e;
    *p = NULL;
    if (dpo_jsonl_writer_commit(w, &e) != DPO_OK) {
        luaL_pushfail(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_abort(lua_State *L) {
    dpo_jsonl_writer **p = (dpo_jsonl_writer **)luaL_checkudata(L, 1, WRITER_MT);
    dpo_jsonl_writer_abort(*p);
    *p = NULL;
    return 0;
}

static const luaL_Reg writer_meta[] = {
    {"__gc", l_abort},
    {"__close", l_abort},
    {NULL, NULL},
};

static const luaL_Reg writer_methods[] = {
    {"write", l_write},
    {"commit", l_commit},
    {"abort", l_abort},
    {NULL, NULL},
};

/* ---- tokenized pairs ----------------------------------------------------------------- */

static dpo_pairs *checkpairs(lua_State *L, int i) {
    dpo_pairs **p = (dpo_pairs **)luaL_checkudata(L, i, PAIRS_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a freed dpo.TokenPairs");
    return *p;
}

/* An int32 id (or -1 for nil) from field k of the options table at index i. */
static int32_t opt_id(lua_State *L, int i, const char *k) {
    lua_Integer v;
    int isint;
    lua_getfield(L, i, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return -1;
    }
    v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || v > INT32_MAX)
        luaL_argerror(
            L, i,
            lua_pushfstring(L, "%s must be a token id, got %s", k, luaL_tolstring(L, -1, NULL)));
    lua_pop(L, 1);
    return (int32_t)v;
}

static int32_t opt_length(lua_State *L, int i, const char *k) {
    lua_Integer v;
    int isint;
    lua_getfield(L, i, k);
    v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 1 || v > INT32_MAX)
        luaL_argerror(L, i,
                      lua_pushfstring(L, "%s must be a positive integer, got %s", k,
                                      luaL_tolstring(L, -1, NULL)));
    lua_pop(L, 1);
    return (int32_t)v;
}

/* data.pairs(pad_id) -> an empty store */
static int l_pairs(lua_State *L) {
    lua_Integer pad = luaL_checkinteger(L, 1);
    dpo_error e;
    dpo_pairs **p;
    luaL_argcheck(L, pad >= 0 && pad <= INT32_MAX, 1, "pad id out of range");
    p = (dpo_pairs **)lua_newuserdatauv(L, sizeof *p, 0);
    *p = NULL;
    luaL_setmetatable(L, PAIRS_MT);
    if (!(*p = dpo_pairs_new((int32_t)pad, &e))) return dpo_l_raise(L, &e, 0);
    return 1;
}

/* The ids of element k of the list at index i: a 1-D int32 tensor. */
static const int32_t *list_ids(lua_State *L, int i, lua_Integer k, int32_t *n) {
    dpo_tensor *t;
    lua_rawgeti(L, i, k);
    t = dpo_l_totensor(L, -1);
    if (!t || t->dtype != DPO_I32 || t->ndim != 1 || t->stride[0] != 1 || t->shape[0] > INT32_MAX) {
        luaL_argerror(L, i,
                      lua_pushfstring(L, "element %I is not a contiguous 1-D int32 tensor", k));
    }
    lua_pop(L, 1); /* the list still holds the tensor */
    *n = (int32_t)t->shape[0];
    return dpo_i32(t);
}

/* s:add(prompts, chosens, rejecteds, opts) -> info (INFO_FIELDS integers per pair) */
static int l_add(lua_State *L) {
    dpo_pairs *s = checkpairs(L, 1);
    static const char *const modes[] = {"keep_end", "keep_start", NULL};
    lua_Integer n;
    dpo_pair_opts o;
    dpo_error e;
    for (int i = 2; i <= 4; i++) luaL_checktype(L, i, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    n = (lua_Integer)lua_rawlen(L, 2);
    luaL_argcheck(L, (lua_Integer)lua_rawlen(L, 3) == n && (lua_Integer)lua_rawlen(L, 4) == n, 3,
                  "the three lists differ in length");
    o.max_length = opt_length(L, 5, "max_length");
    o.max_prompt_length = opt_length(L, 5, "max_prompt_length");
    lua_getfield(L, 5, "truncation");
    o.truncation = luaL_checkoption(L, -1, "keep_end", modes) ? DPO_KEEP_START : DPO_KEEP_END;
    lua_pop(L, 1);
    o.eos_id = opt_id(L, 5, "eos_id");
    o.bos_id = opt_id(L, 5, "bos_id");
    luaL_argcheck(L, o.max_prompt_length < o.max_length, 5,
                  "max_prompt_length must be less than max_length");
    lua_createtable(L, (int)(n * INFO_FIELDS < INT32_MAX ? n * INFO_FIELDS : 0), 0);
    for (lua_Integer k = 1; k <= n; k++) {
        int32_t np, nc, nr;
        const int32_t *p = list_ids(L, 2, k, &np), *c = list_ids(L, 3, k, &nc),
                      *r = list_ids(L, 4, k, &nr);
        dpo_pair_info f;
        lua_Integer base = (k - 1) * INFO_FIELDS;
        lua_Integer v[INFO_FIELDS];
        if (dpo_pairs_add(s, p, np, c, nc, r, nr, &o, &f, &e) != DPO_OK)
            return dpo_l_raise(L, &e, 0);
        v[0] = f.fate;
        v[1] = f.row + 1;
        v[2] = f.np;
        v[3] = f.nc;
        v[4] = f.nr;
        v[5] = f.np_full;
        v[6] = f.nc_full;
        v[7] = f.nr_full;
        v[8] = f.prompt_cut;
        v[9] = f.response_cut;
        for (int j = 0; j < INFO_FIELDS; j++) {
            lua_pushinteger(L, v[j]);
            lua_rawseti(L, -2, base + j + 1);
        }
    }
    return 1;
}

/* s:collate(rows [, sft]) -> ids, mask, prompt_lengths, response_lengths */
static int l_collate(lua_State *L) {
    dpo_pairs *s = checkpairs(L, 1);
    int sft = lua_toboolean(L, 3);
    lua_Integer B;
    int64_t *rows;
    dpo_tensor *out[4], **box[4];
    dpo_error e;
    luaL_checktype(L, 2, LUA_TTABLE);
    B = (lua_Integer)lua_rawlen(L, 2);
    luaL_argcheck(L, B >= 1, 2, "a batch needs at least one row");
    rows = (int64_t *)lua_newuserdatauv(L, (size_t)B * sizeof *rows, 0);
    for (lua_Integer i = 1; i <= B; i++) {
        int isint;
        lua_Integer r;
        lua_rawgeti(L, 2, i);
        r = lua_tointegerx(L, -1, &isint);
        if (!isint || r < 1 || r > dpo_pairs_count(s))
            luaL_argerror(L, 2,
                          lua_pushfstring(L, "row %s out of range 1..%I",
                                          luaL_tolstring(L, -1, NULL),
                                          (lua_Integer)dpo_pairs_count(s)));
        lua_pop(L, 1);
        rows[i - 1] = r - 1;
    }
    /* the four results' userdatas exist before the tensors, so nothing leaks */
    for (int k = 0; k < 4; k++) {
        box[k] = (dpo_tensor **)lua_newuserdatauv(L, sizeof *box[k], 0);
        *box[k] = NULL;
        luaL_setmetatable(L, DPO_TENSOR_MT);
    }
    if (dpo_pairs_collate(s, rows, B, sft, &out[0], &out[1], &out[2], &out[3], &e) != DPO_OK)
        return dpo_l_raise(L, &e, 0);
    for (int k = 0; k < 4; k++) *box[k] = out[k];
    return 4;
}

/* s:part(row, part) -> int32 tensor of the row's prompt (1), chosen (2) or rejected (3) */
static int l_part(lua_State *L) {
    dpo_pairs *s = checkpairs(L, 1);
    lua_Integer k = luaL_checkinteger(L, 2), part = luaL_checkinteger(L, 3);
    int32_t n;
    int64_t len;
    const int32_t *ids;
    dpo_tensor *t;
    dpo_error e;
    luaL_argcheck(L, k >= 1 && k <= dpo_pairs_count(s), 2, "row out of range");
    luaL_argcheck(L, part >= 1 && part <= 3, 3, "part must be 1 (prompt), 2 or 3");
    ids = dpo_pairs_part(s, k - 1, (int)part - 1, &n);
    len = n;
    t = dpo_tensor_new(DPO_I32, 1, &len, &e);
    if (t && n) memcpy(dpo_i32(t), ids, (size_t)n * sizeof *ids);
    dpo_l_pushtensor(L, t, &e, 0);
    return 1;
}

static int l_pairs_len(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_pairs_count(checkpairs(L, 1)));
    return 1;
}

static int l_pairs_tokens(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_pairs_tokens(checkpairs(L, 1)));
    return 1;
}

static int l_pairs_pad(lua_State *L) {
    lua_pushinteger(L, dpo_pairs_pad_id(checkpairs(L, 1)));
    return 1;
}

static int l_pairs_gc(lua_State *L) {
    dpo_pairs **p = (dpo_pairs **)luaL_checkudata(L, 1, PAIRS_MT);
    dpo_pairs_free(*p);
    *p = NULL;
    return 0;
}

static int l_pairs_tostring(lua_State *L) {
    dpo_pairs **p = (dpo_pairs **)luaL_checkudata(L, 1, PAIRS_MT);
    if (*p == NULL)
        lua_pushliteral(L, "dpo.TokenPairs (freed)");
    else
        lua_pushfstring(L, "dpo.TokenPairs (%I pairs, %I tokens)", (lua_Integer)dpo_pairs_count(*p),
                        (lua_Integer)dpo_pairs_tokens(*p));
    return 1;
}

static const luaL_Reg pairs_meta[] = {
    {"__gc", l_pairs_gc},
    {"__len", l_pairs_len},
    {"__tostring", l_pairs_tostring},
    {NULL, NULL},
};

static const luaL_Reg pairs_methods[] = {
    {"add", l_add},          {"collate", l_collate}, {"part", l_part}, {"tokens", l_pairs_tokens},
    {"pad_id", l_pairs_pad}, {NULL, NULL},
};

/* ---- registration -------------------------------------------------------------------- */

static const luaL_Reg functions[] = {
    {"open", l_open},
    {"writer", l_writer},
    {"pairs", l_pairs},
    {NULL, NULL},
};

static void newclass(lua_State *L, const char *name, const luaL_Reg *meta,
                     const luaL_Reg *methods) {
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* Fill the core table on top of the stack: core.data = {open, writer, pairs}. */
int dpo_open_data(lua_State *L) {
    newclass(L, READER_MT, reader_meta, reader_methods);
    newclass(L, WRITER_MT, writer_meta, writer_methods);
    newclass(L, PAIRS_MT, pairs_meta, pairs_methods);
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "data");
    return 0;
}
