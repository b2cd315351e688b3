#!/bin/sh
# layers_check.sh must catch each kind of offence: run it on a small tree of
# made-up files, four of them wrong and one right, and compare what it says.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/core/base" "$tmp/core/tensor" "$tmp/core/model" "$tmp/core/text" \
    "$tmp/core/data" "$tmp/core/bind"
printf '#include "base/common.h"\n#include "tensor/tensor.h"\n' >"$tmp/core/base/up.c"
printf '#include <stdio.h>\n#include <lua5.4/lauxlib.h>\n' >"$tmp/core/model/lua.c"
printf '#include "tensor/tensor.h"\n#include "model/gpt.h"\n' >"$tmp/core/text/beside.c"
printf '#include "tensor.h"\n' >"$tmp/core/data/bare.c"
printf '#include <lua.h>\n#include "model/gpt.h"\n#include "bind/l_util.h"\n' >"$tmp/core/bind/fine.c"
if out=$(sh "$here/layers_check.sh" "$tmp/core"); then
    echo "layers_check passed a tree with four offences:"; echo "$out"; exit 1
fi
expect='base/up.c:2: base/ includes "tensor/tensor.h": tensor/ is not below base/
data/bare.c:1: includes "tensor.h" without its folder (write "<layer>/tensor.h")
model/lua.c:2: includes Lua'"'"'s lua5.4/lauxlib.h, but only bind/ and cli/ may see Lua
text/beside.c:2: text/ includes "model/gpt.h": model/ is not below text/
layers_check: 5 files, 4 offences'
got=$(printf '%s\n' "$out" | sort)
want=$(printf '%s\n' "$expect" | sort)
if [ "$got" != "$want" ]; then
    echo "layers_check said:"; echo "$out"; echo "expected:"; echo "$expect"; exit 1
fi
echo "1 passed, 0 failed"
