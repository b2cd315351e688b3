#!/bin/sh
# Run the libFuzzer targets one after the other, each for SECONDS:
#     sh tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET ...]     (make fuzz does this)
# TARGETs are names without "fuzz_" (default: all of them). Each reads its seed
# corpus tests/fuzz/corpus/TARGET (never written) and BUILD_DIR/fuzz/corpus/TARGET,
# where the inputs it finds new go and are kept for the next run. A crash, a
# leak, a sanitizer report or a hang saves the input under
# BUILD_DIR/fuzz/artifacts/TARGET/ and fails the run, naming that file; the
# whole log is BUILD_DIR/fuzz/logs/TARGET.log.
set -u

if [ $# -lt 2 ]; then
    echo "usage: sh tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET ...]" >&2
    exit 2
fi
build=$1
seconds=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
targets=${*:-safetensors hh tokenizer_json tokenizer_files encode}

out=$build/fuzz
tmp=$out/tmp
mkdir -p "$out/logs" "$tmp"
# the targets' temporary files (fuzz.h); a crashed process leaves its own
DPO_FUZZ_TMP=$(cd "$tmp" && pwd)
export DPO_FUZZ_TMP
# one thread: the machine may be shared, and the targets run one at a time
OMP_NUM_THREADS=1
OMP_WAIT_POLICY=PASSIVE
export OMP_NUM_THREADS OMP_WAIT_POLICY

failed=""
for t in $targets; do
    exe=$build/tests/fuzz/fuzz_$t
    if [ ! -x "$exe" ]; then
        echo "fuzz: no target $exe (build it with: make fuzz)" >&2
        exit 2
    fi
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
    log=$out/logs/$t.log
    set -- -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t/"
    [ -f "$src/$t.dict" ] && set -- "$@" -dict="$src/$t.dict"
    echo "fuzz_$t: ${seconds}s ..."
    "$exe" "$@" "$out/corpus/$t" "$src/corpus/$t" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        echo "fuzz_$t: ${runs:-?} runs in ${seconds}s, nothing found" \
            "($(ls "$out/corpus/$t" | wc -l) inputs of its own kept)"
    else
        input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        tail -n 60 "$log"
        echo "fuzz_$t: FAILED (exit $rc) after ${runs:-?} runs; input: ${input:-none saved}; log: $log"
        failed="$failed
  fuzz_$t: ${input:-no input saved, see $log}"
    fi
    rm -rf "$tmp"/dpo-fuzz.*
done

if [ -n "$failed" ]; then
    echo "fuzz: failures (the inputs that caused them):$failed"
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a failure"
