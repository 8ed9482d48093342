#!/usr/bin/env bash
# Builds Tessera and runs `tessera run` on $MODEL, by default models/stories260K.gguf: a small trained model kept
# in the repository (models/README.md), so the command prints a short English story offline on a fresh machine.
# Extra arguments go to `tessera run` (default: a short prompt and 64 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target tessera
model=${MODEL:-models/stories260K.gguf}
if [ $# -eq 0 ]; then
  set -- -p "Once upon a time" -n 64
fi
exec build/tessera run -m "$model" "$@"
