/*
** l_io.c: the Lua face of safetensors files (core/data/safetensors.c).
**
**   dpo.save(path, {name = tensor, ...} [, metadata [, {dtype = "float32"}]])
**       -> true | nil, "path: reason"; dtype "bfloat16" or "float16" stores
**       float32 tensors rounded to nearest even
**   dpo.load(path) -> tensors, metadata | nil, "path: reason"
**   dpo.open_safetensors(path) -> reader | nil, "path: reason"
**       reader:entries() -> {{name =, dtype = "BF16", shape = {...}}, ...} in
**       name order; reader:read(name, tensor) converts one tensor of the file
**       into tensor (float32 or int32 as it loads, of its exact shape) and
**       gives back the file's memory it used; reader:close() (also __close).
**
** As in LuaFileSystem, environmental failures (a missing directory, a full
** disk, a missing or malformed file) return nil and a message naming the
** file; misuse (a path that is not a string, a value that is not a tensor, a
** name that is not a non-empty string, metadata that is not strings) raises.
** Metadata values may be numbers, saved as tostring gives them; loaded
** metadata is always a table of strings (empty when the file has none).
*/
#include "bind/l_util.h"
#include "base/io.h"
#include "data/safetensors.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#define ST_FILE_MT   "dpo.SafetensorsFile"
#define ST_READER_MT "dpo.SafetensorsReader"

/* A string argument without embedded zeros (the engine takes C strings). */
static const char *checkpath(lua_State *L, int i) {
    size_t len;
    const char *s = luaL_checklstring(L, i, &len);
    if (strlen(s) != len) luaL_argerror(L, i, "path contains a zero byte");
    return s;
}

/*
** The string at stack index k, a key (key == NULL) or a value (of key) of the
** table at argument arg: a string without zero bytes. `what` names one
** ("tensor name", "metadata key", "metadata value").
*/
static const char *checkname(lua_State *L, int k, int arg, const char *what, const char *key) {
    size_t len;
    const char *s;
    if (lua_type(L, k) != LUA_TSTRING) {
        if (key)
            luaL_argerror(L, arg,
                          lua_pushfstring(L, "%s for '%s' is a %s (expected a string or number)",
                                          what, key, luaL_typename(L, k)));
        else
            luaL_argerror(
                L, arg,
                lua_pushfstring(L, "%ss must be strings, got a %s", what, luaL_typename(L, k)));
    }
    s = lua_tolstring(L, k, &len);
    if (strlen(s) != len)
        luaL_argerror(L, arg, lua_pushfstring(L, "%s '%s' contains a zero byte", what, s));
    return s;
}

static int count_pairs(lua_State *L, int t) {
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        n++;
        lua_pop(L, 1);
    }
    if (n > 0x7fffffff) luaL_argerror(L, t, "too many entries");
    return (int)n;
}

/*
** dpo.save(path, tensors [, metadata]): write a safetensors file atomically.
*/
static int l_save(lua_State *L) {
    const char *path = checkpath(L, 1);
    int n, nmeta = 0, i, conv;
    const char **names, **mk = NULL, **mv = NULL;
    dpo_tensor **ts;
    dpo_error e;
    dpo_status st;
    dpo_st_float as = DPO_ST_F32;
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    if (!lua_isnoneornil(L, 4)) {
        static const char *const dtypes[] = {"float32", "bfloat16", "float16", NULL};
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "dtype") != 0)
                luaL_argerror(L, 4, "unknown option (the only one is dtype)");
            lua_pop(L, 1);
        }
        lua_getfield(L, 4, "dtype");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_argerror(L, 4, "dtype must be \"float32\", \"bfloat16\" or \"float16\"");
            as = (dpo_st_float)luaL_checkoption(L, -1, NULL, dtypes);
        }
    }
    lua_settop(L, 3);

    /* Arrays live in userdata, so nothing leaks when a check raises. */
    n = count_pairs(L, 2);
    names = (const char **)lua_newuserdatauv(L, sizeof *names * ((size_t)n + 1), 0);
    ts = (dpo_tensor **)lua_newuserdatauv(L, sizeof *ts * ((size_t)n + 1), 0);
    i = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        const char *name = checkname(L, -2, 2, "tensor name", NULL);
        dpo_tensor **p;
        if (*name == '\0') luaL_argerror(L, 2, "tensor names must not be empty");
        if (strcmp(name, "__metadata__") == 0)
            luaL_argerror(L, 2, "the name '__metadata__' is reserved for the metadata");
        p = (dpo_tensor **)luaL_testudata(L, -1, DPO_TENSOR_MT);
        if (!p)
            luaL_argerror(L, 2,
                          lua_pushfstring(L, "value for '%s' is a %s, not a dpo.Tensor", name,
                                          luaL_typename(L, -1)));
        if (!*p) luaL_argerror(L, 2, lua_pushfstring(L, "tensor '%s' has been freed", name));
        names[i] = name; /* anchored as a key of argument 2 */
        ts[i] = *p;
        i++;
        lua_pop(L, 1);
    }

    lua_newtable(L); /* anchors the strings made from numbers */
    conv = lua_gettop(L);
    if (!lua_isnil(L, 3)) {
        nmeta = count_pairs(L, 3);
        mk = (const char **)lua_newuserdatauv(L, sizeof *mk * ((size_t)nmeta + 1), 0);
        mv = (const char **)lua_newuserdatauv(L, sizeof *mv * ((size_t)nmeta + 1), 0);
        i = 0;
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            const char *key = checkname(L, -2, 3, "metadata key", NULL);
            if (lua_type(L, -1) == LUA_TNUMBER) {
                luaL_tolstring(L, -1, NULL);
                lua_pushvalue(L, -1);
                lua_rawseti(L, conv, (lua_Integer)i + 1);
                lua_replace(L, -2);
            }
            mk[i] = key;
            mv[i] = checkname(L, -1, 3, "metadata value", key);
            i++;
            lua_pop(L, 1);
        }
    }

    st = dpo_st_save_as(path, n, names, (dpo_tensor *const *)ts, nmeta, mk, mv, as, &e);
    if (st == DPO_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (st == DPO_ERR_IO || st == DPO_ERR_MEM) {
        luaL_pushfail(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    /* engine operands: 1 path, 2 names, 3 tensors, 5 metadata keys, 6 values */
    if (e.arg >= 1) return luaL_argerror(L, e.arg == 1 ? 1 : e.arg <= 3 ? 2 : 3, e.msg);
    return luaL_error(L, "%s", e.msg);
}

static int file_gc(lua_State *L) {
    dpo_st_file **p = (dpo_st_file **)luaL_checkudata(L, 1, ST_FILE_MT);
    dpo_st_free(*p);
    *p = NULL;
    return 0;
}

/*
** dpo.load(path) -> {name = tensor, ...}, {key = value, ...}
*/
static int l_load(lua_State *L) {
    const char *path = checkpath(L, 1);
    dpo_st_file **box, *f;
    dpo_error e;
    /* The result is held by a collectable box until every tensor is pushed. */
    box = (dpo_st_file **)lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, ST_FILE_MT);
    f = *box = dpo_st_load(path, &e);
    if (!f) {
        if (e.status == DPO_ERR_ARG) return dpo_l_raise(L, &e, 1);
        luaL_pushfail(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    lua_createtable(L, 0, f->ntensors);
    for (int i = 0; i < f->ntensors; i++) {
        dpo_tensor *t = f->tensors[i];
        f->tensors[i] = NULL; /* the userdata takes the reference */
        dpo_l_pushtensor(L, t, &e, 0);
        lua_setfield(L, -2, f->names[i]);
    }
    lua_createtable(L, 0, f->nmeta);
    for (int i = 0; i < f->nmeta; i++) {
        lua_pushstring(L, f->meta_values[i]);
        lua_setfield(L, -2, f->meta_keys[i]);
    }
    dpo_st_free(f);
    *box = NULL;
    return 2;
}

/* ---- one tensor at a time ------------------------------------------------------ */

static dpo_st_reader *checkreader(lua_State *L) {
    dpo_st_reader **p = (dpo_st_reader **)luaL_checkudata(L, 1, ST_READER_MT);
    if (!*p) luaL_argerror(L, 1, "the file is closed");
    return *p;
}

/* dpo.open_safetensors(path) -> reader | nil, "path: reason" */
static int l_open(lua_State *L) {
    const char *path = checkpath(L, 1);
    dpo_st_reader **box;
    dpo_error e;
    box = (dpo_st_reader **)lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, ST_READER_MT);
    *box = dpo_st_open(path, &e);
    if (!*box) {
        if (e.status == DPO_ERR_ARG) return dpo_l_raise(L, &e, 1);
        luaL_pushfail(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    return 1;
}

/* reader:entries() -> {{name =, dtype =, shape = {...}}, ...} in name order */
static int reader_entries(lua_State *L) {
    dpo_st_reader *r = checkreader(L);
    int n = dpo_st_count(r);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        const dpo_st_info *in = dpo_st_info_at(r, i);
        lua_createtable(L, 0, 3);
        lua_pushstring(L, in->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, in->dtype);
        lua_setfield(L, -2, "dtype");
        lua_createtable(L, in->ndim, 0);
        for (int d = 0; d < in->ndim; d++) {
            lua_pushinteger(L, (lua_Integer)in->shape[d]);
            lua_rawseti(L, -2, d + 1);
        }
        lua_setfield(L, -2, "shape");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* reader:read(name, tensor) -> true: tensor i of the file converted into tensor */
static int reader_read(lua_State *L) {
    dpo_st_reader *r = checkreader(L);
    const char *name = luaL_checkstring(L, 2);
    dpo_tensor *dst = dpo_l_checktensor(L, 3);
    int i = dpo_st_index(r, name);
    dpo_error e;
    if (i < 0)
        return luaL_argerror(L, 2,
                             lua_pushfstring(L, "no tensor '%s' in %s", name, dpo_st_path(r)));
    if (dpo_st_read(r, i, dst, &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    lua_pushboolean(L, 1);
    return 1;
}

/* reader:close(), also __gc and __close: unmap the file; closing twice is fine */
static int reader_close(lua_State *L) {
    dpo_st_reader **p = (dpo_st_reader **)luaL_checkudata(L, 1, ST_READER_MT);
    dpo_st_close(*p);
    *p = NULL;
    return 0;
}

static const luaL_Reg reader_methods[] = {
    {"entries", reader_entries},
    {"read", reader_read},
    {"close", reader_close},
    {NULL, NULL},
};

static const luaL_Reg reader_meta[] = {
    {"__gc", reader_close},
    {"__close", reader_close},
    {NULL, NULL},
};

static const luaL_Reg file_meta[] = {
    {"__gc", file_gc},
    {"__close", file_gc},
    {NULL, NULL},
};

/* dpo.core.write_file(path, contents) -> true | nil, "path: reason"; atomic */
static int l_write_file(lua_State *L) {
    const char *path = checkpath(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    dpo_error e;
    if (dpo_write_file_atomic(path, data, n, &e) != DPO_OK) {
        if (e.status != DPO_ERR_IO && e.status != DPO_ERR_MEM) return dpo_l_raise(L, &e, 1);
        lua_pushnil(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*
** dpo.core.sync_dir(path) -> true | nil, "path: reason": fsync a directory,
** making the renames done in it durable (a checkpoint moved into place).
*/
static int l_sync_dir(lua_State *L) {
    const char *path = checkpath(L, 1);
    dpo_error e;
    if (dpo_sync_dir(path, &e) != DPO_OK) {
        lua_pushnil(L);
        lua_pushstring(L, e.msg);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg functions[] = {
    {"save", l_save},
    {"load", l_load},
    {"open_safetensors", l_open},
    {"sync_dir", l_sync_dir},
    {"write_file", l_write_file},
    {NULL, NULL},
};

int dpo_open_io(lua_State *L) {
    if (luaL_newmetatable(L, ST_FILE_MT)) luaL_setfuncs(L, file_meta, 0);
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ST_READER_MT)) {
        luaL_setfuncs(L, reader_meta, 0);
        luaL_newlib(L, reader_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
    return 0;
}
