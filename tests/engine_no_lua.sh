#!/bin/sh
# The engine is compiled without Lua's include path: with the include flags
# dpocore is built with, an engine header compiles and lua.h does not.
# Usage: sh engine_no_lua.sh CC "-I... -I..." (dpocore's include flags)
set -u
cc=$1
flags=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "tensor/tensor.h"\nint dpo_probe(void);\nint dpo_probe(void) { return DPO_MAXDIM; }\n' >"$tmp/engine.c"
printf '#include "tensor/tensor.h"\n#include <lua.h>\nint dpo_probe(void);\nint dpo_probe(void) { return LUA_OK; }\n' >"$tmp/lua.c"
# shellcheck disable=SC2086
if ! $cc $flags -fsyntax-only "$tmp/engine.c" 2>"$tmp/err"; then
    echo "an engine file did not compile with dpocore's flags:"; cat "$tmp/err"; exit 1
fi
# shellcheck disable=SC2086
if $cc $flags -fsyntax-only "$tmp/lua.c" 2>"$tmp/err"; then
    echo "an engine file including lua.h compiled with dpocore's flags ($flags)"; exit 1
fi
if ! grep -q "lua.h" "$tmp/err"; then
    echo "the lua.h probe failed for another reason:"; cat "$tmp/err"; exit 1
fi
echo "engine_no_lua: tensor/tensor.h compiles, lua.h is not found"
echo "1 passed, 0 failed"
