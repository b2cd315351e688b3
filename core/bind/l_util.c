/*
** l_util.c: shared binding helpers (see l_util.h).
*/
#include "bind/l_util.h"

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
