/*
** repl.h: the interactive prompt and the front-end services it shares
** with main.c. main.c owns option handling, protected calls and error
** reports; repl.c owns line reading, history, completion and printing.
*/
#ifndef DPO_REPL_H
#define DPO_REPL_H

#include <lua.h>

/* The program name used in messages: "dpolua: msg". */
#define DPO_PROGNAME "dpolua"

/*
** Call the function below `narg` arguments on the stack, with a traceback
** message handler and Ctrl-C turned into the Lua error "interrupted!".
** Same contract as lua_pcall (main.c).
*/
int dpo_docall(lua_State *L, int narg, int nres);

/* Print "dpolua: msg" to stderr (main.c). */
void dpo_message(const char *msg);

/* If status is an error, print the message on top of the stack and pop it (main.c). */
int dpo_report(lua_State *L, int status);

/*
** Read-eval-print loop on stdin until end of input. Lines are read with GNU
** readline (prompts "dpo> " and "..> "), results are shown through
** require("dpo.repl").show(...), Tab asks require("dpo.repl").complete(word).
** Returns when the user types Ctrl-D; the stack is left empty (repl.c).
*/
void dpo_repl(lua_State *L);

#endif
