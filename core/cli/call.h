/*
** call.h: the front end's protected calls and error reports (call.c), used
** by main.c for scripts and options and by repl.c for each line.
*/
#ifndef DPO_CALL_H
#define DPO_CALL_H

#include <lua.h>

/* The program name used in messages: "dpolua: msg". */
#define DPO_PROGNAME "dpolua"

/*
** Call the function below `narg` arguments on the stack, with a traceback
** message handler and Ctrl-C turned into the Lua error "interrupted!".
** Same contract as lua_pcall.
*/
int dpo_docall(lua_State *L, int narg, int nres);

/* Print "dpolua: msg" to stderr. */
void dpo_message(const char *msg);

/* If status is an error, print the message on top of the stack and pop it. */
int dpo_report(lua_State *L, int status);

/*
** The exit status named by the last error object that carried one
** ({exit_code = 130, ...}: a run stopped by a signal), or 0.
*/
int dpo_error_exit_code(void);

#endif
