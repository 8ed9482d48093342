#!/usr/bin/env bash
# Builds Tessera and runs every test: the Release build's ctest suite, then the tests of the rooms that read
# untrusted input again under ASan+UBSan, then short libFuzzer runs on their parsers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
# ctest includes test_robustness (tests/robustness): the binary under special-file outputs, a full disk, a closed
# stdout, dead pipes, Ctrl-C, thread limits, directories and FIFOs as inputs, and broken models.
ctest --test-dir build --output-on-failure -j"$jobs"

# The test programs that read untrusted input, again under ASan + UBSan. Add a name here to cover another room;
# names whose tests/<room> folder does not exist are skipped.
sanitized_tests=(test_gguf test_tokenizer test_chat test_hub test_server)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_SANITIZE=ON -DTESSERA_CUDA=OFF \
  -DTESSERA_BUILD_BENCH=OFF
present_tests=()
for t in "${sanitized_tests[@]}"; do
  [[ -d tests/${t#test_} ]] && present_tests+=("$t")
done
cmake --build build-asan -j"$jobs" --target "${present_tests[@]}"
for t in "${present_tests[@]}"; do
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 "build-asan/tests/$t"
done

# Short libFuzzer runs on the GGUF reader, the Hub's replies, the chat template interpreter and the server's request
# bodies; they must find nothing.
scripts/fuzz-gguf.sh
scripts/fuzz-hub.sh
FUZZ_SECONDS=30 scripts/fuzz-chat-template.sh
FUZZ_SECONDS=30 scripts/fuzz-server.sh
