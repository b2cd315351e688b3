/*
** l_dist.c: dpo.core.dist, the world of a data-parallel job in Lua (the
** engine side is base/dist.h). Opening it joins the world when a launcher
** started the process (dpolua itself has already done so in main).
**
**   dist.rank(), dist.size(), dist.is_main(), dist.local_size()
**   dist.barrier()
**   dist.allreduce(t [, op]) -> t      t: a float32 tensor or a list of them
**                                      (op "sum" | "mean" | "max", default sum)
**   dist.broadcast(t, root) -> t       t: a contiguous tensor, root's values
**   dist.allgather(v) -> {v0, v1, ...} v: a number, string, boolean or nil
**   dist.stats() -> {seconds, calls}   time spent in MPI so far
**   dist.finalize()                    leave the world (every rank together)
** A list given to allreduce is reduced in as few MPI calls as its memory
** allows: tensors that lie end to end (a model's gradients, which live in one
** arena) are one call.
*/
#include "bind/l_util.h"

#include <stdlib.h>
#include <string.h>

#include "base/dist.h"

static int l_rank(lua_State *L) {
    lua_pushinteger(L, dpo_dist_rank());
    return 1;
}

static int l_size(lua_State *L) {
    lua_pushinteger(L, dpo_dist_size());
    return 1;
}

static int l_is_main(lua_State *L) {
    lua_pushboolean(L, dpo_dist_rank() == 0);
    return 1;
}

static int l_local_size(lua_State *L) {
    lua_pushinteger(L, dpo_dist_local_size());
    return 1;
}

static int l_barrier(lua_State *L) {
    dpo_error e;
    if (dpo_dist_barrier(&e) != DPO_OK) return dpo_l_raise(L, &e, 0);
    return 0;
}

/* A float32 contiguous tensor at stack index i (argument `arg` in messages). */
static dpo_tensor *check_f32(lua_State *L, int i, int arg, const char *fn) {
    dpo_tensor *t = dpo_l_checktensor(L, i);
    if (t->dtype != DPO_F32 || !dpo_tensor_is_contiguous(t)) {
        char shape[DPO_SHAPELEN];
        dpo_shape_str(t->shape, t->ndim, shape, sizeof shape);
        luaL_error(
            L, "bad argument #%d to '%s' (a contiguous float32 tensor expected, got %s %s%s)", arg,
            fn, dpo_dtype_name(t->dtype), shape, dpo_tensor_is_contiguous(t) ? "" : " (strided)");
    }
    return t;
}

/* One span of floats to reduce. */
typedef struct span {
    float *p;
    size_t n;
} span;

static int by_address(const void *a, const void *b) {
    const float *x = ((const span *)a)->p, *y = ((const span *)b)->p;
    return (x > y) - (x < y);
}

/*
** Reduce the tensors of the list at index 1: sorted by address, tensors that
** lie end to end merge into one span, each span one allreduce. Overlapping
** tensors would be summed twice: an error.
*/
static void allreduce_list(lua_State *L, dpo_dist_op op) {
    lua_Integer n = luaL_len(L, 1);
    span *s;
    dpo_error e;
    int k = 0;
    if (n < 0 || n > (1 << 24)) luaL_argerror(L, 1, "too many tensors");
    if (n == 0) return;
    for (lua_Integer i = 1; i <= n; i++) { /* check every element first */
        lua_rawgeti(L, 1, i);
        if (dpo_l_totensor(L, -1) == NULL)
            luaL_error(L, "bad argument #1 to 'allreduce' (element %I is a %s, not a dpo.Tensor)",
                       i, luaL_typename(L, -1));
        check_f32(L, -1, 1, "allreduce");
        lua_pop(L, 1);
    }
    s = (span *)lua_newuserdatauv(L, sizeof(span) * (size_t)n, 0); /* freed by the collector */
    for (lua_Integer i = 1; i <= n; i++) {
        dpo_tensor *t;
        lua_rawgeti(L, 1, i);
        t = dpo_l_totensor(L, -1);
        s[i - 1].p = dpo_f32(t);
        s[i - 1].n = (size_t)dpo_tensor_numel(t);
        lua_pop(L, 1);
    }
    qsort(s, (size_t)n, sizeof(span), by_address);
    for (lua_Integer i = 1; i < n; i++) {
        span *last = &s[k];
        if (s[i].n == 0) continue;
        if (s[i].p < last->p + last->n)
            luaL_error(L, "bad argument #1 to 'allreduce' (tensors of the list overlap in memory)");
        if (s[i].p == last->p + last->n)
            last->n += s[i].n;
        else
            s[++k] = s[i];
    }
    for (int i = 0; i <= k; i++)
        if (dpo_dist_allreduce_f32(s[i].p, s[i].n, op, &e) != DPO_OK) dpo_l_raise(L, &e, 0);
    lua_pop(L, 1); /* the spans */
}

/* dist.allreduce(t | {t...} [, "sum" | "mean" | "max"]) -> the argument, reduced in place */
static int l_allreduce(lua_State *L) {
    static const char *const ops[] = {"sum", "mean", "max", NULL};
    dpo_dist_op op = (dpo_dist_op)luaL_checkoption(L, 2, "sum", ops);
    dpo_error e;
    if (lua_type(L, 1) == LUA_TTABLE) {
        allreduce_list(L, op);
    } else {
        dpo_tensor *t = check_f32(L, 1, 1, "allreduce");
        if (dpo_dist_allreduce_f32(dpo_f32(t), (size_t)dpo_tensor_numel(t), op, &e) != DPO_OK)
            return dpo_l_raise(L, &e, 1);
    }
    lua_settop(L, 1);
    return 1;
}

/* dist.broadcast(t, root) -> t, holding root's values on every rank */
static int l_broadcast(lua_State *L) {
    dpo_tensor *t = dpo_l_checktensor(L, 1);
    lua_Integer root = luaL_checkinteger(L, 2);
    dpo_error e;
    luaL_argcheck(L, root >= 0 && root < dpo_dist_size(), 2,
                  lua_pushfstring(L, "root must be a rank in 0..%d", dpo_dist_size() - 1));
    if (!dpo_tensor_is_contiguous(t)) {
        char shape[DPO_SHAPELEN];
        dpo_shape_str(t->shape, t->ndim, shape, sizeof shape);
        return luaL_argerror(
            L, 1, lua_pushfstring(L, "a contiguous tensor expected, got a strided %s", shape));
    }
    if (dpo_dist_broadcast((char *)t->storage->data + t->offset * 4,
                           (size_t)dpo_tensor_numel(t) * 4, (int)root, &e) != DPO_OK)
        return dpo_l_raise(L, &e, 1);
    lua_settop(L, 1);
    return 1;
}

/*
** The wire form of one value: a tag byte, then the payload ('i' an int64,
** 'f' a double, 's' the bytes, 't'/'F' true/false, 'n' nil). Same machine
** type everywhere: the ranks of a job run the same build.
*/
static void push_encoded(lua_State *L, int i) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    switch (lua_type(L, i)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, i)) {
            lua_Integer v = lua_tointeger(L, i);
            luaL_addchar(&b, 'i');
            luaL_addlstring(&b, (const char *)&v, sizeof v);
        } else {
            lua_Number v = lua_tonumber(L, i);
            luaL_addchar(&b, 'f');
            luaL_addlstring(&b, (const char *)&v, sizeof v);
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, i, &n);
        luaL_addchar(&b, 's');
        luaL_addlstring(&b, s, n);
        break;
    }
    case LUA_TBOOLEAN:
        luaL_addchar(&b, lua_toboolean(L, i) ? 't' : 'F');
        break;
    case LUA_TNIL:
    case LUA_TNONE:
        luaL_addchar(&b, 'n');
        break;
    default:
        luaL_argerror(L, i,
                      lua_pushfstring(L, "a number, string, boolean or nil expected, got %s",
                                      luaL_typename(L, i)));
    }
    luaL_pushresult(&b);
}

static void push_decoded(lua_State *L, const char *p, size_t n) {
    lua_Integer iv;
    lua_Number fv;
    switch (n ? p[0] : 'n') {
    case 'i':
        memcpy(&iv, p + 1, sizeof iv);
        lua_pushinteger(L, iv);
        break;
    case 'f':
        memcpy(&fv, p + 1, sizeof fv);
        lua_pushnumber(L, fv);
        break;
    case 's':
        lua_pushlstring(L, p + 1, n - 1);
        break;
    case 't':
    case 'F':
        lua_pushboolean(L, p[0] == 't');
        break;
    default:
        lua_pushnil(L);
    }
}

/* dist.allgather(v) -> {rank 0's v, rank 1's v, ...} */
static int l_allgather(lua_State *L) {
    size_t n, *lens, at = 0;
    const char *mine;
    char *all = NULL;
    dpo_error e;
    int size = dpo_dist_size();
    push_encoded(L, 1);
    mine = lua_tolstring(L, -1, &n);
    lens = (size_t *)lua_newuserdatauv(L, sizeof(size_t) * (size_t)size, 0);
    if (dpo_dist_allgather(mine, n, &all, lens, &e) != DPO_OK) return dpo_l_raise(L, &e, 1);
    lua_createtable(L, size, 0);
    for (int r = 0; r < size; r++) {
        push_decoded(L, all + at, lens[r]);
        lua_rawseti(L, -2, r + 1);
        at += lens[r];
    }
    dpo_free(all);
    return 1;
}

/* dist.stats() -> {seconds = s, calls = n}: time inside MPI since the start */
static int l_stats(lua_State *L) {
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, dpo_dist_seconds());
    lua_setfield(L, -2, "seconds");
    lua_pushinteger(L, dpo_dist_calls());
    lua_setfield(L, -2, "calls");
    return 1;
}

/* dist.finalize(): every rank leaves the world (before an agreed exit) */
static int l_finalize(lua_State *L) {
    (void)L;
    dpo_dist_finalize();
    return 0;
}

static const luaL_Reg functions[] = {
    {"rank", l_rank},
    {"size", l_size},
    {"is_main", l_is_main},
    {"local_size", l_local_size},
    {"barrier", l_barrier},
    {"allreduce", l_allreduce},
    {"broadcast", l_broadcast},
    {"allgather", l_allgather},
    {"stats", l_stats},
    {"finalize", l_finalize},
    {NULL, NULL},
};

/* Set core.dist (the table at the top of the stack is dpo.core). */
int dpo_open_dist(lua_State *L) {
    dpo_error e;
    if (dpo_dist_init(&e) != DPO_OK) return dpo_l_raise(L, &e, 0);
    lua_newtable(L);
    luaL_setfuncs(L, functions, 0);
    lua_setfield(L, -2, "dist");
    return 0;
}
