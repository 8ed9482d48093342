#!/usr/bin/env bash
# Installs Tessera's build dependencies from Debian 12 packages. Idempotent: does nothing when all are present.
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libgtest-dev libgmock-dev libbenchmark-dev
  libfmt-dev nlohmann-json3-dev libcli11-dev libpcre2-dev
  libcurl4-openssl-dev libssl-dev libcpp-httplib-dev libedit-dev
  tmux  # drives `tessera chat` in a real terminal in tests/chat_cli
  clang libclang-rt-14-dev
  chromium
  python3-jinja2  # scripts/gen-chat-template-expected.py, which regenerates the chat template test data
)
# Node and npm run the web page's browser tests (tests/web) and the server's tests through the openai client
# (tests/server); a Node already installed from elsewhere is kept.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
