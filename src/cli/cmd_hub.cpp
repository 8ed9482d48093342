// `tessera pull REF`, `tessera list`, `tessera rm NAME`: the local model store filled from the Hugging Face Hub
// (src/hub, docs/HUB.md).
#include <fmt/format.h>

#include <cstdio>
#include <map>
#include <string>

#include "cli/commands.h"
#include "gguf/gguf.h"
#include "hub/progress.h"
#include "hub/pull.h"
#include "hub/store.h"

namespace tessera::cli {
namespace {

// llama.cpp's short names for general.file_type (its LLAMA_FTYPE numbering), as quant tags in file names use.
std::string file_type_tag(uint64_t file_type) {
  static const std::map<uint64_t, std::string_view> kTags = {
      {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},    {8, "Q5_0"},
      {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"},
      {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"}, {18, "Q6_K"},   {21, "Q2_K_S"}, {32, "BF16"},
  };
  const auto it = kTags.find(file_type);
  return it != kTags.end() ? std::string(it->second) : fmt::format("ftype {}", file_type);
}

struct ModelSummary {
  std::string quant, architecture, parameters;
};

// "1.1B", "262.1M", "4.2K"
std::string count_text(uint64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.1f}B", static_cast<double>(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.1f}M", static_cast<double>(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.1f}K", static_cast<double>(n) / 1e3);
  return fmt::format("{}", n);
}

ModelSummary summarize(const std::string& path) {
  try {
    const gguf::File file = gguf::File::open(path);
    uint64_t n_params = 0;
    std::map<GgmlType, uint64_t> bytes_by_type;
    for (const gguf::TensorInfo& t : file.tensors()) {
      n_params += t.n_elements;
      bytes_by_type[t.type] += t.n_bytes;
    }
    ModelSummary s{"?", file.architecture().empty() ? "?" : file.architecture(), count_text(n_params)};
    if (const std::optional<uint64_t> file_type = file.get_uint("general.file_type")) {
      s.quant = file_type_tag(*file_type);
    } else if (!bytes_by_type.empty()) {
      // Without the key, the type that holds most of the weights says the most.
      const auto most = std::max_element(bytes_by_type.begin(), bytes_by_type.end(),
                                         [](const auto& a, const auto& b) { return a.second < b.second; });
      s.quant = std::string(ggml_type_name(most->first));
    }
    return s;
  } catch (const std::exception& e) {
    return ModelSummary{"?", fmt::format("unreadable: {}", e.what()), "?"};
  }
}

void list_models() {
  const hub::Store store(hub::default_store_root());
  const std::vector<hub::Store::Entry> entries = store.entries();
  if (entries.empty()) {
    std::fprintf(stderr, "no models in %s (tessera pull OWNER/NAME:QUANT fetches one)\n", store.root().c_str());
    return;
  }
  size_t name_width = 4;
  for (const auto& e : entries) name_width = std::max(name_width, e.name.size());
  fmt::print("{:<{}}  {:>10}  {:<8}  {:<10}  {}\n", "NAME", name_width, "SIZE", "QUANT", "ARCH", "PARAMS");
  for (const auto& e : entries) {
    const ModelSummary s = summarize(e.path.string());
    fmt::print("{:<{}}  {:>10}  {:<8}  {:<10}  {}\n", e.name, name_width, hub::format_bytes(e.size), s.quant,
               s.architecture, s.parameters);
  }
}

void remove_model(const std::string& name) {
  const hub::Store store(hub::default_store_root());
  const hub::ModelRef ref = hub::parse_store_name(name);
  const std::vector<hub::Store::Entry> found = store.find(ref);
  if (found.empty()) throw std::runtime_error(fmt::format("{} is not in the store ({})", name, store.root().string()));
  if (found.size() > 1) {
    std::string names;
    for (const auto& e : found) names += (names.empty() ? "" : ", ") + e.name;
    throw std::runtime_error(fmt::format("{} names {} models; give one of: {}", name, found.size(), names));
  }
  store.remove(found.front());
  std::printf("removed %s (%s)\n", found.front().name.c_str(), hub::format_bytes(found.front().size).c_str());
}

}  // namespace

void add_hub_commands(CLI::App& root) {
  struct PullArgs {
    std::string reference, token;
    bool quiet = false;
  };
  auto pull_args = std::make_shared<PullArgs>();
  CLI::App* pull = root.add_subcommand(
      "pull",
      "Download a GGUF model from the Hugging Face Hub into the local store ($TESSERA_HOME or ~/.cache/tessera)");
  pull->add_option("reference", pull_args->reference,
                   "OWNER/NAME:QUANT (the file whose name carries the quant tag) or hf://OWNER/NAME/FILE.gguf")
      ->required();
  pull->add_option("--token", pull_args->token, "Hugging Face token for gated repositories (default: $HF_TOKEN)");
  pull->add_flag("-q,--quiet", pull_args->quiet, "No progress on stderr");
  pull->callback([pull_args] {
    const std::optional<hub::ModelRef> ref = hub::parse_reference(pull_args->reference);
    if (!ref)
      throw UsageError(fmt::format("'{}' is not a Hub reference: give OWNER/NAME:QUANT or hf://OWNER/NAME/FILE.gguf",
                                   pull_args->reference));
    hub::Options options = hub::Options::from_environment(pull_args->token);
    options.quiet = pull_args->quiet;
    const hub::PullResult result = hub::pull(*ref, options);
    if (!result.downloaded) std::fprintf(stderr, "%s is up to date\n", result.name.c_str());
    std::printf("%s\n", result.path.c_str());
  });

  root.add_subcommand("list", "List the models in the local store: name, size, quant, architecture, parameters")
      ->callback(list_models);

  auto rm_name = std::make_shared<std::string>();
  CLI::App* rm = root.add_subcommand("rm", "Delete a model from the local store");
  rm->add_option("name", *rm_name, "OWNER/NAME/FILE.gguf as `tessera list` shows it, or OWNER/NAME:QUANT")->required();
  rm->callback([rm_name] { remove_model(*rm_name); });
}

}  // namespace tessera::cli
