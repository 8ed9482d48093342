// `tessera tokenize` and `tessera detokenize`: the model's tokenizer on its own, as llama.cpp's llama-tokenize.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/engine_options.h"
#include "cli/stdout_writer.h"
#include "gguf/gguf.h"
#include "io/input_file.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

namespace {

struct TokenizeArgs {
  std::string model;
  std::string text;
  std::string text_file;
  bool text_file_given = false;
  bool no_bos = false;
  bool parse_special = false;
  bool json = false;
};

struct DetokenizeArgs {
  std::string model;
  std::vector<int64_t> ids;
  bool no_special = false;
};

bool is_valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

// A piece shown on one line: control bytes, backslashes and the bytes of an incomplete character escaped.
std::string printable_piece(const std::string& piece) {
  const bool utf8 = is_valid_utf8(piece);
  std::string out;
  for (char ch : piece) {
    auto c = static_cast<unsigned char>(ch);
    if (ch == '\n') out += "\\n";
    else if (ch == '\t') out += "\\t";
    else if (ch == '\r') out += "\\r";
    else if (ch == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) out += fmt::format("\\x{:02x}", c);
    else out.push_back(ch);
  }
  return out;
}

void run_tokenize(const TokenizeArgs& args) {
  const std::string text = args.text_file_given ? io::read_text_input(args.text_file, "text file") : args.text;
  const gguf::File file = gguf::File::open(args.model);
  const tokenizer::Tokenizer tok = load_tokenizer(file);
  const std::vector<int32_t> ids = tok.encode(text, !args.no_bos, args.parse_special);
  if (args.json) {
    write_stdout(nlohmann::json(ids).dump() + "\n");
    return;
  }
  for (int32_t id : ids) print_stdout("{:>6} -> '{}'\n", id, printable_piece(tok.token_to_piece(id)));
}

void run_detokenize(const DetokenizeArgs& args) {
  const gguf::File file = gguf::File::open(args.model);
  const tokenizer::Tokenizer tok = load_tokenizer(file);
  std::vector<int32_t> ids;
  ids.reserve(args.ids.size());
  for (int64_t id : args.ids) {
    if (id < 0 || id >= tok.n_vocab())
      throw std::runtime_error(fmt::format("token id {} is outside the vocabulary [0, {})", id, tok.n_vocab()));
    ids.push_back(static_cast<int32_t>(id));
  }
  const std::string text = tok.decode(ids, {.remove_special = false, .unparse_special = !args.no_special});
  write_stdout(text + "\n");
}

}  // namespace

void add_tokenize_commands(CLI::App& root) {
  auto tokenize_args = std::make_shared<TokenizeArgs>();
  CLI::App* tokenize = root.add_subcommand("tokenize", "Print the token ids of a text with a model's tokenizer");
  tokenize->add_option("-m,--model", tokenize_args->model, "GGUF file whose tokenizer to use")->required();
  auto* text = tokenize->add_option("-p,--text", tokenize_args->text, "The text to tokenize");
  auto* text_file = tokenize->add_option(
      "-f,--text-file", tokenize_args->text_file,
      fmt::format("Read the text from this file (at most {} MiB; - or a pipe: standard input, at most {} MiB)",
                  io::kMaxTextFileBytes >> 20, io::kMaxTextStreamBytes >> 20));
  text->excludes(text_file);
  tokenize->add_flag("--no-bos", tokenize_args->no_bos, "Add no special tokens (BOS, EOS) automatically");
  tokenize->add_flag("--parse-special", tokenize_args->parse_special,
                     "Turn the text of special tokens such as <s> into those tokens");
  tokenize->add_flag("--json", tokenize_args->json, "Print only a JSON array of the ids");
  tokenize->callback([tokenize_args, text, text_file] {
    if (text->count() == 0 && text_file->count() == 0) throw UsageError("tokenize needs --text or --text-file");
    tokenize_args->text_file_given = text_file->count() > 0;
    run_tokenize(*tokenize_args);
  });

  auto detokenize_args = std::make_shared<DetokenizeArgs>();
  CLI::App* detokenize = root.add_subcommand("detokenize", "Print the text of token ids with a model's tokenizer");
  detokenize->add_option("-m,--model", detokenize_args->model, "GGUF file whose tokenizer to use")->required();
  detokenize->add_option("ids", detokenize_args->ids, "Token ids")->required();
  detokenize->add_flag("--no-special", detokenize_args->no_special,
                       "Print control tokens (BOS, EOS, ...) as nothing instead of their text");
  detokenize->callback([detokenize_args] { run_detokenize(*detokenize_args); });
}

}  // namespace tessera::cli
