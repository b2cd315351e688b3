#!/bin/sh
# Regenerates tests/fixtures/llama_engine: small random Llama-family models saved by
# dpolua, and PyTorch's log-probabilities and gradients for them
# (tests/ref/llama_engine_ref.py; needs python3-torch). Run from the repository root:
#   tests/ref/make_llama_engine_ref.sh [path/to/dpolua]
set -eu
DPOLUA=${1:-build/dpolua}
rm -rf tests/fixtures/llama_engine
dirs=$("$DPOLUA" tests/ref/llama_engine_fixtures.lua tests/fixtures/llama_engine)
# shellcheck disable=SC2086
/usr/bin/python3 tests/ref/llama_engine_ref.py $dirs
