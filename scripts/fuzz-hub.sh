#!/usr/bin/env bash
# Builds the libFuzzer target for the hub's reply, manifest and reference parsers with Debian's clang
# (ASan + UBSan) and runs it for about FUZZ_SECONDS (default 30), seeded with replies shaped like the Hub's.
# Any crash, leak or sanitizer report fails the script and leaves the input in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
source scripts/fuzz-lib.sh

build_fuzzer fuzz_hub_listing fuzz/fuzz_hub_listing.cpp src/hub/replies.cpp src/hub/store.cpp src/hub/reference.cpp

corpus=$(new_corpus corpus-hub)
sha=9fbe2ac0c6cd5f6d4b3f1a0e6d1b2c3d4e5f60718293a4b5c6d7e8f901234567
printf '%s' '[{"type":"file","oid":"a3f1","size":1519,"path":".gitattributes"},{"type":"directory","oid":"7","size":0,"path":"sub"},{"type":"file","oid":"5e","size":134,"path":"sub/m.Q4_K_M.gguf","lfs":{"oid":"'$sha'","size":668788096,"pointerSize":134}}]' > "$corpus/listing"
printf '%s' '<https://huggingface.co/api/models/o/r/tree/main?recursive=true&cursor=abc>; rel="next"' > "$corpus/link"
printf '%s' '"'$sha'"' > "$corpus/etag"
printf '%s' 'W/"'$sha'"' > "$corpus/weak-etag"
printf '%s' 'bytes 400000-1967615/1967616' > "$corpus/content-range"
printf 'X-Linked-Size: 668788096\r\n' > "$corpus/header"
printf '%s' '{"url":"https://huggingface.co/o/r/resolve/main/m.gguf","size":5,"sha256":"'$sha'","commit":"abc","downloaded_at":"2026-12-05T10:00:00Z"}' > "$corpus/manifest"
printf '%s' 'hf://TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf' > "$corpus/reference"
printf '%s' 'TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M' > "$corpus/reference-tag"

run_fuzzer fuzz_hub_listing "$corpus" fuzz/hub.dict -max_len=4096 -malloc_limit_mb=64 -rss_limit_mb=1024
