/*
** call.c: protected calls and error reports, shared by the command line
** (main.c) and the prompt (repl.c). Every chunk runs under a message
** handler that adds a traceback and notes an error object's exit_code, with
** Ctrl-C turned into the Lua error "interrupted!" (and the engine's
** dpo_interrupted flag set for long C loops).
*/
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "base/common.h"
#include "base/dist.h"
#include "cli/call.h"

static lua_State *globalL = NULL;

/*
** The exit status of an error object that carries one ({exit_code = 130,
** ...}, e.g. a training run stopped by Ctrl-C after saving): the process
** ends with it instead of 1.
*/
static int error_exit_code = 0;

int dpo_error_exit_code(void) {
    return error_exit_code;
}

/*
** Print "dpolua: msg" on stderr ("dpolua: rank N: msg" in a job of several
** processes).
*/
void dpo_message(const char *msg) {
    if (dpo_dist_size() > 1)
        fprintf(stderr, "%s: rank %d: %s\n", DPO_PROGNAME, dpo_dist_rank(), msg);
    else
        fprintf(stderr, "%s: %s\n", DPO_PROGNAME, msg);
    fflush(stderr);
}

/*
** Check whether 'status' is not OK and, if so, print the error message on
** the top of the stack and pop it.
*/
int dpo_report(lua_State *L, int status) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        dpo_message(msg ? msg : "(error object is not a string)");
        lua_pop(L, 1); /* remove message */
    }
    return status;
}

/*
** Message handler used to run all chunks: turn a non-string error object
** into a string (through __tostring when it has one, then without a
** traceback) or add a traceback; note an error object's exit_code.
*/
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    error_exit_code = 0;                /* the last error decides */
    if (lua_type(L, 1) == LUA_TTABLE) { /* a stop that names its exit status? */
        lua_pushliteral(L, "exit_code");
        if (lua_rawget(L, 1) == LUA_TNUMBER && lua_isinteger(L, -1)) {
            lua_Integer code = lua_tointeger(L, -1);
            if (code > 0 && code < 256) error_exit_code = (int)code;
        }
        lua_pop(L, 1);
    }
    if (msg == NULL) { /* is error object not a string? */
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1; /* that is the message */
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1); /* append a standard traceback */
    return 1;
}

/*
** Hook set by the signal handler to stop the interpreter at the next Lua
** instruction, call or return.
*/
static void lstop(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0); /* reset hook */
    luaL_error(L, "interrupted!");
}

/*
** SIGINT while Lua runs: set a hook that raises at the next Lua step and
** the engine flag that long C loops poll. The default action comes back,
** so a second Ctrl-C kills a process stuck where no hook can run.
*/
static void laction(int sig) {
    int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
    signal(sig, SIG_DFL);
    dpo_interrupted = 1;
    lua_sethook(globalL, lstop, flag, 1);
}

/*
** Run the function under its `narg` arguments with msghandler and the
** Ctrl-C hook in place; the previous SIGINT action (default, or the
** prompt's) is restored afterwards.
*/
int dpo_docall(lua_State *L, int narg, int nres) {
    int status;
    int base = lua_gettop(L) - narg; /* function index */
    struct sigaction sa, old;
    lua_pushcfunction(L, msghandler); /* push message handler */
    lua_insert(L, base);              /* put it under function and args */
    globalL = L;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = laction;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    status = lua_pcall(L, narg, nres, base);
    sigaction(SIGINT, &old, NULL);
    if (lua_gethook(L) == lstop) /* a Ctrl-C that came after the last step */
        lua_sethook(L, NULL, 0, 0);
    lua_remove(L, base); /* remove message handler from the stack */
    return status;
}
