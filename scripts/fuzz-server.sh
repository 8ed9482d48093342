#!/usr/bin/env bash
# Builds the libFuzzer target for the server's OpenAI request parser and response builders (src/server/openai.h)
# with Debian's clang (ASan + UBSan) and runs it for about FUZZ_SECONDS (default 30), seeded with chat and
# completions bodies that use every field. Any crash, leak, sanitizer report or exception other than ApiError
# fails the script and leaves the input in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
source scripts/fuzz-lib.sh

# openai.cpp needs only the sampler's validation from the engine.
build_fuzzer fuzz_openai_request fuzz/fuzz_openai_request.cpp src/server/openai.cpp src/engine/sampler.cpp

# Seeds: the first byte picks the endpoint by its lowest bit ('b': chat/completions, 'a': completions).
corpus=$(new_corpus corpus-server)
seed() { printf '%s%s' "$2" "$3" > "$corpus/$1"; }
seed chat-minimal b '{"model":"m","messages":[{"role":"user","content":"Hi"}]}'
seed chat-all b '{"model":"stories260K","messages":[{"role":"system","content":"Be brief."},{"role":"developer","content":"No lists."},{"role":"user","content":[{"type":"text","text":"Once upon"},{"type":"text","text":" a time"}]},{"role":"assistant","content":null},{"role":"tool","content":"42"}],"max_tokens":16,"max_completion_tokens":8,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"presence_penalty":0.5,"frequency_penalty":-0.5,"repeat_penalty":1.1,"seed":42,"n":3,"stop":["\n","The end"],"logit_bias":{"0":-100,"13":5.5,"511":100},"logprobs":true,"top_logprobs":5,"stream":true,"stream_options":{"include_usage":true},"context_shift":true,"user":"ignored"}'
seed chat-greedy b '{"messages":[{"role":"user","content":"Tell me a story"}],"temperature":0,"seed":18446744073709551615,"stop":"."}'
seed chat-nulls b '{"messages":[{"role":"user","content":"x"}],"max_tokens":null,"temperature":null,"stop":null,"logit_bias":null,"stream":false,"logprobs":false,"context_shift":false}'
seed chat-bad b '{"messages":[{"role":"user","content":"x"}],"n":17,"top_logprobs":21,"stop":["a","b","c","d","e"],"logit_bias":{"-1":1,"1e3":1,"512":1},"temperature":-1,"top_p":1e999}'
seed chat-tiny b '{"messages":[{"role":"user","content":"x"}],"top_p":1e-50,"repeat_penalty":5e-324,"temperature":1e-300}'
seed chat-unicode b '{"messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \u0000 日本"}],"stop":["\ud83d"]}'
seed completion-string a '{"model":"m","prompt":"Once upon a time","max_tokens":32,"temperature":0.8,"logprobs":3,"echo":false}'
seed completion-array a '{"prompt":["Once upon a time","There was"],"n":2,"max_tokens":4,"top_p":0.5,"seed":-7,"stop":["\n"],"logit_bias":{"1":-1.5},"stream":true,"stream_options":{"include_usage":false},"context_shift":false}'
seed completion-all a '{"model":"stories260K","prompt":"Lily","max_tokens":2147483647,"max_completion_tokens":1,"temperature":2,"top_p":1,"top_k":512,"min_p":1,"presence_penalty":-2,"frequency_penalty":2,"repeat_penalty":10,"seed":0,"n":16,"stop":"x","logit_bias":{"0":0},"logprobs":20,"stream":true,"stream_options":{"include_usage":true},"context_shift":true}'
seed nested a '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]'

run_fuzzer fuzz_openai_request "$corpus" fuzz/openai.dict -max_len=4096 -malloc_limit_mb=64 -rss_limit_mb=1024
