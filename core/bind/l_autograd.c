/*
** l_autograd.c: the Lua face of autograd: tensor methods backward,
** requires_grad, detach, zero_grad, grad_fn, is_leaf; functions no_grad,
** enable_grad, set_grad_enabled, is_grad_enabled, and the op table that the
** gradient-check spec walks. (`t.grad` itself is read in l_tensor.c's __index.)
*/
#include "tensor/autograd.h"
#include "bind/l_util.h"

/* t:backward([gradient]): accumulate d(t)/d(leaf) into every leaf's .grad */
static int l_backward(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1), *g = NULL;
    dpo_error e;
    if (!lua_isnoneornil(L, 2)) g = dpo_l_checktensor(L, 2);
    if (dpo_backward(t, g, &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    return 0;
}

/* t:requires_grad([flag=true]) -> t; only float32 leaves may change it */
static int l_requires_grad(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int on = lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2);
    if (t->node)
        return luaL_argerror(L, 1,
                             "only leaf tensors can change requires_grad "
                             "(use :detach() for a leaf copy)");
    if (on && t->dtype != DPO_F32)
        return luaL_argerror(L, 1, "only float32 tensors can require gradients");
    t->requires_grad = on;
    lua_settop(L, 1);
    return 1;
}

/* t:detach() -> a view of the same values, outside any graph */
static int l_detach(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    dpo_error e;
    dpo_l_pushtensor(L, dpo_tensor_view(t, t->ndim, t->shape, &e), &e, 1);
    return 1;
}

/* t:zero_grad() -> t: zero t.grad in place (if there is one) */
static int l_zero_grad(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    if (t->grad) dpo_tensor_fill(t->grad, 0);
    lua_settop(L, 1);
    return 1;
}

/* t:grad_fn() -> the name of the op that made t ("mul", ...) or nil for a leaf */
static int l_grad_fn(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    if (!t->node) return 0;
    lua_pushstring(L, dpo_op_name(t->node->op));
    return 1;
}

static int l_is_leaf(lua_State *L) {
    lua_pushboolean(L, dpo_l_checktensor(L, 1)->node == NULL);
    return 1;
}

static int l_requires(lua_State *L) {
    lua_pushboolean(L, dpo_l_checktensor(L, 1)->requires_grad);
    return 1;
}

/* Run fn(...) with grad mode set to `on`, restoring it even on error. */
static int with_mode(lua_State *L, int on) {
    int old = dpo_grad_enabled(), st;
    luaL_checktype(L, 1, LUA_TFUNCTION);
    dpo_set_grad_enabled(on);
    st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    dpo_set_grad_enabled(old);
    if (st != LUA_OK) return lua_error(L);
    return lua_gettop(L);
}

/* dpo.no_grad(fn, ...): fn(...) with recording off; returns fn's results */
static int l_no_grad(lua_State *L) {
    return with_mode(L, 0);
}

/* dpo.enable_grad(fn, ...): fn(...) with recording on */
static int l_enable_grad(lua_State *L) {
    return with_mode(L, 1);
}

/* dpo.set_grad_enabled(flag) -> the previous setting */
static int l_set_grad_enabled(lua_State *L) {
    int old = dpo_grad_enabled();
    luaL_checkany(L, 1);
    dpo_set_grad_enabled(lua_toboolean(L, 1));
    lua_pushboolean(L, old);
    return 1;
}

static int l_is_grad_enabled(lua_State *L) {
    lua_pushboolean(L, dpo_grad_enabled());
    return 1;
}

/* dpo.autograd_ops() -> { {name=, differentiable=}, ... } in enum order */
static int l_ops(lua_State *L) {
    lua_createtable(L, DPO_OP_COUNT - 1, 0);
    for (int op = 1; op < DPO_OP_COUNT; op++) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, dpo_op_name((dpo_op)op));
        lua_setfield(L, -2, "name");
        lua_pushboolean(L, dpo_op_differentiable((dpo_op)op));
        lua_setfield(L, -2, "differentiable");
        lua_rawseti(L, -2, op);
    }
    return 1;
}

static const luaL_Reg methods[] = {
    {"backward", l_backward},   {"requires_grad", l_requires_grad},
    {"detach", l_detach},       {"zero_grad", l_zero_grad},
    {"grad_fn", l_grad_fn},     {"is_leaf", l_is_leaf},
    {"needs_grad", l_requires}, {NULL, NULL},
};

static const luaL_Reg functions[] = {
    {"no_grad", l_no_grad},
    {"enable_grad", l_enable_grad},
    {"set_grad_enabled", l_set_grad_enabled},
    {"is_grad_enabled", l_is_grad_enabled},
    {"autograd_ops", l_ops},
    {NULL, NULL},
};

/* Add to the core table on top of the stack (after dpo_open_tensor). */
int dpo_open_autograd(lua_State *L) {
    luaL_setfuncs(L, functions, 0);
    lua_getfield(L, -1, "Tensor");
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 1);
    return 0;
}
