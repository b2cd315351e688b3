/*
** fuzz_hh.c: the data path a user's files take, on arbitrary files.
**
** Each input is a whole file, plain or gzip (the reader knows gzip by its
** magic bytes). First the C line reader (core/data/jsonl.c) reads it to the end:
** lines never hold a newline, their numbers count up by one, an error is
** sticky. Then a Lua state with the dpo modules, made once, reads it as
** dpo.data does for a user: dpo.data.jsonl, dpo.data.hh (with and without
** the prompt check) and dpo.data.pairs; the pairs found are cleaned with
** dpo.filters.hh_clean, tokenized with the byte tokenizer (short limits, so
** truncation happens) and batched. Bad records are skipped and counted, so
** any Lua error there is a failure; with on_error = "error" the error must
** be "file:line: reason" or "file: reason". The Lua lines that run count as
** coverage (below), so the fuzzer also steers towards new paths of the Lua code.
*/
#include "fuzz.h"
#include "data/jsonl.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_dpo_core(lua_State *L); /* l_init.c */

static lua_State *L;
static int run_ref; /* the Lua function run(path) in the registry */

/*
** libFuzzer sees the coverage of the instrumented C code only; the Lua lines
** that ran are counted here, in counters libFuzzer takes as coverage too, so
** that inputs reaching new lines of data.lua and filters.lua are kept. A line
** is known by its chunk's source string (interned, so its address is stable)
** and its number.
*/
#define LUA_COUNTERS 8192
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_lines[LUA_COUNTERS];

static void count_line(lua_State *L1, lua_Debug *ar) {
    uintptr_t h;
    if (!lua_getinfo(L1, "S", ar)) return;
    h = ((uintptr_t)ar->source >> 3) * 0x9E3779B97F4A7C15u + (uintptr_t)ar->currentline;
    h ^= h >> 29;
    if (lua_lines[h % LUA_COUNTERS] < 255) lua_lines[h % LUA_COUNTERS]++;
}

static const char run_lua[] =
    "local data = require 'dpo.data'\n"
    "local filters = require 'dpo.filters'\n"
    "local tok = require('dpo.core').tokenizer.bytes()\n"
    "local function use(ds)\n"
    "  if not ds or #ds == 0 then return end\n"
    "  tostring(ds:stats())\n"
    "  ds = ds:filter(filters.hh_clean()):filter(filters.dedupe())\n"
    "  local t = ds:tokenize(tok, {max_length = 24, max_prompt_length = 8})\n"
    "  for _ in t:batches(3) do end\n"
    "  for _ in t:batches(2, {sft = true, shuffle = true, seed = 1}) do end\n"
    "  tostring(t:stats())\n"
    "end\n"
    "return function(path)\n"
    "  local quiet = {warn = false}\n"
    "  local n = 0\n"
    "  for rec, where in data.jsonl(path, quiet) do\n"
    "    assert(where:sub(1, #path + 1) == path .. ':', where)\n"
    "    n = n + 1\n"
    "  end\n"
    "  use(data.hh(path, quiet))\n"
    "  use(data.hh(path, {warn = false, check_prompt = false}))\n"
    "  use(data.pairs(path, quiet))\n"
    "  local ok, err = pcall(data.hh, path, {on_error = 'error'})\n"
    "  if not ok then\n"
    "    assert(type(err) == 'string' and err:sub(1, #path + 1) == path .. ':', err)\n"
    "  end\n"
    "  return n\n"
    "end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_dpo_core);
    lua_setfield(L, -2, "dpo.core");
    lua_pop(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", DPO_FUZZ_LUADIR, DPO_FUZZ_LUADIR,
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    if (luaL_loadstring(L, run_lua) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_hh: %s\n", lua_tostring(L, -1));
        abort();
    }
    run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_sethook(L, count_line, LUA_MASKLINE, 0);
    return 0;
}

/* The C reader over the whole file, with its promises checked. */
static void read_lines(const char *path) {
    dpo_error e;
    dpo_jsonl *r = dpo_jsonl_open(path, &e);
    const char *line;
    size_t n;
    int64_t lineno, last = 0;
    int rc;
    FUZZ_CHECK(r != NULL);
    while ((rc = dpo_jsonl_next(r, &line, &n, &lineno, &e)) == 1) {
        FUZZ_CHECK(lineno == last + 1);
        FUZZ_CHECK(memchr(line, '\n', n) == NULL);
        FUZZ_CHECK(n <= dpo_jsonl_buffer_size(r));
        last = lineno;
    }
    if (rc < 0) {
        FUZZ_CHECK(e.status == DPO_ERR_IO && lineno == last + 1);
        FUZZ_CHECK(dpo_jsonl_next(r, &line, &n, &lineno, &e) == -1);
    } else {
        FUZZ_CHECK(rc == 0 && dpo_jsonl_next(r, &line, &n, &lineno, &e) == 0);
    }
    dpo_jsonl_close(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("in.jsonl", data, size);
    read_lines(path);
    lua_rawgeti(L, LUA_REGISTRYINDEX, run_ref);
    lua_pushstring(L, path);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_hh: a Lua error on a data file: %s\n", lua_tostring(L, -1));
        abort();
    }
    /* all of this input's garbage goes now: an input that allocates more
    ** than it frees makes libFuzzer look for leaks, which costs */
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
