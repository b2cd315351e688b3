#!/bin/sh
# Install the Debian packages dpolua needs to build, run and test (clang with
# its sanitizer and libFuzzer runtimes and its OpenMP for `make fuzz`; OpenMPI
# for data-parallel jobs under mpirun).
# As root: installs what is missing, non-interactively. Otherwise uses sudo
# when it can; when it cannot, prints the exact command and exits 1.
set -eu

PACKAGES="cmake make gcc pkg-config libc6-dev
liblua5.4-dev lua5.4 libopenblas-openmp-dev zlib1g-dev libreadline-dev libjansson-dev libutf8proc-dev libpcre2-dev
lua-busted lua-cjson lua-filesystem tmux python3-jinja2
libopenmpi-dev openmpi-bin
clang libclang-rt-14-dev libomp-dev"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done

# Node.js and npm: the tokenizer spec's reference data (tests/tokenizer/make_reference.sh)
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"

[ -z "$missing" ] && exit 0

echo "dpolua: installing missing Debian packages:$missing"
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
else
    echo "dpolua: not root and no sudo; run this as root, then try again:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
