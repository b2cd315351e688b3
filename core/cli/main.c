/*
** main.c: the `dpolua` command, shaped like Lua 5.4's lua.c.
** `main` creates the state and runs `pmain` under lua_pcall, so option
** handling is protected too. Before any user code runs, pmain opens the
** standard libraries, preloads the C module `dpo.core`, puts the dpo Lua
** modules first on package.path and sets the global `dpo = require "dpo"`.
** Options, the global `arg`, LUA_INIT, Ctrl-C and error reports behave as in
** `lua`, so scripts, shebang lines and tools written for `lua` work unchanged.
** The interactive prompt lives in repl.c.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "base/common.h"
#include "cli/repl.h"

int luaopen_dpo_core(lua_State *L); /* l_init.c */

#define LUA_INIT_VAR       "LUA_INIT"
#define LUA_INITVARVERSION LUA_INIT_VAR "_" LUA_VERSION_MAJOR "_" LUA_VERSION_MINOR

static lua_State *globalL = NULL;

/*
** The exit status of an error object that carries one ({exit_code = 130,
** ...}, e.g. a training run stopped by Ctrl-C after saving): the process
** ends with it instead of 1.
*/
static int error_exit_code = 0;

/*
** {==================================================================
** Messages and protected calls
** ===================================================================
*/

/*
** Print "dpolua: msg" on stderr.
*/
void dpo_message(const char *msg) {
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

static int dochunk(lua_State *L, int status) {
    if (status == LUA_OK) status = dpo_docall(L, 0, 0);
    return dpo_report(L, status);
}

static int dofile(lua_State *L, const char *name) {
    return dochunk(L, luaL_loadfile(L, name));
}

static int dostring(lua_State *L, const char *s, const char *name) {
    return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* }================================================================== */

/*
** {==================================================================
** Version and usage
** ===================================================================
*/

/*
** One line: "dpolua 0.1.0 (Lua 5.4.4, OpenBLAS 0.3.21)". The BLAS part is
** the first two words of openblas_get_config(), which goes on with build
** options ("OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell ...").
*/
static void print_version(void) {
    const char *blas = openblas_get_config();
    const char *end = blas ? strchr(blas, ' ') : NULL;
    if (end != NULL) end = strchr(end + 1, ' ');
    if (blas == NULL) blas = "OpenBLAS";
    printf("%s %s (%s, %.*s)\n", DPO_PROGNAME, DPO_VERSION, LUA_RELEASE,
           end ? (int)(end - blas) : (int)strlen(blas), blas);
    fflush(stdout);
}

static void print_help(FILE *f) {
    fprintf(f,
            "usage: %s [options] [script [args]]\n"
            "Available options are:\n"
            "  -e stat   execute string 'stat'\n"
            "  -i        enter interactive mode after executing 'script'\n"
            "  -l mod    require library 'mod' into global 'mod'\n"
            "  -l g=mod  require library 'mod' into global 'g'\n"
            "  -v        show version information (also --version)\n"
            "  -E        ignore environment variables\n"
            "  -W        turn warnings on\n"
            "  -h        show this help (also --help)\n"
            "  --        stop handling options\n"
            "  -         stop handling options and execute stdin\n"
            "With no arguments: the interactive prompt on a terminal, else run stdin.\n"
            "The global 'dpo' holds the dpolua library in every script.\n"
            "Environment:\n"
            "  LUA_INIT, LUA_INIT_5_4   code (or @file) run before the script\n"
            "  LUA_PATH, LUA_CPATH      module search paths, as in lua\n"
            "  DPOLUA_PATH              searched before dpolua's own Lua modules\n"
            "  DPOLUA_HISTORY           prompt history file (default ~/.dpolua_history)\n"
            "  OMP_NUM_THREADS          number of compute threads\n",
            DPO_PROGNAME);
    fflush(f);
}

static void print_usage(const char *badoption) {
    fprintf(stderr, "%s: ", DPO_PROGNAME);
    if ((badoption[1] == 'e' || badoption[1] == 'l') && badoption[2] == '\0')
        fprintf(stderr, "'%s' needs argument\n", badoption);
    else
        fprintf(stderr, "unrecognized option '%s'\n", badoption);
    print_help(stderr);
}

/* }================================================================== */

/*
** {==================================================================
** Arguments
** ===================================================================
*/

/*
** Create the global 'arg': the script name at index 0, the interpreter
** and its options at negative indices, the script's arguments at 1..n.
** With no script, the interpreter's name is at index 0.
*/
static void createargtable(lua_State *L, char **argv, int argc, int script) {
    int i, narg;
    if (script == argc) script = 0; /* no script name? */
    narg = argc - (script + 1);     /* number of positive indices */
    lua_createtable(L, narg, script + 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

/*
** Push the script's arguments (arg[1] .. arg[#arg]) for its `...`.
*/
static int pushargs(lua_State *L) {
    int i, n;
    if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
    n = (int)luaL_len(L, -1);
    luaL_checkstack(L, n + 3, "too many arguments to script");
    for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
    lua_remove(L, -i); /* remove table from the stack */
    return n;
}

static int handle_script(lua_State *L, char **argv) {
    int status;
    const char *fname = argv[0];
    if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL; /* stdin */
    status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
        int n = pushargs(L);
        status = dpo_docall(L, n, LUA_MULTRET);
    }
    return dpo_report(L, status);
}

/*
** Require module 'modname' into global 'globname' ("-l mod" or "-l g=mod").
*/
static int dolibrary(lua_State *L, const char *spec) {
    int status;
    const char *eq = strchr(spec, '=');
    lua_getglobal(L, "require");
    lua_pushstring(L, eq ? eq + 1 : spec);
    status = dpo_docall(L, 1, 1); /* call 'require(modname)' */
    if (status == LUA_OK) {
        if (eq) {
            lua_pushlstring(L, spec, (size_t)(eq - spec));
            lua_insert(L, -2);
            lua_setglobal(L, lua_tostring(L, -2));
            lua_pop(L, 1); /* the name */
        } else {
            lua_setglobal(L, spec);
        }
    }
    return dpo_report(L, status);
}

/* bits of what collectargs saw */
#define has_error 1  /* bad option */
#define has_i     2  /* -i */
#define has_v     4  /* -v */
#define has_e     8  /* -e */
#define has_E     16 /* -E */
#define has_h     32 /* -h */

/*
** Traverse the options, checking which ones are present (lua.c's rules,
** plus -h, --help and --version). On return, '*first' is the index of the
** first argument that is not an option: the script, argc when there is
** none, or the bad option when has_error is returned.
*/
static int collectargs(char **argv, int *first) {
    int args = 0;
    int i;
    if (argv[0] == NULL) { /* no program name */
        *first = -1;
        return 0;
    }
    for (i = 1; argv[i] != NULL; i++) {
        *first = i;
        if (argv[i][0] != '-') return args; /* not an option: the script */
        switch (argv[i][1]) {
        case '-': /* '--' */
            if (strcmp(argv[i], "--help") == 0) {
                args |= has_h;
                break;
            }
            if (strcmp(argv[i], "--version") == 0) {
                args |= has_v;
                break;
            }
            if (argv[i][2] != '\0') return has_error; /* extra characters after '--' */
            *first = i + 1;
            return args;
        case '\0': /* '-': the script is stdin */
            return args;
        case 'E':
            if (argv[i][2] != '\0') return has_error;
            args |= has_E;
            break;
        case 'W':
            if (argv[i][2] != '\0') return has_error;
            break;
        case 'h':
            if (argv[i][2] != '\0') return has_error;
            args |= has_h;
            break;
        case 'i':
            args |= has_i; /* (-i implies -v) */
            /* FALLTHROUGH */
        case 'v':
            if (argv[i][2] != '\0') return has_error;
            args |= has_v;
            break;
        case 'e':
            args |= has_e;
            /* FALLTHROUGH */
        case 'l':                     /* both options need an argument */
            if (argv[i][2] == '\0') { /* no concatenated argument? */
                i++;
                if (argv[i] == NULL || argv[i][0] == '-') {
                    *first = i - 1; /* the option that lacks its argument */
                    return has_error;
                }
            }
            break;
        default: /* invalid option */
            return has_error;
        }
    }
    *first = 0; /* no script name */
    return args;
}

/*
** Run the options -e, -l and -W in order (they were checked by collectargs).
** Returns 0 when one of them failed.
*/
static int runargs(lua_State *L, char **argv, int n) {
    int i;
    for (i = 1; i < n; i++) {
        int option = argv[i][1];
        switch (option) {
        case 'e':
        case 'l': {
            int status;
            const char *extra = argv[i] + 2; /* both options need an argument */
            if (*extra == '\0') extra = argv[++i];
            status = (option == 'e') ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
            if (status != LUA_OK) return 0;
            break;
        }
        case 'W':
            lua_warning(L, "@on", 0); /* warnings on */
            break;
        }
    }
    return 1;
}

static int handle_luainit(lua_State *L) {
    const char *name = "=" LUA_INITVARVERSION;
    const char *init = getenv(name + 1);
    if (init == NULL) {
        name = "=" LUA_INIT_VAR;
        init = getenv(name + 1); /* try alternative name */
    }
    if (init == NULL) return LUA_OK;
    if (init[0] == '@') return dofile(L, init + 1);
    return dostring(L, init, name);
}

/* }================================================================== */

/*
** {==================================================================
** The dpo library
** ===================================================================
*/

/*
** Push the folder holding dpolua's Lua modules: the installed copy next to
** the executable (EXE/../share/dpolua/lua) when it has dpo/init.lua, else
** the source tree the executable was built from.
*/
static void push_luadir(lua_State *L) {
    char *exe = realpath("/proc/self/exe", NULL);
    if (exe != NULL) {
        const char *rel = DPO_INSTALL_LUADIR;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        lua_pushstring(L, exe);
        free(exe);
        if (rel[0] == '/')
            lua_pushstring(L, rel);
        else
            lua_pushfstring(L, "%s/../%s", lua_tostring(L, -1), rel);
        lua_remove(L, -2); /* the executable's folder */
        lua_pushfstring(L, "%s/dpo/init.lua", lua_tostring(L, -1));
        if (access(lua_tostring(L, -1), R_OK) == 0) {
            char *dir = realpath(lua_tostring(L, -2), NULL);
            lua_pop(L, 2);
            if (dir != NULL) {
                lua_pushstring(L, dir);
                free(dir);
                return;
            }
        } else {
            lua_pop(L, 2);
        }
    }
    lua_pushstring(L, DPO_SOURCE_LUADIR);
}

/*
** Preload `dpo.core`, put DPOLUA_PATH and the module folder in front of
** package.path, then set the global dpo = require "dpo".
*/
static int open_dpo(lua_State *L, int noenv) {
    const char *user = noenv ? NULL : getenv("DPOLUA_PATH");
    luaL_Buffer b;
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_dpo_core);
    lua_setfield(L, -2, "dpo.core");
    lua_pop(L, 1); /* preload table */

    lua_getglobal(L, "package");
    push_luadir(L);
    luaL_buffinit(L, &b);
    if (user != NULL && user[0] != '\0') {
        size_t n = strlen(user);
        while (n > 0 && user[n - 1] == ';') n--;
        luaL_addlstring(&b, user, n);
        luaL_addchar(&b, ';');
    }
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", lua_tostring(L, -2), lua_tostring(L, -2));
    luaL_addvalue(&b);
    lua_getfield(L, -3, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, -3, "path");
    lua_pop(L, 2); /* package, folder */

    lua_getglobal(L, "require");
    lua_pushliteral(L, "dpo");
    if (dpo_report(L, dpo_docall(L, 1, 1)) != LUA_OK) return 0;
    lua_setglobal(L, "dpo");
    return 1;
}

/* }================================================================== */

/*
** The whole program in protected mode: argc and argv come as arguments.
** Returns true when everything ran without error.
*/
static int pmain(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = (char **)lua_touserdata(L, 2);
    int script;
    int args = collectargs(argv, &script);
    int optlim = (script > 0) ? script : argc; /* first argv not an option */
    luaL_checkversion(L);
    if (args == has_error) {
        print_usage(argv[script]); /* 'script' is the index of the bad option */
        return 0;
    }
    if (args & has_h) {
        print_help(stdout);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (args & has_v) print_version();
    if (args & has_E) { /* signal for libraries to ignore env. vars. */
        lua_pushboolean(L, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    }
    luaL_openlibs(L);
    createargtable(L, argv, argc, script);
    lua_gc(L, LUA_GCRESTART);   /* start GC... */
    lua_gc(L, LUA_GCGEN, 0, 0); /* ...in generational mode */
    if (!open_dpo(L, args & has_E)) return 0;
    if (!(args & has_E) && handle_luainit(L) != LUA_OK) return 0;
    if (!runargs(L, argv, optlim)) return 0;
    if (script > 0 && script < argc && handle_script(L, argv + script) != LUA_OK) return 0;
    if (args & has_i) {
        dpo_repl(L);
    } else if ((script < 1 || script == argc) && !(args & (has_e | has_v))) {
        if (isatty(STDIN_FILENO)) { /* running in interactive mode? */
            print_version();
            dpo_repl(L);
        } else if (dofile(L, NULL) != LUA_OK) { /* execute stdin as a file */
            return 0;
        }
    }
    lua_pushboolean(L, 1); /* signal no errors */
    return 1;
}

/*
** OpenMP threads that wait for work spin by default, which is fastest on an
** idle machine and several times slower on a busy one (a second job, ctest
** -j, a browser): the spinning threads take the cores the work needs. dpolua
** waits passively unless told otherwise. The runtime reads the setting once,
** when it loads, so the first start sets it and runs itself again.
*/
static void wait_passively(char **argv) {
    if (getenv("OMP_WAIT_POLICY") != NULL || getenv("GOMP_SPINCOUNT") != NULL) return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: go on as we are */
}

int main(int argc, char **argv) {
    int status, result;
    lua_State *L;
    wait_passively(argv);
    L = luaL_newstate();
    if (L == NULL) {
        dpo_message("cannot create state: not enough memory");
        return EXIT_FAILURE;
    }
    lua_gc(L, LUA_GCSTOP);          /* stop GC while building state */
    lua_pushcfunction(L, &pmain);   /* to call 'pmain' in protected mode */
    lua_pushinteger(L, argc);       /* 1st argument */
    lua_pushlightuserdata(L, argv); /* 2nd argument */
    status = lua_pcall(L, 2, 1, 0); /* do the call */
    result = lua_toboolean(L, -1);  /* get result */
    dpo_report(L, status);
    lua_close(L);
    if (result && status == LUA_OK) return EXIT_SUCCESS;
    return error_exit_code ? error_exit_code : EXIT_FAILURE;
}
