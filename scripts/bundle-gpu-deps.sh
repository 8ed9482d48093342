#!/usr/bin/env bash
# Packs what the lent GPU machine lacks into .deps/ (git-ignored), so a device call with carry [".deps"] can
# build and test there: the PCRE2 and pkgconf packages, and those of libcurl, OpenSSL, cpp-httplib and libedit with
# their direct libraries (the machine has no network; the hub, server and chat link them), Google Benchmark
# (for bench/cuda_*), the fixtures
# the CUDA tests read, and .deps/gpu-build.sh, which unpacks the packages into .deps/prefix (never into /) and
# builds tessera, tessera_cuda and test_cuda with -j16 for sm_90. The sources built there are a snapshot of the
# last commit (.deps/tree), so other engineers' unfinished edits in the shared working tree cannot break the
# build; commit before bundling, or name your own uncommitted paths in TESSERA_BUNDLE_OVERLAY (space-separated
# files or folders, copied from the working tree over the snapshot). TESSERA_BUNDLE_BASELINE=<commit> also packs
# that commit into .deps/baseline, for before/after measurements in one device call
# (TESSERA_TREE=baseline bash .deps/gpu-build.sh builds it). TESSERA_BUNDLE_DIR (default .deps; a name starting
# with .deps, so that git ignores it) lets two engineers keep separate bundles.
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures=${TESSERA_FIXTURES:-$(pwd)/../shared/fixtures}
bundle=${TESSERA_BUNDLE_DIR:-.deps}
case "$bundle" in
  .deps*) ;;
  *) echo "TESSERA_BUNDLE_DIR must start with .deps (git ignores those folders)" >&2; exit 1 ;;
esac

rm -rf "$bundle"
mkdir -p "$bundle"/debs "$bundle"/fixtures/models "$bundle"/fixtures/trained
(cd "$bundle"/debs && apt-get download libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 \
  pkgconf-bin libpkgconf3 \
  libcurl4-openssl-dev libcurl4 libssl-dev libssl3 libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev libbrotli1 \
  zlib1g-dev libedit-dev libedit2 libbsd-dev libbsd0 libmd-dev libmd0 libncurses-dev libtinfo6 libncurses6 \
  libncursesw6 libbenchmark-dev libbenchmark1debian)

# The tiny-llama family (not the 8 MB v32k model) and the trained stories260K model with their goldens.
cp "$fixtures"/models/tiny-llama-{F32,F16,Q8_0,Q6_K,Q5_K_M,Q5_1,Q5_0,Q4_K_M,Q4_1,Q4_0,Q3_K_M,Q2_K}.* "$bundle"/fixtures/models/
cp "$fixtures"/models/tiny-llama-v32k-Q4_K_M.* "$bundle"/fixtures/models/
cp "$fixtures"/trained/stories260K* "$bundle"/fixtures/trained/
cp "$fixtures"/README.md "$bundle"/fixtures/
mkdir -p "$bundle"/tree
git archive HEAD | tar -x -C "$bundle"/tree
for path in ${TESSERA_BUNDLE_OVERLAY:-}; do
  rm -rf "$bundle/tree/$path"
  mkdir -p "$bundle/tree/$(dirname "$path")"
  cp -r "$path" "$bundle/tree/$path"
done
if [ -n "${TESSERA_BUNDLE_BASELINE:-}" ]; then
  mkdir -p "$bundle"/baseline
  git archive "$TESSERA_BUNDLE_BASELINE" | tar -x -C "$bundle"/baseline
fi

cat > "$bundle"/gpu-build.sh <<'BUILD'
#!/usr/bin/env bash
# Runs on the GPU machine: unpack the carried packages, configure and build the snapshot in <bundle>/tree, or
# <bundle>/$TESSERA_TREE (build folder build-gpu in it), where <bundle> is this script's folder; TESSERA_TARGETS
# replaces the default targets (tessera test_cuda). Extra arguments go to the CMake configure step.
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
src=$root/${TESSERA_TREE:-tree}
prefix=$root/prefix
rm -rf "$prefix"
mkdir -p "$prefix"
for deb in "$root"/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
libdir=$prefix/usr/lib/x86_64-linux-gnu
# The .pc files name prefix=/usr; point them at the unpacked tree.
sed -i "s|^prefix=.*|prefix=$prefix/usr|" "$libdir"/pkgconfig/*.pc
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_PATH=$libdir/pkgconfig
pkg_config=$(command -v pkg-config || echo "$prefix/usr/bin/pkgconf")
cmake -S "$src" -B "$src/build-gpu" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$prefix/usr" -DPKG_CONFIG_EXECUTABLE="$pkg_config" \
  -DTESSERA_FIXTURES_DIR="$root/fixtures" "$@" >/dev/null
cmake --build "$src/build-gpu" -j16 --target ${TESSERA_TARGETS:-tessera test_cuda} ${TESSERA_EXTRA_TARGETS:-}
BUILD
chmod +x "$bundle"/gpu-build.sh
du -sh "$bundle"
