#!/usr/bin/env bash
# Builds the libFuzzer target for the GGUF reader with Debian's clang (ASan + UBSan) and runs it for about
# FUZZ_SECONDS (default 60), seeded from the fixtures' headers and a few small complete files. Any crash, leak,
# sanitizer report or oversized allocation fails the script and leaves the input in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
fixtures=${TESSERA_FIXTURES:-../shared/fixtures}
out=build-fuzz
mkdir -p "$out"

clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Isrc fuzz/fuzz_gguf.cpp src/gguf/gguf.cpp src/gguf/known_keys.cpp src/gguf/writer.cpp src/gguf/ggml_type.cpp \
  src/io/file_type.cpp src/io/output_file.cpp \
  $(pkg-config --cflags --libs fmt 2>/dev/null || echo -lfmt) -o "$out/fuzz_gguf"

# Seeds: the first 64 KiB of every fixture (header, metadata and tensor infos) plus small complete files with
# tensors, so the fuzzer reaches the tensor data checks too.
corpus="$out/corpus"
rm -rf "$corpus"
mkdir -p "$corpus"
for f in "$fixtures"/models/*.gguf "$fixtures"/trained/*.gguf "$fixtures"/vocab/*.gguf; do
  head -c 65536 "$f" > "$corpus/$(basename "$f")"
done
python3 fuzz/make_seeds.py "$corpus"

# -malloc_limit_mb: inputs are at most 64 KiB, so no single allocation may come near 64 MiB.
ASAN_OPTIONS=detect_leaks=1 "$out/fuzz_gguf" "$corpus" -dict=fuzz/gguf.dict -max_len=65536 \
  -max_total_time="$seconds" -malloc_limit_mb=64 -rss_limit_mb=1024 -artifact_prefix="$out/" -print_final_stats=1
