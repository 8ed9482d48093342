// Tokenizer throughput: 1 MB of English-like text with the Llama-2 SentencePiece vocabulary (and, for
// comparison, GPT-2's byte-level BPE). The fixtures folder comes from $TESSERA_FIXTURES, else ../shared/fixtures
// relative to the working directory or its parents.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace {

std::filesystem::path fixtures_dir() {
  if (const char* env = std::getenv("TESSERA_FIXTURES"); env && *env) return env;
  for (std::filesystem::path dir = std::filesystem::current_path(); !dir.empty(); dir = dir.parent_path()) {
    if (std::filesystem::exists(dir / "shared/fixtures")) return dir / "shared/fixtures";
    if (std::filesystem::exists(dir / "../shared/fixtures")) return dir / "../shared/fixtures";
    if (dir == dir.root_path()) break;
  }
  return "../shared/fixtures";
}

// Deterministic English-like prose: sentences of common words with commas, full stops and paragraph breaks.
std::string english_text(size_t bytes) {
  static const char* const words[] = {
      "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as",
      "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
      "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which",
      "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these",
      "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write",
      "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call",
      "who", "oil", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part",
      "village", "morning", "children", "garden", "quickly", "beautiful", "remember", "something", "together",
      "important", "understand", "government", "information", "development", "2024", "42", "don't", "it's"};
  const size_t n_words = sizeof words / sizeof words[0];
  std::string text;
  text.reserve(bytes + 64);
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&] {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return state;
  };
  bool sentence_start = true;
  while (text.size() < bytes) {
    std::string word = words[next() % n_words];
    if (sentence_start && word[0] >= 'a' && word[0] <= 'z') word[0] = static_cast<char>(word[0] - 'a' + 'A');
    text += word;
    sentence_start = false;
    uint64_t r = next() % 100;
    if (r < 7) {
      text += ". ";
      sentence_start = true;
    } else if (r < 12) {
      text += ", ";
    } else if (r < 13) {
      text += ".\n\n";
      sentence_start = true;
    } else {
      text += " ";
    }
  }
  text.resize(bytes);
  return text;
}

void tokenize_1mb(benchmark::State& state, const char* vocab) {
  const auto file = tessera::gguf::File::open((fixtures_dir() / "vocab" / vocab).string());
  const auto tok = tessera::tokenizer::Tokenizer::from_gguf(file);
  const std::string text = english_text(1 << 20);
  size_t n_tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = tok.encode(text, true, false);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n_tokens);
}

void BM_TokenizeLlama2Spm1MB(benchmark::State& state) { tokenize_1mb(state, "ggml-vocab-llama-spm.gguf"); }
void BM_TokenizeGpt2Bpe1MB(benchmark::State& state) { tokenize_1mb(state, "ggml-vocab-gpt-2.gguf"); }

void BM_DecodeLlama2Spm1MB(benchmark::State& state) {
  const auto file = tessera::gguf::File::open((fixtures_dir() / "vocab/ggml-vocab-llama-spm.gguf").string());
  const auto tok = tessera::tokenizer::Tokenizer::from_gguf(file);
  const std::vector<int32_t> ids = tok.encode(english_text(1 << 20), true, false);
  for (auto _ : state) benchmark::DoNotOptimize(tok.decode(ids));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ids.size()));
}

}  // namespace

BENCHMARK(BM_TokenizeLlama2Spm1MB)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_TokenizeGpt2Bpe1MB)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_DecodeLlama2Spm1MB)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
