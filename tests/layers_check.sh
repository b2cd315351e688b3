#!/bin/sh
# The layers of core/ (core/README.md), checked on the sources themselves:
#   base < tensor < model, text, data < bind < cli
# A file may include headers of its own folder and of the folders below it,
# never of a folder above or beside it; only bind/ and cli/ may include Lua's
# headers (lua.h, lauxlib.h, lualib.h, luaconf.h, in any directory). An
# engine header included without its folder ("tensor.h") is refused too:
# every dependency names its layer. Prints each offence; exits 1 on any.
# Usage: sh tests/layers_check.sh [core-dir]
set -u
core=${1:-$(dirname "$0")/../core}
[ -d "$core" ] || { echo "layers_check: no directory $core" >&2; exit 2; }

# rank of a folder: what it may include is a rank below its own (or itself)
rank() {
    case $1 in
        base) echo 0 ;; tensor) echo 1 ;; model | text | data) echo 2 ;;
        bind) echo 3 ;; cli) echo 4 ;; *) echo -1 ;;
    esac
}

bad=0
checked=0
for path in "$core"/*/*.c "$core"/*/*.h; do
    [ -f "$path" ] || continue
    dir=$(basename "$(dirname "$path")")
    file="$dir/$(basename "$path")"
    r=$(rank "$dir")
    checked=$((checked + 1))
    if [ "$r" -lt 0 ]; then
        echo "$file: folder '$dir' is not one of the layers (base tensor model text data bind cli)"
        bad=$((bad + 1))
        continue
    fi
    # each include line: number, kind (" or <) and the name
    out=$(awk '/^[ \t]*#[ \t]*include[ \t]*["<]/ {
                 s = $0; sub(/^[ \t]*#[ \t]*include[ \t]*/, "", s)
                 q = substr(s, 1, 1); s = substr(s, 2); sub(/[">].*$/, "", s)
                 print FNR " " q " " s }' "$path")
    [ -n "$out" ] || continue
    while read -r line q name; do
        base=$(basename "$name")
        case $base in
            lua.h | lauxlib.h | lualib.h | luaconf.h | lua.hpp)
                if [ "$r" -lt 3 ]; then
                    echo "$file:$line: includes Lua's $name, but only bind/ and cli/ may see Lua"
                    bad=$((bad + 1))
                fi
                continue ;;
        esac
        [ "$q" = '"' ] || continue
        case $name in
            */*) ;;
            *)
                echo "$file:$line: includes \"$name\" without its folder (write \"<layer>/$name\")"
                bad=$((bad + 1))
                continue ;;
        esac
        to=${name%%/*}
        tr=$(rank "$to")
        if [ "$tr" -lt 0 ]; then
            echo "$file:$line: includes \"$name\" from '$to', which is not a layer"
            bad=$((bad + 1))
        elif [ "$to" != "$dir" ] && [ "$tr" -ge "$r" ]; then
            echo "$file:$line: $dir/ includes \"$name\": $to/ is not below $dir/"
            bad=$((bad + 1))
        fi
    done <<LINES
$out
LINES
done

if [ "$checked" -eq 0 ]; then
    echo "layers_check: no sources under $core/*/" >&2
    exit 2
fi
echo "layers_check: $checked files, $bad offences"
[ "$bad" -eq 0 ]
