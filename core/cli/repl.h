/*
** repl.h: the interactive prompt. repl.c owns line reading, history,
** completion and printing; it runs each chunk through call.h, as main.c
** runs scripts.
*/
#ifndef DPO_REPL_H
#define DPO_REPL_H

#include <lua.h>

/*
** Read-eval-print loop on stdin until end of input. Lines are read with GNU
** readline (prompts "dpo> " and "..> "), results are shown through
** require("dpo.repl").show(...), Tab asks require("dpo.repl").complete(word).
** Returns when the user types Ctrl-D; the stack is left empty (repl.c).
*/
void dpo_repl(lua_State *L);

#endif
