// The metadata keys whose value type llama.cpp fixes, so that a reader can refuse e.g. `llama.block_count` stored
// as a string before a model loader misreads it.
#pragma once

#include <optional>
#include <string_view>

#include "gguf/gguf.h"

namespace tessera::gguf {

// For a known key whose value has the wrong type: the expected type, in words ("u32", "array of string", ...).
// nullopt for unknown keys and for values of the right type. `architecture` is general.architecture ("" if
// absent); keys under "<architecture>." are checked against the per-architecture table.
std::optional<std::string_view> known_key_type_problem(std::string_view key, const Value& value,
                                                       std::string_view architecture);

}  // namespace tessera::gguf
