/*
** l_util.c: shared binding helpers (see l_util.h).
*/
#include "bind/l_util.h"

#include <math.h>
#include <string.h>

int dpo_l_raise(lua_State *L, const dpo_error *e, int argbase) {
    if (e->arg > 0 && argbase > 0) return luaL_argerror(L, argbase + e->arg - 1, e->msg);
    return luaL_error(L, "%s", e->msg);
}

dpo_tensor *dpo_l_totensor(lua_State *L, int i) {
    dpo_tensor **p = (dpo_tensor **)luaL_testudata(L, i, DPO_TENSOR_MT);
    if (p && *p == NULL) luaL_argerror(L, i, "attempt to use a freed dpo.Tensor");
    return p ? *p : NULL;
}

dpo_tensor *dpo_l_checktensor(lua_State *L, int i) {
    dpo_tensor **p = (dpo_tensor **)luaL_checkudata(L, i, DPO_TENSOR_MT);
    if (*p == NULL) luaL_argerror(L, i, "attempt to use a freed dpo.Tensor");
    return *p;
}

void dpo_l_pushtensor(lua_State *L, dpo_tensor *t, const dpo_error *e, int argbase) {
    dpo_tensor **p;
    if (t == NULL) {
        dpo_l_raise(L, e, argbase);
        return;
    }
    p = (dpo_tensor **)lua_newuserdatauv(L, sizeof(dpo_tensor *), 0);
    *p = t;
    luaL_setmetatable(L, DPO_TENSOR_MT);
    /* The collector sees 8 bytes of userdata; tell it about the storage a new
       tensor brought, so garbage tensors are collected at the pace of their
       real size (a loop of temporaries stays flat in memory). */
    if (t->storage->refcount == 1 && t->storage->nbytes >= 1024) {
        size_t kb = t->storage->nbytes / 1024;
        lua_gc(L, LUA_GCSTEP, kb > 1000000 ? 1000000 : (int)kb);
    }
}

int dpo_l_checkdim(lua_State *L, int i, int ndim) {
    lua_Integer d0 = luaL_checkinteger(L, i), d = d0;
    if (d < 0) d += ndim + 1;
    if (d < 1 || d > ndim) {
        if (ndim == 0) return luaL_argerror(L, i, "dimension out of range (tensor is a scalar)");
        return luaL_argerror(L, i, lua_pushfstring(L, "dimension %I out of range 1..%d", d0, ndim));
    }
    return (int)d - 1;
}

void dpo_l_check_keys(lua_State *L, int t, const char *fn, const char *const *known) {
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int ok = 0;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (int i = 0; known[i]; i++)
                if (strcmp(lua_tostring(L, -2), known[i]) == 0) ok = 1;
        if (!ok) {
            lua_pushvalue(L, -2);
            luaL_error(L, "%s: unknown option '%s'", fn, luaL_tolstring(L, -1, NULL));
        }
        lua_pop(L, 1);
    }
}

double dpo_l_numfield(lua_State *L, int t, const char *fn, const char *k, double def) {
    double v;
    int ok;
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    v = lua_tonumberx(L, -1, &ok);
    if (!ok || !isfinite(v))
        luaL_error(L, "%s: option '%s' must be a finite number (got %s)", fn, k,
                   luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    return v;
}

int dpo_l_lora_options(lua_State *L, int t, const char *fn, dpo_lora_config *c,
                       const char ***targets) {
    static const char *const known[] = {"r",    "alpha",          "dropout", "use_rslora",
                                        "seed", "target_modules", NULL};
    double r, seed;
    int n = 0;
    t = lua_absindex(L, t);
    luaL_checktype(L, t, LUA_TTABLE);
    dpo_l_check_keys(L, t, fn, known);
    r = dpo_l_numfield(L, t, fn, "r", 8);
    if (r != floor(r) || r < 1 || r > 65536)
        luaL_error(L, "%s: option 'r' must be an integer in 1..65536 (got %f)", fn, r);
    c->r = (int)r;
    c->alpha = (float)dpo_l_numfield(L, t, fn, "alpha", (double)c->r);
    c->dropout = (float)dpo_l_numfield(L, t, fn, "dropout", 0.0);
    if (!(c->dropout >= 0 && c->dropout < 1))
        luaL_error(L, "%s: option 'dropout' must be in [0, 1) (got %f)", fn, (double)c->dropout);
    seed = dpo_l_numfield(L, t, fn, "seed", 0);
    if (seed != floor(seed) || seed < 0 || seed > 9007199254740992.0)
        luaL_error(L, "%s: option 'seed' must be an integer in 0..2^53 (got %f)", fn, seed);
    c->seed = (uint64_t)seed;
    lua_getfield(L, t, "use_rslora");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_error(L, "%s: option 'use_rslora' must be a boolean (got %s)", fn,
                   luaL_typename(L, -1));
    c->use_rslora = lua_toboolean(L, -1);
    lua_pop(L, 1);
    *targets = NULL;
    lua_getfield(L, t, "target_modules");
    if (lua_isnil(L, -1) ||
        (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "all-linear") == 0)) {
        n = 0; /* every linear module */
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        lua_Integer len = luaL_len(L, -1);
        if (len < 1 || len > 4096)
            luaL_error(L, "%s: target_modules must list 1..4096 module names", fn);
        n = (int)len;
        *targets = (const char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0);
        for (int i = 0; i < n; i++) {
            lua_geti(L, -2, i + 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "%s: target_modules[%d] must be a string (got %s)", fn, i + 1,
                           luaL_typename(L, -1));
            (*targets)[i] = lua_tostring(L, -1); /* kept alive by the table */
            lua_pop(L, 1);
        }
    } else {
        luaL_error(L,
                   "%s: option 'target_modules' must be a list of module names or \"all-linear\" "
                   "(got %s)",
                   fn, luaL_typename(L, -1));
    }
    return n;
}

void dpo_l_push_lora(lua_State *L, const dpo_lora *lo, int fan_in_fan_out) {
    const dpo_lora_config *c = dpo_lora_cfg(lo);
    int n = dpo_lora_num_sites(lo);
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, c->r);
    lua_setfield(L, -2, "r");
    lua_pushnumber(L, c->alpha);
    lua_setfield(L, -2, "alpha");
    lua_pushnumber(L, c->dropout);
    lua_setfield(L, -2, "dropout");
    lua_pushboolean(L, c->use_rslora);
    lua_setfield(L, -2, "use_rslora");
    lua_pushnumber(L, dpo_lora_scale(lo));
    lua_setfield(L, -2, "scale");
    lua_pushboolean(L, dpo_lora_enabled(lo));
    lua_setfield(L, -2, "enabled");
    lua_pushboolean(L, fan_in_fan_out);
    lua_setfield(L, -2, "fan_in_fan_out");
    lua_pushinteger(L, (lua_Integer)dpo_lora_num_params(lo));
    lua_setfield(L, -2, "num_params");
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, dpo_lora_site_info(lo, i)->name);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "modules");
}
