#!/bin/sh
# `cmake --install` into a temporary prefix, then run the installed dpolua
# from another directory: it must find its own Lua modules under
# PREFIX/share/dpolua/lua, not the source tree's.
# usage: install_check.sh BUILD_DIR
set -eu
build=$1
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
cd /
out=$("$prefix/bin/dpolua" -e '
  local c = dpo.ones(2, 2):mm(dpo.ones(2, 2))
  assert(c:equal(dpo.full({2, 2}, 2)))
  print(package.searchpath("dpo", package.path))')
case "$out" in
  "$prefix"/share/dpolua/lua/dpo/init.lua) echo "install: 1 passed, 0 failed" ;;
  *) echo "installed dpolua loaded its modules from '$out', not from $prefix" >&2; exit 1 ;;
esac
