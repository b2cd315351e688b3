/*
** l_optim.c: the Lua face of core/model/optim.c, the raw update steps that
** lua/dpo/optim.lua drives. Added to the core table:
**   optim_sgd_step(p, g, buf|nil, first, lr, momentum, dampening, weight_decay,
**                  nesterov, maximize)
**   optim_adamw_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq|nil, step, lr,
**                    beta1, beta2, eps, weight_decay, amsgrad, maximize)
**   optim_rmsprop_step(p, g, square_avg, grad_avg|nil, momentum_buffer|nil, lr,
**                      alpha, eps, weight_decay, momentum, centered, maximize)
**   optim_grad_norm(params, norm_type) -> the norm of all params' .grad together
**   optim_grad_scale(params, coef): every params' .grad *= coef
**   optim_clip_coef(norm, max_norm) -> the factor clip_grad_norm applies
** Each step updates p and the state tensors in place, in one C loop. These
** check types, shapes and that the numbers are finite; the option ranges
** are validated by optim.lua.
*/
#include "bind/l_util.h"
#include "model/optim.h"

#include <math.h>

/* A hyperparameter: a finite number (NaN or inf would spread through the tensors). */
static double checkfinite(lua_State *L, int i) {
    double v = luaL_checknumber(L, i);
    luaL_argcheck(L, isfinite(v), i, "must be a finite number");
    return v;
}

/* An optional tensor argument: nil gives NULL. */
static dpo_tensor *opttensor(lua_State *L, int i) {
    return lua_isnoneornil(L, i) ? NULL : dpo_l_checktensor(L, i);
}

static int l_sgd_step(lua_State *L) {
    dpo_tensor *p = dpo_l_checktensor(L, 1), *g = dpo_l_checktensor(L, 2), *buf = opttensor(L, 3);
    int first = lua_toboolean(L, 4);
    dpo_sgd_opts o;
    dpo_error e;
    o.lr = checkfinite(L, 5);
    o.momentum = checkfinite(L, 6);
    o.dampening = checkfinite(L, 7);
    o.weight_decay = checkfinite(L, 8);
    o.nesterov = lua_toboolean(L, 9);
    o.maximize = lua_toboolean(L, 10);
    if (dpo_sgd_step(p, g, buf, first, &o, &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    return 0;
}

static int l_adamw_step(lua_State *L) {
    dpo_tensor *p = dpo_l_checktensor(L, 1), *g = dpo_l_checktensor(L, 2);
    dpo_tensor *m = dpo_l_checktensor(L, 3), *v = dpo_l_checktensor(L, 4), *vmax = opttensor(L, 5);
    lua_Integer step = luaL_checkinteger(L, 6);
    dpo_adamw_opts o;
    dpo_error e;
    o.lr = checkfinite(L, 7);
    o.beta1 = checkfinite(L, 8);
    o.beta2 = checkfinite(L, 9);
    o.eps = checkfinite(L, 10);
    o.weight_decay = checkfinite(L, 11);
    o.amsgrad = lua_toboolean(L, 12);
    o.maximize = lua_toboolean(L, 13);
    if (dpo_adamw_step(p, g, m, v, vmax, (int64_t)step, &o, &e) != DPO_OK)
        return dpo_l_raise(L, &e, 1);
    return 0;
}

static int l_rmsprop_step(lua_State *L) {
    dpo_tensor *p = dpo_l_checktensor(L, 1), *g = dpo_l_checktensor(L, 2);
    dpo_tensor *sq = dpo_l_checktensor(L, 3), *ga = opttensor(L, 4), *buf = opttensor(L, 5);
    dpo_rmsprop_opts o;
    dpo_error e;
    o.lr = checkfinite(L, 6);
    o.alpha = checkfinite(L, 7);
    o.eps = checkfinite(L, 8);
    o.weight_decay = checkfinite(L, 9);
    o.momentum = checkfinite(L, 10);
    o.centered = lua_toboolean(L, 11);
    o.maximize = lua_toboolean(L, 12);
    if (dpo_rmsprop_step(p, g, sq, ga, buf, &o, &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    return 0;
}

/*
** The .grad of each tensor in the list at index i (NULL where there is none),
** in a scratch userdata left on the stack. *n gets the count.
*/
static dpo_tensor **grads_of(lua_State *L, int i, int *n) {
    lua_Integer len;
    dpo_tensor **gs;
    luaL_checktype(L, i, LUA_TTABLE);
    len = luaL_len(L, i);
    luaL_argcheck(L, len >= 0 && len <= 1000000, i, "too many tensors");
    gs = (dpo_tensor **)lua_newuserdatauv(L, sizeof(dpo_tensor *) * (size_t)(len ? len : 1), 0);
    for (lua_Integer k = 1; k <= len; k++) {
        dpo_tensor *t;
        lua_geti(L, i, k);
        t = dpo_l_totensor(L, -1);
        if (!t)
            luaL_argerror(L, i,
                          lua_pushfstring(L, "element %I is a %s, expected dpo.Tensor", k,
                                          luaL_typename(L, -1)));
        gs[k - 1] = t->grad;
        lua_pop(L, 1);
    }
    *n = (int)len;
    return gs;
}

static int l_grad_norm(lua_State *L) {
    int n;
    dpo_tensor **gs = grads_of(L, 1, &n);
    double norm_type = luaL_optnumber(L, 2, 2.0), norm;
    dpo_error e;
    luaL_argcheck(L, norm_type > 0, 2, "norm_type must be > 0 or inf");
    if (dpo_grad_norm(gs, n, norm_type, &norm, &e) != DPO_OK) return dpo_l_raise(L, &e, 0);
    lua_pushnumber(L, norm);
    return 1;
}

static int l_grad_scale(lua_State *L) {
    int n;
    dpo_tensor **gs = grads_of(L, 1, &n);
    double coef = checkfinite(L, 2);
    dpo_error e;
    if (dpo_grad_scale(gs, n, coef, &e) != DPO_OK) return dpo_l_raise(L, &e, 0);
    return 0;
}

/* optim_clip_coef(norm, max_norm) -> max_norm / (norm + 1e-6), at most 1 */
static int l_clip_coef(lua_State *L) {
    double norm = luaL_checknumber(L, 1), max_norm = luaL_checknumber(L, 2);
    luaL_argcheck(L, norm >= 0, 1, "norm must be >= 0 (inf allowed)"); /* NaN fails too */
    luaL_argcheck(L, max_norm >= 0, 2, "max_norm must be >= 0 (inf allowed)");
    lua_pushnumber(L, dpo_clip_coef(norm, max_norm));
    return 1;
}

static const luaL_Reg functions[] = {
    {"optim_sgd_step", l_sgd_step},
    {"optim_adamw_step", l_adamw_step},
    {"optim_rmsprop_step", l_rmsprop_step},
    {"optim_grad_norm", l_grad_norm},
    {"optim_grad_scale", l_grad_scale},
    {"optim_clip_coef", l_clip_coef},
    {NULL, NULL},
};

/* Add the optimizer steps to the core table on top of the stack. */
int dpo_open_optim(lua_State *L) {
    luaL_setfuncs(L, functions, 0);
    return 0;
}
