/*
** l_util.h: helpers shared by the Lua bindings (core/bind/l_*.c).
** Metatable names, argument checks and the one way an engine error
** becomes a Lua error.
*/
#ifndef DPO_L_UTIL_H
#define DPO_L_UTIL_H

#include <lauxlib.h>
#include <lua.h>

#include "base/common.h"
#include "model/lora.h"
#include "tensor/tensor.h"

#define DPO_TENSOR_MT "dpo.Tensor"

/* Raise the engine error e: "bad argument #k to 'fn' (msg)" when e->arg
** names an operand (argbase + e->arg - 1 is its stack index), else msg alone. */
int dpo_l_raise(lua_State *L, const dpo_error *e, int argbase);

/* The tensor at stack index i, or a "dpo.Tensor expected" argument error. */
dpo_tensor *dpo_l_checktensor(lua_State *L, int i);
/* NULL when the value at i is not a tensor; raises for a freed tensor. */
dpo_tensor *dpo_l_totensor(lua_State *L, int i);
/* Push t as a new userdata, taking over the caller's reference. A NULL t
** raises e (with argbase as for dpo_l_raise). */
void dpo_l_pushtensor(lua_State *L, dpo_tensor *t, const dpo_error *e, int argbase);

/* A 1-based dimension argument in 1..ndim (negatives count from the end),
** returned 0-based. */
int dpo_l_checkdim(lua_State *L, int i, int ndim);

/* Refuse the keys of the option table at t that are not in `known` (a
** NULL-terminated list): "fn: unknown option 'x'" (catches typos). */
void dpo_l_check_keys(lua_State *L, int t, const char *fn, const char *const *known);

/* Option k of the table at t, a finite number (def when nil): else "fn:
** option 'k' must be a finite number (got ...)". */
double dpo_l_numfield(lua_State *L, int t, const char *fn, const char *k, double def);

/* The adapter options of m:lora_apply{r, alpha, dropout, use_rslora, seed,
** target_modules} in the table at t, into c; returns how many target names
** it lists into *targets (0: "all-linear", every linear module). The list
** and the names are kept alive by values it leaves on the stack: use them
** before the caller returns or resets the stack. */
int dpo_l_lora_options(lua_State *L, int t, const char *fn, dpo_lora_config *c,
                       const char ***targets);
/* Push m:lora()'s table for the adapters lo: {r, alpha, dropout, use_rslora,
** scale, enabled, fan_in_fan_out, num_params, modules}. */
void dpo_l_push_lora(lua_State *L, const dpo_lora *lo, int fan_in_fan_out);

int dpo_open_tensor(lua_State *L);
int dpo_open_autograd(lua_State *L);
int dpo_open_optim(lua_State *L);
int dpo_open_io(lua_State *L);
int dpo_open_bpe(lua_State *L);
int dpo_open_gpt(lua_State *L);
int dpo_open_llama(lua_State *L);
int dpo_open_data(lua_State *L);
int dpo_open_dist(lua_State *L);

#endif
