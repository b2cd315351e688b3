/*
** l_tensor.c: the Lua face of tensors, metatable "dpo.Tensor".
**
** A userdata holds one pointer to a refcounted dpo_tensor; __gc drops the
** reference (and `:free()` drops it early, after which any use raises).
** Lua sees 1-based dimensions and indices; the engine gets 0-based ones.
** Every argument is checked here before the engine runs, and engine errors
** come back as "bad argument #k to 'fn' (...)" naming the shapes.
** Numbers stand in for scalar tensors in arithmetic; they are pushed as
** userdata first, so nothing leaks when a later check raises.
*/
#include "tensor/autograd.h"
#include "bind/l_util.h"
#include "base/rng.h"

#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static dpo_rng default_rng;

#define DEFAULT_SEED 0

/* ---- small helpers -------------------------------------------------------- */

static int push(lua_State *L, dpo_tensor *t, const dpo_error *e, int argbase) {
    dpo_l_pushtensor(L, t, e, argbase);
    return 1;
}

/* Push a tensor a constructor made from its size arguments at argbase: a
** failure (sizes too large) names that argument. */
static int push_new(lua_State *L, dpo_tensor *t, dpo_error *e, int argbase) {
    if (!t && e->arg == 0) e->arg = 1;
    return push(L, t, e, argbase);
}

/*
** Push the result of op on in[0..n) after recording it on the tape (when grad
** mode is on and an input requires grad). A NULL out raises e.
*/
static int push_rec(lua_State *L, dpo_tensor *out, dpo_error *e, int argbase, dpo_op op,
                    dpo_tensor *const *in, int n, const dpo_ag_params *p) {
    if (out && dpo_ag_record(out, op, in, n, p, e) != DPO_OK) {
        dpo_tensor_release(out);
        out = NULL;
        argbase = 0;
    }
    return push(L, out, e, argbase);
}

static int push_rec1(lua_State *L, dpo_tensor *out, dpo_error *e, int argbase, dpo_op op,
                     dpo_tensor *in, const dpo_ag_params *p) {
    return push_rec(L, out, e, argbase, op, &in, 1, p);
}

/* In-place writes would corrupt the tape: refuse them on tensors in a graph. */
static void check_inplace(lua_State *L, const dpo_tensor *t, const char *what) {
    if (dpo_grad_enabled() && t->requires_grad)
        luaL_error(L,
                   "%s: cannot modify a tensor that requires grad in place "
                   "(use :detach(), or do it inside dpo.no_grad)",
                   what);
}

static dpo_dtype checkdtype(lua_State *L, int i, dpo_dtype def) {
    static const char *const names[] = {"float32", "int32", "float", "int", NULL};
    if (lua_isnoneornil(L, i)) return def;
    return (luaL_checkoption(L, i, NULL, names) % 2) == 0 ? DPO_F32 : DPO_I32;
}

/*
** Read a size list: either a table {2, 3} at index i, or integers from i up
** to `last`. Returns the number of dims.
*/
static int checksizes_x(lua_State *L, int i, int last, int64_t *shape, int allow_infer) {
    int nd = 0;
    if (lua_istable(L, i)) {
        lua_Integer n = luaL_len(L, i);
        if (n > DPO_MAXDIM)
            return luaL_argerror(
                L, i, lua_pushfstring(L, "%d dimensions (at most %d)", (int)n, DPO_MAXDIM));
        for (lua_Integer k = 1; k <= n; k++) {
            int isint;
            lua_Integer v;
            lua_geti(L, i, k);
            v = lua_tointegerx(L, -1, &isint);
            if (!isint)
                return luaL_argerror(L, i, lua_pushfstring(L, "size %d is not an integer", (int)k));
            if (v < 0 && !(allow_infer && v == -1))
                return luaL_argerror(L, i,
                                     lua_pushfstring(L, "size %d is negative (%I)", (int)k, v));
            shape[nd++] = v;
            lua_pop(L, 1);
        }
        return nd;
    }
    if (last - i + 1 > DPO_MAXDIM)
        return luaL_argerror(
            L, i, lua_pushfstring(L, "%d dimensions (at most %d)", last - i + 1, DPO_MAXDIM));
    for (int k = i; k <= last; k++) {
        lua_Integer v = luaL_checkinteger(L, k);
        if (v < 0) return luaL_argerror(L, k, lua_pushfstring(L, "size is negative (%I)", v));
        shape[nd++] = v;
    }
    return nd;
}

static int checksizes(lua_State *L, int i, int last, int64_t *shape) {
    return checksizes_x(L, i, last, shape, 0);
}

/* Sizes from index i with an optional trailing dtype string. */
static int sizes_and_dtype(lua_State *L, int i, int64_t *shape, dpo_dtype *dt) {
    int top = lua_gettop(L);
    *dt = DPO_F32;
    if (top >= i && lua_type(L, top) == LUA_TSTRING) {
        *dt = checkdtype(L, top, DPO_F32);
        top--;
    }
    if (top < i) return 0;
    if (lua_istable(L, i) && top > i)
        luaL_argerror(L, i + 1, "unexpected argument after size table");
    return checksizes(L, i, top, shape);
}

/* The tensor at i, or a number at i turned into a scalar tensor (in place). */
static dpo_tensor *operand(lua_State *L, int i, const dpo_tensor *like) {
    dpo_tensor *t = dpo_l_totensor(L, i);
    dpo_error e;
    if (t) return t;
    if (luaL_testudata(L, i, DPO_TENSOR_MT))
        luaL_argerror(L, i, "attempt to use a freed dpo.Tensor");
    if (lua_type(L, i) == LUA_TNUMBER) {
        dpo_dtype dt = (lua_isinteger(L, i) && like && like->dtype == DPO_I32) ? DPO_I32 : DPO_F32;
        t = dpo_tensor_scalar(dt, lua_tonumber(L, i), &e);
        dpo_l_pushtensor(L, t, &e, 0);
        lua_replace(L, i);
        return t;
    }
    luaL_typeerror(L, i, "dpo.Tensor or number");
    return NULL;
}

static int optdim(lua_State *L, int i, const dpo_tensor *t, int def) {
    if (lua_isnoneornil(L, i)) return def;
    return dpo_l_checkdim(L, i, t->ndim);
}

/* ---- constructors ------------------------------------------------------------ */

/* Shape of a nested table at index i: walks first elements. */
static int table_shape(lua_State *L, int i, int64_t *shape) {
    int nd = 0;
    lua_pushvalue(L, i);
    while (lua_istable(L, -1)) {
        if (nd == DPO_MAXDIM)
            return luaL_argerror(L, 1, lua_pushfstring(L, "nested deeper than %d", DPO_MAXDIM));
        shape[nd++] = (int64_t)luaL_len(L, -1);
        if (shape[nd - 1] == 0) break;
        lua_geti(L, -1, 1);
        lua_remove(L, -2);
    }
    lua_pop(L, 1);
    return nd;
}

/* Fill t from the nested table on top of the stack, checking it is rectangular. */
static void table_fill(lua_State *L, dpo_tensor *t, int d, int64_t *pos, char *path, size_t plen) {
    int64_t n = (int64_t)luaL_len(L, -1);
    if (n != t->shape[d])
        luaL_argerror(L, 1,
                      lua_pushfstring(L, "ragged table: %s has %d elements, expected %d",
                                      plen ? path : "the table", (int)n, (int)t->shape[d]));
    for (int64_t k = 1; k <= n; k++) {
        size_t l = plen;
        int w = snprintf(path + plen, 160 - plen, "[%lld]", (long long)k);
        if (w > 0 && plen + (size_t)w < 160) l = plen + (size_t)w;
        lua_geti(L, -1, k);
        if (d == t->ndim - 1) {
            int ok;
            lua_Number v = lua_tonumberx(L, -1, &ok);
            if (!ok || lua_type(L, -1) != LUA_TNUMBER)
                luaL_argerror(L, 1,
                              lua_pushfstring(L, "expected a number at %s, got %s", path,
                                              luaL_typename(L, -1)));
            dpo_tensor_set(t, (*pos)++, v);
        } else {
            if (!lua_istable(L, -1))
                luaL_argerror(L, 1,
                              lua_pushfstring(L, "expected a table at %s, got %s", path,
                                              luaL_typename(L, -1)));
            table_fill(L, t, d + 1, pos, path, l);
        }
        lua_pop(L, 1);
        path[plen] = '\0';
    }
}

/* dpo.tensor(data [, dtype]): from a number, a nested table or a tensor (copied). */
static int l_tensor(lua_State *L) {
    dpo_dtype dt = checkdtype(L, 2, DPO_F32);
    dpo_error e;
    dpo_tensor *t, *src;
    if ((src = dpo_l_totensor(L, 1)) != NULL) {
        dpo_tensor *c = dpo_tensor_clone(src, &e), *r;
        if (!c) return dpo_l_raise(L, &e, 0);
        r = dpo_tensor_cast(c, lua_isnoneornil(L, 2) ? src->dtype : dt, &e);
        dpo_tensor_release(c);
        return push(L, r, &e, 0);
    }
    if (lua_type(L, 1) == LUA_TNUMBER)
        return push(L, dpo_tensor_scalar(dt, lua_tonumber(L, 1), &e), &e, 0);
    luaL_checktype(L, 1, LUA_TTABLE);
    {
        int64_t shape[DPO_MAXDIM], pos = 0;
        char path[160] = "";
        int nd = table_shape(L, 1, shape);
        t = dpo_tensor_new(dt, nd, shape, &e);
        dpo_l_pushtensor(L, t, &e, 0);
        lua_pushvalue(L, 1);
        if (nd > 0) table_fill(L, t, 0, &pos, path, 0);
        lua_pop(L, 1);
    }
    return 1;
}

static int make_filled(lua_State *L, double v, int fill) {
    int64_t shape[DPO_MAXDIM];
    dpo_dtype dt;
    dpo_error e;
    int nd = sizes_and_dtype(L, 1, shape, &dt);
    dpo_tensor *t = dpo_tensor_new(dt, nd, shape, &e);
    if (t && fill) dpo_tensor_fill(t, v);
    return push_new(L, t, &e, 1);
}

static int l_zeros(lua_State *L) {
    return make_filled(L, 0, 1);
}
static int l_ones(lua_State *L) {
    return make_filled(L, 1, 1);
}
static int l_empty(lua_State *L) {
    return make_filled(L, 0, 0);
}

/* dpo.full(sizes, value [, dtype]) */
static int l_full(lua_State *L) {
    int64_t shape[DPO_MAXDIM];
    dpo_error e;
    int nd;
    lua_Number v;
    dpo_dtype dt;
    dpo_tensor *t;
    luaL_checktype(L, 1, LUA_TTABLE);
    v = luaL_checknumber(L, 2);
    dt = checkdtype(L, 3, (lua_isinteger(L, 2) && !lua_isnoneornil(L, 3)) ? DPO_I32 : DPO_F32);
    nd = checksizes(L, 1, 1, shape);
    t = dpo_tensor_new(dt, nd, shape, &e);
    if (t) dpo_tensor_fill(t, v);
    return push_new(L, t, &e, 1);
}

/* dpo.arange([start,] stop [, step] [, dtype]): [start, stop) by step, as numpy. */
static int l_arange(lua_State *L) {
    int top = lua_gettop(L), nnum, allint = 1;
    lua_Number a[3];
    double start = 0, stop, step = 1, count;
    dpo_dtype dt;
    dpo_error e;
    dpo_tensor *t;
    int64_t n;
    if (top >= 1 && lua_type(L, top) == LUA_TSTRING) top--;
    nnum = top;
    if (nnum > 3) return luaL_argerror(L, 4, "at most 3 numbers (start, stop, step)");
    if (nnum < 1) nnum = 1; /* luaL_checknumber raises "number expected" */
    for (int i = 1; i <= nnum; i++) {
        a[i - 1] = luaL_checknumber(L, i);
        if (!lua_isinteger(L, i)) allint = 0;
        if (!isfinite(a[i - 1])) return luaL_argerror(L, i, "must be a finite number");
    }
    if (nnum == 1)
        stop = a[0];
    else
        start = a[0], stop = a[1];
    if (nnum == 3) step = a[2];
    if (step == 0) return luaL_argerror(L, 3, "step must be a nonzero number");
    dt = checkdtype(L, top + 1, allint ? DPO_I32 : DPO_F32);
    count = ceil((stop - start) / step);
    if (count < 0) count = 0;
    if (count > 1e10) return luaL_error(L, "arange of %f elements is too large", count);
    n = (int64_t)count;
    t = dpo_tensor_new(dt, 1, &n, &e);
    if (t)
        for (int64_t i = 0; i < n; i++) dpo_tensor_set(t, i, start + (double)i * step);
    return push(L, t, &e, 0);
}

/* dpo.eye(n [, m] [, dtype]) */
static int l_eye(lua_State *L) {
    int64_t shape[2];
    dpo_error e;
    dpo_tensor *t;
    int top = lua_gettop(L);
    dpo_dtype dt = DPO_F32;
    if (top >= 1 && lua_type(L, top) == LUA_TSTRING) dt = checkdtype(L, top--, DPO_F32);
    shape[0] = luaL_checkinteger(L, 1);
    shape[1] = top >= 2 ? luaL_checkinteger(L, 2) : shape[0];
    luaL_argcheck(L, shape[0] >= 0, 1, "size is negative");
    luaL_argcheck(L, shape[1] >= 0, 2, "size is negative");
    t = dpo_tensor_zeros(dt, 2, shape, &e);
    if (t)
        for (int64_t i = 0; i < shape[0] && i < shape[1]; i++)
            dpo_tensor_set(t, i * shape[1] + i, 1);
    return push_new(L, t, &e, 1);
}

static int l_rand(lua_State *L) {
    int64_t shape[DPO_MAXDIM];
    dpo_dtype dt;
    dpo_error e;
    int nd = sizes_and_dtype(L, 1, shape, &dt);
    dpo_tensor *t = dpo_tensor_new(DPO_F32, nd, shape, &e);
    if (t) dpo_rng_fill_uniform(&default_rng, t, 0, 1);
    return push_new(L, t, &e, 1);
}

static int l_randn(lua_State *L) {
    int64_t shape[DPO_MAXDIM];
    dpo_dtype dt;
    dpo_error e;
    int nd = sizes_and_dtype(L, 1, shape, &dt);
    dpo_tensor *t = dpo_tensor_new(DPO_F32, nd, shape, &e);
    if (t) dpo_rng_fill_normal(&default_rng, t, 0, 1);
    return push_new(L, t, &e, 1);
}

/* dpo.randint(lo, hi, sizes...): int32 uniform in [lo, hi). */
static int l_randint(lua_State *L) {
    int64_t shape[DPO_MAXDIM];
    lua_Integer lo = luaL_checkinteger(L, 1), hi = luaL_checkinteger(L, 2);
    dpo_dtype dt;
    dpo_error e;
    int nd;
    dpo_tensor *t;
    luaL_argcheck(L, hi > lo, 2, "high must be greater than low");
    luaL_argcheck(L, lo >= INT32_MIN && hi <= (lua_Integer)INT32_MAX + 1, 2,
                  "bounds must fit in int32");
    nd = sizes_and_dtype(L, 3, shape, &dt);
    t = dpo_tensor_new(DPO_I32, nd, shape, &e);
    if (t) dpo_rng_fill_uniform(&default_rng, t, (double)lo, (double)hi);
    return push_new(L, t, &e, 3);
}

/* dpo.manual_seed(n): reseed the default generator. */
static int l_manual_seed(lua_State *L) {
    lua_Integer s = luaL_checkinteger(L, 1);
    dpo_rng_seed(&default_rng, (uint64_t)s);
    return 0;
}

static int l_initial_seed(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)default_rng.seed);
    return 1;
}

/* dpo.rng_state() -> string; dpo.set_rng_state(s): exact save/restore. */
static int l_rng_state(lua_State *L) {
    lua_pushlstring(L, (const char *)&default_rng, sizeof default_rng);
    return 1;
}

static int l_set_rng_state(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    dpo_rng r;
    luaL_argcheck(L, n == sizeof default_rng, 1, "not a state from dpo.rng_state()");
    memcpy(&r, s, sizeof r);
    luaL_argcheck(L, (r.s[0] | r.s[1] | r.s[2] | r.s[3]) != 0, 1,
                  "not a state from dpo.rng_state() (all zero)");
    default_rng = r;
    return 0;
}

/* ---- metamethods ------------------------------------------------------------------ */

static int l_gc(lua_State *L) {
    dpo_tensor **p = (dpo_tensor **)luaL_checkudata(L, 1, DPO_TENSOR_MT);
    dpo_tensor_release(*p);
    *p = NULL;
    return 0;
}

static int l_tostring(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    char *s = dpo_tensor_format(t, DPO_TENSOR_MT);
    if (!s) return luaL_error(L, "out of memory printing a tensor");
    lua_pushstring(L, s);
    free(s);
    return 1;
}

/* A 1-based index along a dim of size n (negatives from the end), 0-based out.
** i > 0 names the argument in the error; i == 0 is t[k] indexing. */
static int64_t checkindex(lua_State *L, int i, lua_Integer k, int64_t n) {
    lua_Integer k0 = k;
    if (k < 0) k += n + 1;
    if (k < 1 || k > n) {
        const char *msg = lua_pushfstring(L, "index %I out of range 1..%I", k0, (lua_Integer)n);
        if (i > 0) luaL_argerror(L, i, msg);
        luaL_error(L, "%s", msg);
    }
    return (int64_t)k - 1;
}

static int l_index(lua_State *L) {
    int isint;
    lua_Integer k;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        dpo_tensor *t = dpo_l_checktensor(L, 1);
        dpo_error e;
        int64_t i;
        k = lua_tointegerx(L, 2, &isint);
        if (!isint) /* t[1.5], t[0/0]: a typo, not a missing field */
            return luaL_error(L, "index %s is not an integer", luaL_tolstring(L, 2, NULL));
        if (t->ndim == 0) return luaL_error(L, "cannot index a scalar tensor (use :item())");
        i = checkindex(L, 0, k, t->shape[0]);
        if (t->ndim == 1) {
            double v = dpo_tensor_get(t, i);
            if (t->dtype == DPO_I32)
                lua_pushinteger(L, (lua_Integer)v);
            else
                lua_pushnumber(L, v);
            return 1;
        }
        {
            dpo_ag_params p = {0};
            p.dim = 0, p.start = i;
            return push_rec1(L, dpo_tensor_select(t, 0, i, &e), &e, 0, DPO_OP_SELECT, t, &p);
        }
    }
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "grad") == 0) {
        dpo_tensor *t = dpo_l_checktensor(L, 1);
        if (!t->grad) return 0;
        dpo_tensor_retain(t->grad);
        dpo_l_pushtensor(L, t->grad, NULL, 0);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

static int l_newindex(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int isint;
    lua_Integer k = lua_tointegerx(L, 2, &isint);
    dpo_error e;
    int64_t i;
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "grad") == 0) {
        dpo_tensor *g = lua_isnil(L, 3) ? NULL : dpo_l_checktensor(L, 3);
        if (g && (g->dtype != DPO_F32 || !dpo_tensor_same_shape(g, t))) {
            char a[DPO_SHAPELEN], b[DPO_SHAPELEN];
            return luaL_error(L, "grad must be a float32 tensor of size %s (got %s %s)",
                              dpo_tensor_shape_str(t, a, sizeof a), dpo_dtype_name(g->dtype),
                              dpo_tensor_shape_str(g, b, sizeof b));
        }
        if (g) {
            g = dpo_tensor_clone(g, &e);
            if (!g) return dpo_l_raise(L, &e, 0);
        }
        dpo_tensor_release(t->grad);
        t->grad = g;
        return 0;
    }
    if (lua_type(L, 2) != LUA_TNUMBER || !isint)
        return luaL_error(L, "cannot set field '%s' of a dpo.Tensor", luaL_tolstring(L, 2, NULL));
    check_inplace(L, t, "t[i] = v");
    if (t->ndim == 0) return luaL_error(L, "cannot index a scalar tensor (use :fill())");
    i = checkindex(L, 0, k, t->shape[0]);
    if (t->ndim == 1) {
        dpo_tensor_set(t, i, luaL_checknumber(L, 3));
        return 0;
    }
    {
        dpo_tensor *row = dpo_tensor_select(t, 0, i, &e);
        if (!row) return dpo_l_raise(L, &e, 0);
        if (lua_type(L, 3) == LUA_TNUMBER) {
            dpo_tensor_fill(row, lua_tonumber(L, 3));
            dpo_tensor_release(row);
            return 0;
        }
        {
            dpo_tensor *src = dpo_l_totensor(L, 3);
            dpo_status st;
            if (!src) {
                dpo_tensor_release(row);
                return luaL_typeerror(L, 3, "dpo.Tensor or number");
            }
            st = dpo_tensor_copy(row, src, &e);
            dpo_tensor_release(row);
            if (st != DPO_OK) return luaL_error(L, "%s", e.msg);
        }
    }
    return 0;
}

static int l_len(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    if (t->ndim == 0) return luaL_error(L, "a scalar tensor has no length");
    lua_pushinteger(L, (lua_Integer)t->shape[0]);
    return 1;
}

/* ---- arithmetic ------------------------------------------------------------------ */

static int binary(lua_State *L, dpo_op op) {
    dpo_tensor *ta = dpo_l_totensor(L, 1), *tb = dpo_l_totensor(L, 2), *a, *b;
    dpo_error e;
    if (!ta && !tb) luaL_typeerror(L, 1, "dpo.Tensor");
    a = operand(L, 1, tb);
    b = operand(L, 2, ta ? ta : a);
    {
        dpo_tensor *in[2] = {a, b};
        return push_rec(L, dpo_binary(op, a, b, &e), &e, 1, op, in, 2, NULL);
    }
}

static int l_add(lua_State *L) {
    return binary(L, DPO_OP_ADD);
}
static int l_sub(lua_State *L) {
    return binary(L, DPO_OP_SUB);
}
static int l_mul(lua_State *L) {
    return binary(L, DPO_OP_MUL);
}
static int l_div(lua_State *L) {
    return binary(L, DPO_OP_DIV);
}
static int l_pow(lua_State *L) {
    return binary(L, DPO_OP_POW);
}
static int l_maximum(lua_State *L) {
    return binary(L, DPO_OP_MAXIMUM);
}
static int l_minimum(lua_State *L) {
    return binary(L, DPO_OP_MINIMUM);
}
static int l_gt(lua_State *L) {
    return binary(L, DPO_OP_GT);
}
static int l_ge(lua_State *L) {
    return binary(L, DPO_OP_GE);
}
static int l_lt(lua_State *L) {
    return binary(L, DPO_OP_LT);
}
static int l_le(lua_State *L) {
    return binary(L, DPO_OP_LE);
}
static int l_eq(lua_State *L) {
    return binary(L, DPO_OP_EQ);
}
static int l_ne(lua_State *L) {
    return binary(L, DPO_OP_NE);
}

static int unary(lua_State *L, dpo_op op) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    dpo_error e;
    return push_rec1(L, dpo_unary(op, t, &e), &e, 1, op, t, NULL);
}

#define UNARY(name, OP)                                                                            \
    static int l_##name(lua_State *L) {                                                            \
        return unary(L, OP);                                                                       \
    }
UNARY(neg, DPO_OP_NEG)
UNARY(exp, DPO_OP_EXP)
UNARY(log, DPO_OP_LOG)
UNARY(sqrt, DPO_OP_SQRT)
UNARY(abs, DPO_OP_ABS)
UNARY(sigmoid, DPO_OP_SIGMOID)
UNARY(tanh, DPO_OP_TANH)
UNARY(relu, DPO_OP_RELU)
UNARY(gelu, DPO_OP_GELU)
UNARY(logsigmoid, DPO_OP_LOGSIGMOID)
UNARY(softplus, DPO_OP_SOFTPLUS)
UNARY(silu, DPO_OP_SILU)
UNARY(rsqrt, DPO_OP_RSQRT)

static int l_unm(lua_State *L) {
    return unary(L, DPO_OP_NEG);
}

/* t:clamp(min, max), either may be nil */
static int l_clamp(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int has_lo = !lua_isnoneornil(L, 2), has_hi = !lua_isnoneornil(L, 3);
    double lo = has_lo ? luaL_checknumber(L, 2) : 0, hi = has_hi ? luaL_checknumber(L, 3) : 0;
    dpo_error e;
    dpo_ag_params p = {0};
    if (!has_lo && !has_hi) return luaL_argerror(L, 2, "at least one of min and max is required");
    luaL_argcheck(L, !isnan(lo), 2, "min is NaN");
    luaL_argcheck(L, !isnan(hi), 3, "max is NaN");
    p.has_lo = has_lo, p.lo = lo, p.has_hi = has_hi, p.hi = hi;
    return push_rec1(L, dpo_clamp(t, has_lo, lo, has_hi, hi, &e), &e, 1, DPO_OP_CLAMP, t, &p);
}

/* dpo.where(cond, a, b): a and b may be numbers */
static int l_where(lua_State *L) {
    dpo_tensor *c = dpo_l_checktensor(L, 1), *a, *b;
    dpo_tensor *ta = dpo_l_totensor(L, 2), *tb = dpo_l_totensor(L, 3);
    dpo_error e;
    a = operand(L, 2, tb);
    b = operand(L, 3, ta ? ta : a);
    {
        dpo_tensor *in[2] = {a, b};
        dpo_ag_params p = {0};
        p.saved = c;
        return push_rec(L, dpo_where(c, a, b, &e), &e, 1, DPO_OP_WHERE, in, 2, &p);
    }
}

static int l_mm(lua_State *L) {
    dpo_tensor *a = dpo_l_checktensor(L, 1), *b = dpo_l_checktensor(L, 2);
    dpo_error e;
    dpo_tensor *in[2] = {a, b};
    return push_rec(L, dpo_mm(a, b, &e), &e, 1, DPO_OP_MATMUL, in, 2, NULL);
}

static int l_matmul(lua_State *L) {
    dpo_tensor *a = dpo_l_checktensor(L, 1), *b = dpo_l_checktensor(L, 2);
    dpo_error e;
    dpo_tensor *in[2] = {a, b};
    return push_rec(L, dpo_matmul(a, b, &e), &e, 1, DPO_OP_MATMUL, in, 2, NULL);
}

/* ---- reductions --------------------------------------------------------------------- */

/* t:sum([dim [, keepdim]]) and friends; max/min along a dim also return indices. */
static int reduce(lua_State *L, dpo_op op) {
    dpo_tensor *t = dpo_l_checktensor(L, 1), *idx = NULL, *r;
    int dim = optdim(L, 2, t, -1), keep = lua_toboolean(L, 3);
    int with_idx = dim >= 0 && (op == DPO_OP_MAX || op == DPO_OP_MIN);
    dpo_error e;
    dpo_ag_params p = {0};
    r = dpo_reduce(op, t, dim, keep, 1, with_idx ? &idx : NULL, &e);
    p.dim = dim, p.keepdim = keep, p.saved = idx, p.index_base = 1;
    if (with_idx && !r) dpo_tensor_release(idx);
    push_rec1(L, r, &e, 1, op, t, &p);
    if (with_idx) {
        push(L, idx, &e, 1);
        return 2;
    }
    return 1;
}

static int l_sum(lua_State *L) {
    return reduce(L, DPO_OP_SUM);
}
static int l_mean(lua_State *L) {
    return reduce(L, DPO_OP_MEAN);
}
static int l_max(lua_State *L) {
    return reduce(L, DPO_OP_MAX);
}
static int l_min(lua_State *L) {
    return reduce(L, DPO_OP_MIN);
}
static int l_argmax(lua_State *L) {
    return reduce(L, DPO_OP_ARGMAX);
}
static int l_argmin(lua_State *L) {
    return reduce(L, DPO_OP_ARGMIN);
}

static int softmax_like(lua_State *L, dpo_op op) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int dim = optdim(L, 2, t, t->ndim - 1);
    dpo_error e;
    if (t->ndim == 0) return luaL_argerror(L, 1, "expected a tensor with at least 1 dimension");
    dpo_ag_params p = {0};
    p.dim = dim, p.keepdim = lua_toboolean(L, 3);
    return push_rec1(L, dpo_softmax_like(op, t, dim, p.keepdim, &e), &e, 1, op, t, &p);
}

static int l_softmax(lua_State *L) {
    return softmax_like(L, DPO_OP_SOFTMAX);
}
static int l_log_softmax(lua_State *L) {
    return softmax_like(L, DPO_OP_LOG_SOFTMAX);
}
static int l_logsumexp(lua_State *L) {
    return softmax_like(L, DPO_OP_LOGSUMEXP);
}

/* ---- shape and views ------------------------------------------------------------------ */

static void push_shape(lua_State *L, const dpo_tensor *t) {
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, (lua_Integer)t->shape[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

/* t:size() -> {sizes}; t:size(d) -> size of dim d */
static int l_size(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    if (lua_isnoneornil(L, 2)) {
        push_shape(L, t);
        return 1;
    }
    lua_pushinteger(L, (lua_Integer)t->shape[dpo_l_checkdim(L, 2, t->ndim)]);
    return 1;
}

static int l_shape(lua_State *L) {
    push_shape(L, dpo_l_checktensor(L, 1));
    return 1;
}

static int l_dim(lua_State *L) {
    lua_pushinteger(L, dpo_l_checktensor(L, 1)->ndim);
    return 1;
}

static int l_numel(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)dpo_tensor_numel(dpo_l_checktensor(L, 1)));
    return 1;
}

static int l_dtype(lua_State *L) {
    lua_pushstring(L, dpo_dtype_name(dpo_l_checktensor(L, 1)->dtype));
    return 1;
}

static int l_is_contiguous(lua_State *L) {
    lua_pushboolean(L, dpo_tensor_is_contiguous(dpo_l_checktensor(L, 1)));
    return 1;
}

static int reshape_like(lua_State *L, int view) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int64_t shape[DPO_MAXDIM];
    dpo_error e;
    int nd;
    if (lua_gettop(L) < 2) return luaL_argerror(L, 2, "expected sizes");
    if (lua_istable(L, 2)) {
        nd = checksizes_x(L, 2, 2, shape, 1);
    } else {
        int top = lua_gettop(L);
        if (top - 1 > DPO_MAXDIM) return luaL_argerror(L, 2, "too many dimensions");
        nd = 0;
        for (int k = 2; k <= top; k++) shape[nd++] = luaL_checkinteger(L, k);
    }
    return push_rec1(
        L, view ? dpo_tensor_view(t, nd, shape, &e) : dpo_tensor_reshape(t, nd, shape, &e), &e, 1,
        DPO_OP_RESHAPE, t, NULL);
}

/* t:reshape(sizes...) (one size may be -1): a view when possible, else a copy */
static int l_reshape(lua_State *L) {
    return reshape_like(L, 0);
}
/* t:view(sizes...): always a view; an error for layouts that need a copy */
static int l_view(lua_State *L) {
    return reshape_like(L, 1);
}

static int l_transpose(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int d0 = dpo_l_checkdim(L, 2, t->ndim), d1 = dpo_l_checkdim(L, 3, t->ndim);
    dpo_error e;
    dpo_ag_params p = {0};
    p.dim = d0, p.dim2 = d1;
    return push_rec1(L, dpo_tensor_transpose(t, d0, d1, &e), &e, 1, DPO_OP_TRANSPOSE, t, &p);
}

/* t:t(): the transpose of a matrix (a 1-D tensor is returned as a view of itself) */
static int l_t(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    dpo_error e;
    char s[DPO_SHAPELEN];
    if (t->ndim > 2)
        return luaL_argerror(
            L, 1,
            lua_pushfstring(L, "t() expects a tensor of at most 2 dimensions (got size %s)",
                            dpo_tensor_shape_str(t, s, sizeof s)));
    dpo_ag_params p = {0};
    if (t->ndim < 2)
        return push_rec1(L, dpo_tensor_view(t, t->ndim, t->shape, &e), &e, 1, DPO_OP_RESHAPE, t,
                         NULL);
    p.dim = 0, p.dim2 = 1;
    return push_rec1(L, dpo_tensor_transpose(t, 0, 1, &e), &e, 1, DPO_OP_TRANSPOSE, t, &p);
}

static int l_contiguous(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    dpo_error e;
    if (dpo_tensor_is_contiguous(t)) {
        lua_settop(L, 1);
        return 1;
    }
    return push_rec1(L, dpo_tensor_contiguous(t, &e), &e, 1, DPO_OP_COPY, t, NULL);
}

/* t:narrow(dim, start, length): a view, start 1-based */
static int l_narrow(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int dim = dpo_l_checkdim(L, 2, t->ndim);
    lua_Integer start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
    dpo_error e;
    dpo_tensor *r;
    if (start < 1 || start > t->shape[dim] + 1)
        return luaL_argerror(
            L, 3,
            lua_pushfstring(L, "start %I out of range 1..%I", start, (lua_Integer)t->shape[dim]));
    if (len < 0 || start - 1 + len > t->shape[dim])
        return luaL_argerror(L, 4,
                             lua_pushfstring(L, "length %I from %I exceeds size %I", len, start,
                                             (lua_Integer)t->shape[dim]));
    dpo_ag_params p = {0};
    r = dpo_tensor_narrow(t, dim, start - 1, len, &e);
    p.dim = dim, p.start = start - 1;
    return push_rec1(L, r, &e, 1, DPO_OP_NARROW, t, &p);
}

/* t:select(dim, index): a view with dim removed */
static int l_select(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int dim = dpo_l_checkdim(L, 2, t->ndim);
    int64_t i = checkindex(L, 3, luaL_checkinteger(L, 3), t->shape[dim]);
    dpo_error e;
    dpo_ag_params p = {0};
    p.dim = dim, p.start = i;
    return push_rec1(L, dpo_tensor_select(t, dim, i, &e), &e, 1, DPO_OP_SELECT, t, &p);
}

/* t:unsqueeze(dim): a view with a size-1 dim inserted before dim (1..ndim+1) */
static int l_unsqueeze(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int dim = dpo_l_checkdim(L, 2, t->ndim + 1), nd = 0;
    int64_t shape[DPO_MAXDIM];
    dpo_error e;
    if (t->ndim >= DPO_MAXDIM) return luaL_argerror(L, 1, "too many dimensions");
    for (int i = 0; i <= t->ndim; i++) {
        if (i == dim) shape[nd++] = 1;
        if (i < t->ndim) shape[nd++] = t->shape[i];
    }
    return push_rec1(L, dpo_tensor_reshape(t, nd, shape, &e), &e, 1, DPO_OP_RESHAPE, t, NULL);
}

/* t:squeeze([dim]): drop size-1 dims (or only dim) */
static int l_squeeze(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int only = optdim(L, 2, t, -1), nd = 0;
    int64_t shape[DPO_MAXDIM];
    dpo_error e;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] != 1 || (only >= 0 && i != only)) shape[nd++] = t->shape[i];
    return push_rec1(L, dpo_tensor_reshape(t, nd, shape, &e), &e, 1, DPO_OP_RESHAPE, t, NULL);
}

static int l_clone(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    dpo_error e;
    return push_rec1(L, dpo_tensor_clone(t, &e), &e, 1, DPO_OP_COPY, t, NULL);
}

/* t:fill(v) -> t */
static int l_fill(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    check_inplace(L, t, "fill");
    dpo_tensor_fill(t, luaL_checknumber(L, 2));
    lua_settop(L, 1);
    return 1;
}

static int l_zero(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    check_inplace(L, t, "zero");
    dpo_tensor_fill(t, 0);
    lua_settop(L, 1);
    return 1;
}

/* t:copy(src) -> t, src broadcast to t's shape */
static int l_copy(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1), *src = dpo_l_checktensor(L, 2);
    dpo_error e;
    check_inplace(L, t, "copy");
    if (dpo_tensor_copy(t, src, &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    lua_settop(L, 1);
    return 1;
}

static void push_elem(lua_State *L, const dpo_tensor *t, int64_t i) {
    double v = dpo_tensor_get(t, i);
    if (t->dtype == DPO_I32)
        lua_pushinteger(L, (lua_Integer)v);
    else
        lua_pushnumber(L, v);
}

static void totable_rec(lua_State *L, const dpo_tensor *t, int d, int64_t *pos) {
    lua_createtable(L, (int)t->shape[d], 0);
    for (int64_t k = 0; k < t->shape[d]; k++) {
        if (d == t->ndim - 1)
            push_elem(L, t, (*pos)++);
        else
            totable_rec(L, t, d + 1, pos);
        lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
}

/* t:totable() -> nested tables (a number for a scalar) */
static int l_totable(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int64_t pos = 0;
    if (t->ndim == 0) {
        push_elem(L, t, 0);
        return 1;
    }
    luaL_checkstack(L, t->ndim + 4, "tensor too deep");
    totable_rec(L, t, 0, &pos);
    return 1;
}

/* t:item() -> the number of a one-element tensor */
static int l_item(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    char s[DPO_SHAPELEN];
    if (dpo_tensor_numel(t) != 1)
        return luaL_argerror(L, 1,
                             lua_pushfstring(L, "item() needs one element (got size %s)",
                                             dpo_tensor_shape_str(t, s, sizeof s)));
    push_elem(L, t, 0);
    return 1;
}

static int cast(lua_State *L, dpo_dtype dt) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    dpo_error e;
    if (t->dtype == dt) {
        lua_settop(L, 1);
        return 1;
    }
    return push(L, dpo_tensor_cast(t, dt, &e), &e, 1);
}

static int l_float(lua_State *L) {
    return cast(L, DPO_F32);
}
static int l_int(lua_State *L) {
    return cast(L, DPO_I32);
}

/* t:to(dtype) */
static int l_to(lua_State *L) {
    dpo_l_checktensor(L, 1);
    luaL_checkstring(L, 2); /* the dtype is required: t:to() converts to nothing */
    return cast(L, checkdtype(L, 2, DPO_F32));
}

static int l_equal(lua_State *L) {
    dpo_tensor *a = dpo_l_checktensor(L, 1), *b = dpo_l_checktensor(L, 2);
    lua_pushboolean(L, dpo_tensor_equal(a, b));
    return 1;
}

/* a:allclose(b [, rtol=1e-5 [, atol=1e-8]]) */
static int l_allclose(lua_State *L) {
    dpo_tensor *a = dpo_l_checktensor(L, 1), *b;
    double rtol = luaL_optnumber(L, 3, 1e-5), atol = luaL_optnumber(L, 4, 1e-8);
    dpo_error e;
    int r;
    b = operand(L, 2, a);
    luaL_argcheck(L, rtol >= 0, 3, "rtol must be >= 0");
    luaL_argcheck(L, atol >= 0, 4, "atol must be >= 0");
    r = dpo_tensor_allclose(a, b, rtol, atol, &e);
    if (r < 0) return dpo_l_raise(L, &e, 1);
    lua_pushboolean(L, r);
    return 1;
}

/* t:free(): release the data now; later use raises */
static int l_free(lua_State *L) {
    return l_gc(L);
}

/* ---- indexing ops --------------------------------------------------------------- */

/* An index argument: an int32 tensor, or a table of integers (made a tensor in place). */
static dpo_tensor *index_arg(lua_State *L, int i) {
    dpo_tensor *t = dpo_l_totensor(L, i);
    if (t) return t;
    if (lua_istable(L, i)) {
        lua_Integer n = luaL_len(L, i);
        int64_t len = n;
        dpo_error e;
        t = dpo_tensor_new(DPO_I32, 1, &len, &e);
        dpo_l_pushtensor(L, t, &e, 0);
        for (lua_Integer k = 1; k <= n; k++) {
            int isint;
            lua_Integer v;
            lua_geti(L, i, k);
            v = lua_tointegerx(L, -1, &isint);
            if (!isint || v < INT32_MIN || v > INT32_MAX)
                luaL_argerror(L, i, lua_pushfstring(L, "element %I is not an int32", k));
            dpo_i32(t)[k - 1] = (int32_t)v;
            lua_pop(L, 1);
        }
        lua_replace(L, i);
        return t;
    }
    luaL_typeerror(L, i, "dpo.Tensor or table of integers");
    return NULL;
}

/* t:gather(dim, index): out[..i..] = t[..index[..i..]..] along dim (1-based index) */
static int l_gather(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int dim = dpo_l_checkdim(L, 2, t->ndim);
    dpo_tensor *idx = index_arg(L, 3);
    dpo_error e;
    dpo_ag_params p = {0};
    p.dim = dim, p.saved = idx, p.index_base = 1;
    return push_rec1(L, dpo_gather(t, dim, idx, 1, &e), &e, 2, DPO_OP_GATHER, t, &p);
}

/* t:index_select(dim, index): entries along dim picked by a 1-D index (1-based) */
static int l_index_select(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    int dim = dpo_l_checkdim(L, 2, t->ndim);
    dpo_tensor *idx = index_arg(L, 3);
    dpo_error e;
    dpo_ag_params p = {0};
    p.dim = dim, p.saved = idx, p.index_base = 1;
    return push_rec1(L, dpo_index_select(t, dim, idx, 1, &e), &e, 2, DPO_OP_INDEX_SELECT, t, &p);
}

/* The tensors of the list at i, checked; returns how many (kept on the stack by the list). */
static int tensor_list(lua_State *L, int i, dpo_tensor **ts, int max) {
    lua_Integer n;
    luaL_checktype(L, i, LUA_TTABLE);
    n = luaL_len(L, i);
    if (n < 1) luaL_argerror(L, i, "expected a non-empty list of tensors");
    if (n > max) luaL_argerror(L, i, lua_pushfstring(L, "at most %d tensors", max));
    for (lua_Integer k = 1; k <= n; k++) {
        lua_geti(L, i, k);
        if (luaL_testudata(L, -1, DPO_TENSOR_MT) && !*(dpo_tensor **)lua_touserdata(L, -1))
            luaL_argerror(L, i, lua_pushfstring(L, "element %I is a freed dpo.Tensor", k));
        ts[k - 1] = dpo_l_totensor(L, -1);
        if (!ts[k - 1])
            luaL_argerror(L, i,
                          lua_pushfstring(L, "element %I is a %s, expected dpo.Tensor", k,
                                          luaL_typename(L, -1)));
        lua_pop(L, 1);
    }
    return (int)n;
}

#define MAXLIST 256

/* dpo.cat({tensors}, [dim=1]) */
static int l_cat(lua_State *L) {
    dpo_tensor *ts[MAXLIST];
    int n = tensor_list(L, 1, ts, MAXLIST);
    int dim = lua_isnoneornil(L, 2) ? 0 : dpo_l_checkdim(L, 2, ts[0]->ndim);
    dpo_error e;
    if (ts[0]->ndim == 0) return luaL_argerror(L, 1, "cannot concatenate scalar tensors");
    dpo_ag_params p = {0};
    p.dim = dim;
    return push_rec(L, dpo_cat(ts, n, dim, &e), &e, 1, DPO_OP_CAT, ts, n, &p);
}

/* dpo.stack({tensors}, [dim=1]): a new dim of size #tensors */
static int l_stack(lua_State *L) {
    dpo_tensor *ts[MAXLIST];
    int n = tensor_list(L, 1, ts, MAXLIST);
    int dim = lua_isnoneornil(L, 2) ? 0 : dpo_l_checkdim(L, 2, ts[0]->ndim + 1);
    dpo_error e;
    dpo_ag_params p = {0};
    p.dim = dim;
    return push_rec(L, dpo_stack(ts, n, dim, &e), &e, 1, DPO_OP_STACK, ts, n, &p);
}

static int l_is_tensor(lua_State *L) {
    dpo_tensor **p = (dpo_tensor **)luaL_testudata(L, 1, DPO_TENSOR_MT);
    lua_pushboolean(L, p != NULL && *p != NULL); /* a freed tensor is no longer one */
    return 1;
}

/* ---- registration ---------------------------------------------------------------- */

static const luaL_Reg meta[] = {
    {"__gc", l_gc},   {"__close", l_gc}, {"__tostring", l_tostring}, {"__newindex", l_newindex},
    {"__len", l_len}, {"__add", l_add},  {"__sub", l_sub},           {"__mul", l_mul},
    {"__div", l_div}, {"__pow", l_pow},  {"__unm", l_unm},           {NULL, NULL},
};

static const luaL_Reg methods[] = {
    {"abs", l_abs},
    {"add", l_add},
    {"allclose", l_allclose},
    {"argmax", l_argmax},
    {"argmin", l_argmin},
    {"clamp", l_clamp},
    {"clone", l_clone},
    {"contiguous", l_contiguous},
    {"copy", l_copy},
    {"dim", l_dim},
    {"div", l_div},
    {"dtype", l_dtype},
    {"eq", l_eq},
    {"equal", l_equal},
    {"exp", l_exp},
    {"fill", l_fill},
    {"float", l_float},
    {"free", l_free},
    {"gather", l_gather},
    {"ge", l_ge},
    {"gelu", l_gelu},
    {"gt", l_gt},
    {"index_select", l_index_select},
    {"int", l_int},
    {"is_contiguous", l_is_contiguous},
    {"item", l_item},
    {"le", l_le},
    {"log", l_log},
    {"log_softmax", l_log_softmax},
    {"logsigmoid", l_logsigmoid},
    {"logsumexp", l_logsumexp},
    {"lt", l_lt},
    {"matmul", l_matmul},
    {"max", l_max},
    {"maximum", l_maximum},
    {"mean", l_mean},
    {"min", l_min},
    {"minimum", l_minimum},
    {"mm", l_mm},
    {"mul", l_mul},
    {"narrow", l_narrow},
    {"ne", l_ne},
    {"neg", l_neg},
    {"numel", l_numel},
    {"pow", l_pow},
    {"relu", l_relu},
    {"reshape", l_reshape},
    {"rsqrt", l_rsqrt},
    {"select", l_select},
    {"shape", l_shape},
    {"sigmoid", l_sigmoid},
    {"silu", l_silu},
    {"size", l_size},
    {"softmax", l_softmax},
    {"softplus", l_softplus},
    {"sqrt", l_sqrt},
    {"squeeze", l_squeeze},
    {"sub", l_sub},
    {"sum", l_sum},
    {"t", l_t},
    {"tanh", l_tanh},
    {"to", l_to},
    {"totable", l_totable},
    {"transpose", l_transpose},
    {"unsqueeze", l_unsqueeze},
    {"view", l_view},
    {"zero", l_zero},
    {NULL, NULL},
};

static const luaL_Reg functions[] = {
    {"arange", l_arange},
    {"cat", l_cat},
    {"empty", l_empty},
    {"eye", l_eye},
    {"full", l_full},
    {"initial_seed", l_initial_seed},
    {"is_tensor", l_is_tensor},
    {"manual_seed", l_manual_seed},
    {"ones", l_ones},
    {"rand", l_rand},
    {"randint", l_randint},
    {"randn", l_randn},
    {"rng_state", l_rng_state},
    {"set_rng_state", l_set_rng_state},
    {"stack", l_stack},
    {"tensor", l_tensor},
    {"where", l_where},
    {"zeros", l_zeros},
    {NULL, NULL},
};

/*
** Fill the core table on top of the stack: the constructors, plus
** `Tensor` (the method table) for dpo's init.lua to export.
*/
int dpo_open_tensor(lua_State *L) {
    dpo_rng_seed(&default_rng, DEFAULT_SEED);
    luaL_setfuncs(L, functions, 0);
    luaL_newmetatable(L, DPO_TENSOR_MT); /* core mt */
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods); /* core mt methods */
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__methods");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_index, 1);
    lua_setfield(L, -3, "__index");
    lua_setfield(L, -3, "Tensor"); /* core.Tensor = methods */
    lua_pop(L, 1);
    return 0;
}
