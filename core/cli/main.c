/*
** main.c: the `dpolua` command, shaped like Lua 5.4's lua.c.
** `main` creates the state and runs `pmain` under lua_pcall, so option
** handling is protected too. Before any user code runs, pmain opens the
** standard libraries, preloads the C module `dpo.core`, puts the dpo Lua
** modules first on package.path and sets the global `dpo = require "dpo"`.
** Options, the global `arg`, LUA_INIT, Ctrl-C and error reports behave as in
** `lua`, so scripts, shebang lines and tools written for `lua` work unchanged.
** The interactive prompt lives in repl.c; protected calls and error
** reports, which both use, in call.c.
** Started by mpirun (or srun), dpolua joins the job's world before anything
** runs (base/dist.h), gives each rank its share of the host's cores, and at
** the end leaves it: MPI_Finalize after success, MPI_Abort after an error,
** so a rank that fails ends the whole job at once instead of leaving the
** others waiting in a collective.
*/
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "base/common.h"
#include "base/dist.h"
#include "cli/call.h"
#include "cli/repl.h"

int luaopen_dpo_core(lua_State *L); /* l_init.c */

#define LUA_INIT_VAR       "LUA_INIT"
#define LUA_INITVARVERSION LUA_INIT_VAR "_" LUA_VERSION_MAJOR "_" LUA_VERSION_MINOR

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
** {==================================================================
** The job's world (mpirun)
** ===================================================================
*/

/*
** os.exit under mpirun: a success leaves the world with the others
** (MPI_Finalize) and exits as Lua's os.exit does; a failure ends the whole
** job (MPI_Abort with that status), since the other ranks may be waiting for
** this one. A stop every rank agreed on calls dpo.dist.finalize() first and
** then exits with its status alone.
*/
static int dist_exit(lua_State *L) {
    int status = EXIT_SUCCESS;
    if (lua_isboolean(L, 1))
        status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
    else if (!lua_isnoneornil(L, 1))
        status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
    fflush(stdout);
    fflush(stderr);
    if (status == EXIT_SUCCESS)
        dpo_dist_finalize();
    else
        dpo_dist_abort(status);
    lua_pushvalue(L, lua_upvalueindex(1)); /* Lua's own os.exit */
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 0);
    return 0;
}

static void wrap_os_exit(lua_State *L) {
    if (!dpo_dist_active()) return;
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "exit");
    lua_pushcclosure(L, dist_exit, 1);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
}

/*
** Join the world when a launcher started this process. Unless
** OMP_NUM_THREADS says otherwise, each rank computes on its share of the
** host's cores (cores / ranks on this host), never more than the cores it
** is bound to (mpirun binds each rank to one core unless told
** --bind-to none or --map-by ...:PE=n). Returns 0 after printing why not.
*/
static int dist_start(void) {
    dpo_error e;
    if (!dpo_dist_launched()) return 1;
    if (dpo_dist_init(&e) != DPO_OK) {
        dpo_message(e.msg);
        return 0;
    }
    if (getenv("OMP_NUM_THREADS") == NULL) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int n = (int)(cores > 0 ? cores : 1) / dpo_dist_local_size();
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < n) n = CPU_COUNT(&set);
        if (n < 1) n = 1;
        omp_set_num_threads(n);
        openblas_set_num_threads(n);
    }
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
    wrap_os_exit(L);
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
    if (!dist_start()) return EXIT_FAILURE;
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
    if (!(result && status == LUA_OK) && !dpo_error_exit_code())
        dpo_dist_abort(EXIT_FAILURE); /* the others may be waiting for this rank */
    lua_close(L);
    dpo_dist_finalize(); /* (a stop with an exit code was agreed by every rank) */
    if (result && status == LUA_OK) return EXIT_SUCCESS;
    return dpo_error_exit_code() ? dpo_error_exit_code() : EXIT_FAILURE;
}
