#!/usr/bin/env bash
# Builds the libFuzzer target for the GGUF reader with Debian's clang (ASan + UBSan) and runs it for about
# FUZZ_SECONDS (default 60), seeded from the fixtures' headers and a few small complete files. Any crash, leak,
# sanitizer report or oversized allocation fails the script and leaves the input in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
fixtures=${TESSERA_FIXTURES:-../shared/fixtures}
source scripts/fuzz-lib.sh

build_fuzzer fuzz_gguf fuzz/fuzz_gguf.cpp src/gguf/gguf.cpp src/gguf/known_keys.cpp src/gguf/writer.cpp \
  src/gguf/ggml_type.cpp src/io/file_type.cpp src/io/output_file.cpp

# Seeds: the first 64 KiB of every fixture (header, metadata and tensor infos) plus small complete files with
# tensors, so the fuzzer reaches the tensor data checks too.
corpus=$(new_corpus corpus)
for f in "$fixtures"/models/*.gguf "$fixtures"/trained/*.gguf "$fixtures"/vocab/*.gguf; do
  head -c 65536 "$f" > "$corpus/$(basename "$f")"
done
python3 fuzz/make_seeds.py "$corpus"

# -malloc_limit_mb: inputs are at most 64 KiB, so no single allocation may come near 64 MiB.
run_fuzzer fuzz_gguf "$corpus" fuzz/gguf.dict -max_len=65536 -malloc_limit_mb=64 -rss_limit_mb=1024
