// What the CLI robustness tests share: a scratch folder, the trained fixture model, copies of it with chosen
// metadata or weights changed (written by our GGUF writer), and a long-running generation command.
#pragma once

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/fixtures.h"
#include "gguf/gguf.h"

namespace tessera::test {

inline std::string stories_model() { return fixture("trained/stories260K.gguf").string(); }

// A fresh folder under the temporary directory, removed with everything in it at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("tessera-robustness-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // Names in the folder, sorted (to see that no temporary file was left behind).
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) out.push_back(entry.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_whole_file(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

// The fixture model rewritten to `path` with `edit` applied to a writer that holds all its keys and tensors
// (tensors as copies of the fixture's bytes, so the edit may change them through `tensor_bytes`).
struct ModelCopy {
  gguf::Writer writer;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> tensors;  // name -> bytes
  std::vector<uint8_t>& tensor_bytes(const std::string& name) {
    for (auto& [n, bytes] : tensors)
      if (n == name) return bytes;
    throw std::invalid_argument("no tensor " + name);
  }
};

inline void write_model_copy(const std::string& path, const std::function<void(ModelCopy&)>& edit) {
  const gguf::File source = gguf::File::open(stories_model());
  ModelCopy copy;
  for (const auto& [key, value] : source.metadata()) copy.writer.set(key, value);
  for (const gguf::TensorInfo& t : source.tensors())
    copy.tensors.emplace_back(t.name, std::vector<uint8_t>(t.data, t.data + t.n_bytes));
  edit(copy);
  for (size_t i = 0; i < source.tensors().size(); ++i) {
    const gguf::TensorInfo& t = source.tensors()[i];
    copy.writer.add_tensor(t.name, t.type, t.shape, copy.tensors[i].second);
  }
  copy.writer.write(path);
}

// A generation that runs for many seconds unless stopped: the context far beyond the default and no end token.
inline std::vector<std::string> long_run_args(const std::string& model, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"run", "-m",    model, "-p", "Once upon a time", "-n", "100000", "--ignore-eos",
                                   "-c",  "20000", "-t",  "1",  "--temp",           "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace tessera::test
