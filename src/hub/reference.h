// What a model argument names on the Hugging Face Hub, and how a quant tag picks one GGUF file of a repository.
// Pure text handling: no network, no files.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::hub {

// A reference that has the shape of a Hub name but cannot be one (a bad character, "..", not a .gguf file).
class ReferenceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ModelRef {
  std::string repo;   // "OWNER/NAME"
  std::string file;   // path inside the repository; "" when the quant tag picks it
  std::string quant;  // e.g. "Q4_K_M"; "" when `file` is given (or when the repository's only GGUF is meant)

  // The reference as the user would write it: "OWNER/NAME/FILE" or "OWNER/NAME:QUANT".
  std::string text() const;
};

// Reads "hf://OWNER/NAME/FILE.gguf", "hf://OWNER/NAME[:QUANT]" and "OWNER/NAME:QUANT". nullopt for text of any
// other shape (a local path); ReferenceError for an hf:// reference that is malformed.
std::optional<ModelRef> parse_reference(std::string_view text);

// A store name as `tessera list` prints it, "OWNER/NAME/FILE.gguf", or any form parse_reference takes.
// ReferenceError when it is neither.
ModelRef parse_store_name(std::string_view text);

bool is_valid_repo_id(std::string_view repo);    // OWNER/NAME of letters, digits, '.', '_', '-'
bool is_valid_repo_file(std::string_view path);  // relative, no empty, "." or ".." parts, no control chars
bool is_gguf_name(std::string_view path);        // ends in ".gguf", any case

// Whether `path`'s file name carries `tag` (case-insensitive) as a whole token: not inside a longer word, so
// "Q4_K" does not match "Q4_K_M" and "Q8_0" does not match "IQ8_0".
bool carries_quant_tag(std::string_view path, std::string_view tag);

// The GGUF files among `paths` that `ref` names: the one whose name carries its quant tag, or with no tag the
// only GGUF file. Throws std::runtime_error listing the repository's GGUF files when none or several match.
std::string pick_gguf_file(const ModelRef& ref, const std::vector<std::string>& paths);

}  // namespace tessera::hub
