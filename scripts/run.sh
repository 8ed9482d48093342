#!/usr/bin/env bash
# Builds Tessera and runs `tessera run` on $MODEL. Without MODEL it writes (once) a small model with RANDOM
# weights via `tessera synth`, so the command works offline on a fresh machine; its output is gibberish.
# Extra arguments go to `tessera run` (default: a short prompt and 64 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target tessera
model=${MODEL:-}
if [ -z "$model" ]; then
  model=build/demo-tiny-random.gguf
  if [ ! -f "$model" ]; then
    echo "MODEL is not set: writing a small demo model with random weights to $model (expect gibberish)." >&2
    build/tessera synth --preset tiny --type Q8_0 -o "$model"
  fi
  echo "Running the random-weight demo model; set MODEL=path/to/model.gguf to run a real one." >&2
fi
if [ $# -eq 0 ]; then
  set -- -p "Once upon a time" -n 64
fi
exec build/tessera run -m "$model" "$@"
