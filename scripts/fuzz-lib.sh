# Sourced by the fuzz-*.sh scripts, from the repository root, after they set `seconds`: builds a libFuzzer target
# with Debian's clang under ASan + UBSan and runs it, with its corpus, builds and failing inputs in build-fuzz/.
out=build-fuzz
mkdir -p "$out"

# build_fuzzer NAME SOURCE...: build-fuzz/NAME from the sources, linked with fmt.
build_fuzzer() {
  local name=$1
  shift
  clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Isrc "$@" $(pkg-config --cflags --libs fmt 2>/dev/null || echo -lfmt) -o "$out/$name"
}

# new_corpus NAME: prints the path of an emptied corpus folder build-fuzz/NAME.
new_corpus() {
  rm -rf "${out:?}/$1"
  mkdir -p "$out/$1"
  echo "$out/$1"
}

# run_fuzzer NAME CORPUS DICTIONARY LIBFUZZER-OPTION...: runs for `seconds`; a leak fails it as a crash does, and
# the input that failed it is left in build-fuzz/.
run_fuzzer() {
  local name=$1 corpus=$2 dictionary=$3
  shift 3
  ASAN_OPTIONS=detect_leaks=1 "$out/$name" "$corpus" -dict="$dictionary" -max_total_time="$seconds" \
    -artifact_prefix="$out/" -print_final_stats=1 "$@"
}
