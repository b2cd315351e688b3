/*
** repl.c: the interactive prompt of `dpolua`.
** Lines come from GNU readline (prompts "dpo> " and "..> "); evaluation
** follows lua.c's loadline: a line is first compiled as "return <line>" so
** an expression prints its values, else as a statement, and a chunk whose
** syntax error ends in "<eof>" keeps reading continuation lines. Results go
** to require("dpo.repl").show(...) and `_` holds the first one. Tab asks
** require("dpo.repl").complete(word) for candidates. History is kept in
** $DPOLUA_HISTORY or ~/.dpolua_history, appended after every chunk.
** Ctrl-C at the prompt drops the line being typed; during evaluation it
** raises "interrupted!" (call.c's hook) and the prompt comes back.
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <lauxlib.h>
#include <lua.h>

#include "base/common.h"
#include "cli/call.h"
#include "cli/repl.h"

#define PROMPT1       "dpo> "
#define PROMPT2       "..> "
#define HISTORY_LINES 1000
#define REPL_MODULE   "dpo.repl"

#define EOFMARK "<eof>"
#define marklen (sizeof(EOFMARK) / sizeof(char) - 1)

/* what loadline returns besides a lua_load status */
#define LOAD_EOF  (-1) /* end of input: leave the REPL */
#define LOAD_SKIP (-2) /* Ctrl-C while typing: nothing to run */

static lua_State *replL = NULL;   /* the state Tab completion asks */
static char *history_file = NULL; /* malloc'd; NULL when there is none */
static volatile sig_atomic_t prompt_sigint = 0;
static int input_interrupted = 0; /* why the last pushline failed */

/*
** {==================================================================
** Reading a line (readline's callback interface, so Ctrl-C can leave it)
** ===================================================================
*/

static char *line_read = NULL;
static int line_done = 0;

static void on_prompt_sigint(int sig) {
    (void)sig;
    prompt_sigint = 1;
}

static void on_line(char *line) {
    line_read = line;
    line_done = 1;
    rl_callback_handler_remove();
}

/*
** Read one line with `prompt` into *line (malloc'd, no newline).
** Returns 1 on success, 0 at end of input or on Ctrl-C (then
** input_interrupted is set).
*/
static int read_line(const char *prompt, char **line) {
    input_interrupted = 0;
    prompt_sigint = 0;
    line_read = NULL;
    line_done = 0;
    rl_callback_handler_install(prompt, on_line);
    while (!line_done) {
        fd_set fds;
        int fd = fileno(rl_instream ? rl_instream : stdin);
        if (prompt_sigint) { /* drop the line, start a fresh prompt */
            rl_echo_signal_char(SIGINT);
            rl_free_line_state();
            rl_callback_sigcleanup();
            rl_cleanup_after_signal();
            rl_callback_handler_remove();
            fputc('\n', rl_outstream ? rl_outstream : stdout);
            fflush(rl_outstream ? rl_outstream : stdout);
            prompt_sigint = 0;
            input_interrupted = 1;
            return 0;
        }
        FD_ZERO(&fds);
        FD_SET(fd, &fds);
        if (select(fd + 1, &fds, NULL, NULL, NULL) < 0) {
            if (errno == EINTR) continue; /* Ctrl-C is checked above */
            rl_callback_handler_remove();
            return 0; /* treat a broken input as its end */
        }
        rl_callback_read_char();
    }
    *line = line_read;
    return line_read != NULL;
}

/* }================================================================== */

/*
** {==================================================================
** History
** ===================================================================
*/

static void history_open(void) {
    const char *f = getenv("DPOLUA_HISTORY");
    history_comment_char = '#'; /* timestamp lines mark where an entry starts, */
    history_write_timestamps = 1;
    history_multiline_entries = 1; /* so multi-line chunks come back whole */
    if (f != NULL && f[0] != '\0') {
        history_file = strdup(f);
    } else {
        const char *home = getenv("HOME");
        if (home != NULL && home[0] != '\0') {
            size_t n = strlen(home) + sizeof "/.dpolua_history";
            history_file = malloc(n);
            if (history_file) snprintf(history_file, n, "%s/.dpolua_history", home);
        }
    }
    if (history_file) read_history(history_file);
}

/*
** Keep a non-blank chunk in memory and append it to the file at once, so
** a crash loses nothing typed before it.
*/
static void history_save(const char *chunk) {
    const char *p = chunk;
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (*p == '\0') return;
    add_history(chunk);
    if (history_file != NULL) {
        int fd = open(history_file, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            close(fd);
            append_history(1, history_file);
        }
    }
}

static void history_close(void) {
    if (history_file != NULL) history_truncate_file(history_file, HISTORY_LINES);
    clear_history();
    free(history_file);
    history_file = NULL;
}

/* }================================================================== */

/*
** {==================================================================
** The dpo.repl module (show, complete)
** ===================================================================
*/

/*
** Push require("dpo.repl") (taken from package.loaded when already there,
** so a user's reassignment of `require` does not break the prompt).
*/
static void push_module(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, REPL_MODULE) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_getglobal(L, "require");
        lua_pushliteral(L, REPL_MODULE);
        lua_call(L, 1, 1);
    }
    lua_remove(L, -2); /* loaded table */
}

/* show(...): every argument is a value to print. */
static int l_show(lua_State *L) {
    int n = lua_gettop(L);
    push_module(L);
    lua_getfield(L, -1, "show");
    lua_remove(L, -2); /* module */
    lua_insert(L, 1);  /* function under the values */
    lua_call(L, n, 0);
    return 0;
}

/*
** Show the values left on the stack by a chunk and set `_` to the first.
*/
static void print_results(lua_State *L) {
    int n = lua_gettop(L);
    if (n == 0) return;
    lua_pushvalue(L, 1);
    lua_setglobal(L, "_");
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_pushcfunction(L, l_show);
    lua_insert(L, 1);
    if (dpo_docall(L, n, 0) != LUA_OK)
        dpo_message(lua_pushfstring(L, "error calling 'show' (%s)", lua_tostring(L, -1)));
    lua_settop(L, 0);
}

/* complete(word) as a protected C function: the word comes as a light userdata. */
static int l_complete(lua_State *L) {
    const char *word = (const char *)lua_touserdata(L, 1);
    push_module(L);
    lua_getfield(L, -1, "complete");
    lua_pushstring(L, word);
    lua_call(L, 1, 1);
    return 1;
}

static char **matches = NULL; /* candidates of the current completion */
static size_t nmatches = 0, nextmatch = 0;

static void free_matches(void) {
    for (size_t i = 0; i < nmatches; i++) free(matches[i]);
    free(matches);
    matches = NULL;
    nmatches = nextmatch = 0;
}

/* readline's generator: hands over the candidates one by one (readline frees them). */
static char *next_match(const char *text, int state) {
    (void)text;
    if (state == 0) nextmatch = 0;
    if (nextmatch < nmatches) {
        char *m = matches[nextmatch];
        matches[nextmatch++] = NULL;
        return m;
    }
    return NULL;
}

/*
** Tab: `text` is the word before the cursor (identifier characters, '.'
** and ':', given the break characters set in dpo_repl). The candidates are
** whole words that carry their own suffix, so nothing is appended and no
** file names are tried. Any error in Lua only means no candidates.
*/
static char **attempt_completion(const char *text, int start, int end) {
    lua_State *L = replL;
    int top;
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1;
    rl_completion_append_character = '\0';
    free_matches();
    if (L == NULL || !lua_checkstack(L, 4)) return NULL;
    top = lua_gettop(L);
    lua_pushcfunction(L, l_complete);
    lua_pushlightuserdata(L, (void *)text);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TTABLE) {
        size_t n = (size_t)lua_rawlen(L, -1);
        matches = calloc(n + 1, sizeof *matches);
        for (size_t i = 1; matches != NULL && i <= n; i++) {
            if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING) {
                char *m = strdup(lua_tostring(L, -1));
                if (m != NULL) matches[nmatches++] = m;
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
    if (nmatches == 0) return NULL;
    return rl_completion_matches(text, next_match);
}

/* }================================================================== */

/*
** {==================================================================
** Read-eval-print (lua.c's loadline)
** ===================================================================
*/

/*
** Read a line and push it. Returns 0 at end of input or on Ctrl-C.
*/
static int pushline(lua_State *L, int firstline) {
    char *b;
    size_t l;
    if (!read_line(firstline ? PROMPT1 : PROMPT2, &b)) return 0;
    l = strlen(b);
    if (l > 0 && b[l - 1] == '\n') b[--l] = '\0';
    if (firstline && b[0] == '=') /* for compatibility with 5.2, '=x' prints x */
        lua_pushfstring(L, "return %s", b + 1);
    else
        lua_pushlstring(L, b, l);
    free(b);
    return 1;
}

/*
** Try to compile the line on the stack as "return <line>;". On success,
** the line goes to history and the function replaces it.
*/
static int addreturn(lua_State *L) {
    const char *line = lua_tostring(L, -1);
    const char *retline = lua_pushfstring(L, "return %s;", line);
    int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
    if (status == LUA_OK) {
        lua_remove(L, -2); /* remove modified line */
        history_save(line);
    } else {
        lua_pop(L, 2); /* pop result from 'luaL_loadbuffer' and modified line */
    }
    return status;
}

/*
** Whether a compile status is a syntax error at the end of the chunk
** (then the chunk may go on in the next line); pops the message if so.
*/
static int incomplete(lua_State *L, int status) {
    if (status == LUA_ERRSYNTAX) {
        size_t lmsg;
        const char *msg = lua_tolstring(L, -1, &lmsg);
        if (lmsg >= marklen && strcmp(msg + lmsg - marklen, EOFMARK) == 0) {
            lua_pop(L, 1);
            return 1;
        }
    }
    return 0;
}

/*
** Compile the line at index 1 as a statement, reading continuation lines
** while it is incomplete. Returns the lua_load status with its result on
** top, LOAD_SKIP when Ctrl-C dropped the chunk, LOAD_EOF at end of input.
*/
static int multiline(lua_State *L) {
    for (;;) {
        size_t len;
        const char *chunk = lua_tolstring(L, 1, &len);
        int status = luaL_loadbuffer(L, chunk, len, "=stdin");
        if (!incomplete(L, status)) {
            history_save(chunk);
            return status;
        }
        if (!pushline(L, 0)) {
            if (input_interrupted) return LOAD_SKIP;
            history_save(chunk);
            return LOAD_EOF;
        }
        lua_pushliteral(L, "\n"); /* add newline... */
        lua_insert(L, -2);        /* ...between the two lines */
        lua_concat(L, 3);         /* join them */
    }
}

/*
** Read a chunk and compile it. On LUA_OK the function is the only value
** on the stack; on an error status its message is.
*/
static int loadline(lua_State *L) {
    int status;
    lua_settop(L, 0);
    if (!pushline(L, 1)) return input_interrupted ? LOAD_SKIP : LOAD_EOF;
    if ((status = addreturn(L)) != LUA_OK) status = multiline(L);
    if (status == LOAD_SKIP || status == LOAD_EOF)
        lua_settop(L, 0);
    else
        lua_remove(L, 1); /* remove line from the stack */
    return status;
}

void dpo_repl(lua_State *L) {
    int status;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_prompt_sigint; /* no SA_RESTART: select must see EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);

    replL = L;
    rl_readline_name = "dpolua";
    rl_catch_signals = 0; /* SIGINT at the prompt is ours */
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{}()[],+-*/%^~#";
    rl_completer_word_break_characters = rl_basic_word_break_characters;
    rl_attempted_completion_function = attempt_completion;
    history_open();

    while ((status = loadline(L)) != LOAD_EOF) {
        dpo_interrupted = 0;
        if (status == LOAD_SKIP) continue;
        if (status == LUA_OK) status = dpo_docall(L, 0, LUA_MULTRET);
        if (status == LUA_OK)
            print_results(L);
        else
            dpo_report(L, status);
        dpo_interrupted = 0;
    }
    lua_settop(L, 0);
    fputc('\n', stdout);
    fflush(stdout);

    history_close();
    free_matches();
    rl_attempted_completion_function = NULL;
    replL = NULL;
    sigaction(SIGINT, &old, NULL);
}

/* }================================================================== */
