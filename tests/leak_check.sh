#!/bin/sh
# The sanitizer build's leak check: short runs of recipes/hh.lua (SFT, DPO,
# evaluation, samples, checkpoints) under LeakSanitizer, which reports any
# allocation nothing points to when the process ends (dpolua closes its Lua
# state first, so every object's __gc has run by then). Passes when each run
# succeeds and no sanitizer reports anything.
#     sh tests/leak_check.sh DPOLUA        (from the top of the repository)
set -u
dpolua=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dpo_leak.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
OMP_WAIT_POLICY=PASSIVE # as dpolua would set, without running itself again
export ASAN_OPTIONS OMP_WAIT_POLICY
status=0
# a small data directory: the sample's held-out file serves as both splits
mkdir "$tmp/data" &&
    cp examples/data/hh-sample/test.jsonl.gz "$tmp/data/train.jsonl.gz" &&
    cp examples/data/hh-sample/test.jsonl.gz "$tmp/data/test.jsonl.gz" || exit 1

run() { # name, then the recipe's options
    name=$1
    shift
    "$dpolua" recipes/hh.lua --data="$tmp/data" --sft.steps=3 --dpo.steps=3 --eval_pairs=8 --samples=1 \
        --max_new_tokens=4 --progress=off --out="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || grep -q -e "Sanitizer" -e "runtime error" "$tmp/$name.log" ||
        { [ ! -f "$tmp/$name/checkpoint-6/model.safetensors" ] &&
            [ ! -f "$tmp/$name/checkpoint-6/adapter_model.safetensors" ]; }; then
        echo "leak check $name ($*): FAILED (exit $rc)"
        cat "$tmp/$name.log"
        status=1
    else
        echo "leak check $name ($*): no leak"
    fi
}

run bytes --tiny.tokenizer=bytes
run bpe --tiny.tokenizer=bpe --tiny.vocab_size=300 --dpo.ref=precompute --save_every=2
run lora --tiny.tokenizer=bytes --lora.r=4 --lora.dropout=0.1 --lora.merge --save_every=2
exit $status
