#!/usr/bin/env bash
# Builds the libFuzzer target for the chat template interpreter with Debian's clang (ASan + UBSan) and runs it for
# about FUZZ_SECONDS (default 30), seeded with the templates and snippets of tests/chat/data. Any crash, leak,
# sanitizer report, timeout or oversized allocation fails the script and leaves the input in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
source scripts/fuzz-lib.sh

build_fuzzer fuzz_chat_template fuzz/fuzz_chat_template.cpp src/chat/*.cpp src/util/utf8.cpp src/gguf/gguf.cpp \
  src/gguf/known_keys.cpp src/gguf/writer.cpp src/gguf/ggml_type.cpp src/io/file_type.cpp src/io/output_file.cpp

corpus=$(new_corpus chat-corpus)
cp tests/chat/data/templates/*.jinja tests/chat/data/snippets/*.jinja "$corpus/"

# -timeout: the interpreter's work budget ends every template well within it. -malloc_limit_mb: strings are
# capped at 16 MiB, so no single allocation comes near 256 MiB.
run_fuzzer fuzz_chat_template "$corpus" fuzz/chat_template.dict -max_len=16384 -timeout=20 -malloc_limit_mb=256 \
  -rss_limit_mb=2048
