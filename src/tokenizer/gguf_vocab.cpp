// Tokenizer::from_gguf: the tokenizer.ggml.* keys -> Vocabulary, with llama.cpp's defaults and overrides.
#include <fmt/format.h>

#include <cstdint>
#include <stdexcept>

#include "gguf/gguf.h"
#include "tokenizer/impl.h"

namespace tessera::tokenizer {

Tokenizer Tokenizer::from_gguf(const gguf::File& file) {
  const std::optional<std::string> model = file.get_string("tokenizer.ggml.model");
  if (!model) throw std::runtime_error("the GGUF file has no tokenizer (tokenizer.ggml.model is missing)");
  ModelKind kind;
  if (*model == "llama") kind = ModelKind::SentencePiece;
  else if (*model == "gpt2") kind = ModelKind::BytePairEncoding;
  else if (*model == "bert") kind = ModelKind::WordPiece;
  else throw std::runtime_error(fmt::format("tokenizer model '{}' not supported", *model));

  Vocabulary v = Vocabulary::with_defaults(kind);
  v.model_name = file.get_string("general.name").value_or("");
  const std::vector<std::string>* tokens = file.get_string_array("tokenizer.ggml.tokens");
  if (!tokens) throw std::runtime_error("the GGUF file has no tokenizer.ggml.tokens");
  v.tokens = *tokens;
  if (auto scores = file.get_float_array("tokenizer.ggml.scores")) v.scores = std::move(*scores);
  if (auto types = file.get_int_array("tokenizer.ggml.token_type")) {
    v.types.reserve(types->size());
    for (int64_t t : *types)  // unknown codes read as Undefined, as in llama.cpp
      v.types.push_back(t >= 1 && t <= 6 ? static_cast<TokenType>(t) : TokenType::Undefined);
  }
  if (kind == ModelKind::BytePairEncoding) {
    const std::vector<std::string>* merges = file.get_string_array("tokenizer.ggml.merges");
    if (!merges) throw std::runtime_error("byte-level BPE tokenizer without tokenizer.ggml.merges");
    v.merges = *merges;
    v.pre = file.get_string("tokenizer.ggml.pre").value_or("default");
    v.add_bos = PreTokenizer(v.pre).adds_bos;
  }
  if (auto prefix = file.get_bool("tokenizer.ggml.add_space_prefix")) v.add_space_prefix = *prefix;

  // An id outside the vocabulary (e.g. 4294967295 for "none") keeps the default, as llama.cpp does, and says so.
  const auto n_tokens = static_cast<int64_t>(v.tokens.size());
  const std::pair<const char*, int32_t*> ids[] = {
      {"tokenizer.ggml.bos_token_id", &v.bos_id},        {"tokenizer.ggml.eos_token_id", &v.eos_id},
      {"tokenizer.ggml.eot_token_id", &v.eot_id},        {"tokenizer.ggml.eom_token_id", &v.eom_id},
      {"tokenizer.ggml.unknown_token_id", &v.unk_id},    {"tokenizer.ggml.seperator_token_id", &v.sep_id},
      {"tokenizer.ggml.padding_token_id", &v.pad_id},
  };
  for (auto [key, id] : ids) {
    std::optional<int64_t> value = file.get_int(key);
    if (!value) continue;
    if (*value >= 0 && *value < n_tokens) {
      *id = static_cast<int32_t>(*value);
      continue;
    }
    const bool default_exists = *id >= 0 && *id < n_tokens;
    const bool says_none = *value == -1 || *value == UINT32_MAX;  // how converters write "no such token"
    if (says_none && !default_exists) continue;
    v.warnings.push_back(fmt::format("{} = {} is outside the vocabulary of {} tokens; {}", key, *value, n_tokens,
                                     default_exists ? fmt::format("using the default {}", *id) : "ignored"));
  }
  if (auto add_bos = file.get_bool("tokenizer.ggml.add_bos_token")) v.add_bos = *add_bos;
  if (auto add_eos = file.get_bool("tokenizer.ggml.add_eos_token")) v.add_eos = *add_eos;
  // Default ids that do not exist in a small vocabulary mean "none".
  for (int32_t* id : {&v.bos_id, &v.eos_id, &v.unk_id, &v.sep_id, &v.pad_id})
    if (*id >= n_tokens) *id = -1;
  return Tokenizer(std::move(v));
}

}  // namespace tessera::tokenizer
