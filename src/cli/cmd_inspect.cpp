// `tessera inspect FILE [--json]`: what a GGUF file holds, after the reader has validated all of it.
#include <fmt/format.h>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/stdout_writer.h"
#include "gguf/gguf.h"

namespace tessera::cli {
namespace {

struct InspectArgs {
  std::string path;
  bool json = false;
};

// Arrays longer than this are shown as their first elements and their length in text mode.
constexpr size_t kShownArrayElements = 8;

// llama.cpp's names for general.file_type (its LLAMA_FTYPE numbering).
std::string file_type_name(uint64_t file_type) {
  static const std::map<uint64_t, std::string_view> kNames = {
      {0, "all F32"},       {1, "F16"},           {2, "Q4_0"},          {3, "Q4_1"},
      {7, "Q8_0"},          {8, "Q5_0"},          {9, "Q5_1"},          {10, "Q2_K - Medium"},
      {11, "Q3_K - Small"}, {12, "Q3_K - Medium"}, {13, "Q3_K - Large"}, {14, "Q4_K - Small"},
      {15, "Q4_K - Medium"}, {16, "Q5_K - Small"}, {17, "Q5_K - Medium"}, {18, "Q6_K"},
      {21, "Q2_K - Small"}, {32, "BF16"},
  };
  const auto it = kNames.find(file_type);
  return it != kNames.end() ? std::string(it->second) : fmt::format("unknown ({})", file_type);
}

template <class T>
std::string scalar_text(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return nlohmann::json(v).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_floating_point_v<T>) return fmt::format("{}", v);
  else return fmt::format("{}", +v);  // + shows 8-bit integers as numbers
}

std::string value_text(const gguf::Value& value) {
  return std::visit(
      [&](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (requires { typename T::value_type; } && !std::is_same_v<T, std::string>) {
          std::string out = "[";
          const size_t shown = std::min(v.size(), kShownArrayElements);
          for (size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + scalar_text<typename T::value_type>(v[i]);
          if (shown < v.size()) out += ", ...";
          return out + fmt::format("] ({} {} elements)", v.size(), gguf::value_type_name(value.element_type()));
        } else {
          return scalar_text(v);
        }
      },
      value.storage());
}

nlohmann::json value_json(const gguf::Value& value) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, value.storage());
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return out + "]";
}

void print_json(const gguf::File& file) {
  nlohmann::json doc;
  doc["version"] = file.version();
  doc["alignment"] = file.alignment();
  doc["data_offset"] = file.data_offset();
  nlohmann::json metadata = nlohmann::json::object();
  for (const auto& [key, value] : file.metadata()) metadata[key] = value_json(value);
  doc["metadata"] = std::move(metadata);
  nlohmann::json tensors = nlohmann::json::array();
  for (const gguf::TensorInfo& t : file.tensors()) {
    tensors.push_back({{"name", t.name},
                       {"type", ggml_type_name(t.type)},
                       {"shape", t.shape},
                       {"offset", t.offset},
                       {"bytes", t.n_bytes}});
  }
  doc["tensors"] = std::move(tensors);
  // Vocabularies may hold byte tokens that are not valid UTF-8 on their own; they are shown as U+FFFD.
  write_stdout(doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

void print_text(const std::string& path, const gguf::File& file) {
  print_stdout("{}: GGUF v{}, alignment {}, data section at offset {}, {} bytes\n", path, file.version(),
             file.alignment(), file.data_offset(), file.bytes().size());
  print_stdout("\nmetadata ({} keys):\n", file.metadata().size());
  for (const auto& [key, value] : file.metadata()) {
    const std::string type = value.is_array() ? fmt::format("array<{}>", gguf::value_type_name(value.element_type()))
                                              : std::string(gguf::value_type_name(value.type()));
    print_stdout("  {:<44} {:<14} {}\n", key, type, value_text(value));
  }
  print_stdout("\ntensors ({}):\n", file.tensors().size());
  size_t name_width = 4;
  for (const gguf::TensorInfo& t : file.tensors()) name_width = std::max(name_width, t.name.size());
  print_stdout("  {:<{}} {:<7} {:<24} {:>12} {:>12}\n", "name", name_width, "type", "shape", "bytes", "offset");
  uint64_t n_params = 0;
  std::map<std::string_view, std::pair<uint64_t, uint64_t>> by_type;  // name -> tensors, bytes
  for (const gguf::TensorInfo& t : file.tensors()) {
    print_stdout("  {:<{}} {:<7} {:<24} {:>12} {:>12}\n", t.name, name_width, ggml_type_name(t.type),
               shape_text(t.shape), t.n_bytes, t.offset);
    n_params += t.n_elements;
    auto& [count, bytes] = by_type[ggml_type_name(t.type)];
    ++count;
    bytes += t.n_bytes;
  }
  print_stdout("\nsummary:\n");
  print_stdout("  tensors:    {}\n", file.tensors().size());
  print_stdout("  parameters: {}\n", n_params);
  for (const auto& [type, count_bytes] : by_type)
    print_stdout("  {:<11} {} tensors, {} bytes\n", fmt::format("{}:", type), count_bytes.first, count_bytes.second);
  if (const std::optional<uint64_t> file_type = file.get_uint("general.file_type"))
    print_stdout("  file type:  {} ({})\n", file_type_name(*file_type), *file_type);
  else
    print_stdout("  file type:  not stated (no general.file_type key)\n");
  const std::string arch = file.architecture();
  if (!arch.empty()) {
    print_stdout("  architecture: {}\n", arch);
    const std::string prefix = arch + ".";
    for (const auto& [key, value] : file.metadata())
      if (key.starts_with(prefix)) print_stdout("    {:<40} {}\n", key.substr(prefix.size()), value_text(value));
  }
}

}  // namespace

void add_inspect_command(CLI::App& root) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = root.add_subcommand("inspect", "Validate a GGUF file and show its metadata and tensors");
  cmd->add_option("file", args->path, "GGUF file")->required();
  cmd->add_flag("--json", args->json,
                "Print one JSON document: version, alignment, data_offset, metadata (full arrays), tensors");
  cmd->callback([args] {
    const gguf::File file = gguf::File::open(args->path);
    if (args->json) print_json(file);
    else print_text(args->path, file);
  });
}

}  // namespace tessera::cli
