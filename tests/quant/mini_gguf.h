// A minimal GGUF tensor-table reader for the fixture tests, so they do not depend on the gguf room's reader.
// Trusted input only (the read-only fixtures); it skips metadata and keeps tensor names, types, shapes, bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "gguf/ggml_type.h"

namespace tessera::test {

struct MiniTensor {
  GgmlType type;
  std::vector<uint64_t> shape;
  const uint8_t* data;
  uint64_t n_elements() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
  }
};

class MiniGguf {
 public:
  explicit MiniGguf(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error("cannot open " + path);
    bytes_.resize(static_cast<size_t>(in.tellg()));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(bytes_.data()), static_cast<std::streamsize>(bytes_.size()));
    pos_ = 4;  // magic
    read<uint32_t>();  // version
    const uint64_t n_tensors = read<uint64_t>();
    const uint64_t n_kv = read<uint64_t>();
    uint64_t alignment = 32;
    for (uint64_t i = 0; i < n_kv; ++i) {
      const std::string key = read_string();
      const uint32_t type = read<uint32_t>();
      if (key == "general.alignment") {
        alignment = read<uint32_t>();
      } else {
        skip_value(type);
      }
    }
    struct Info {
      std::string name;
      MiniTensor tensor;
      uint64_t offset;
    };
    std::vector<Info> infos;
    for (uint64_t i = 0; i < n_tensors; ++i) {
      Info info;
      info.name = read_string();
      const uint32_t n_dims = read<uint32_t>();
      for (uint32_t d = 0; d < n_dims; ++d) info.tensor.shape.push_back(read<uint64_t>());
      info.tensor.type = static_cast<GgmlType>(read<uint32_t>());
      info.offset = read<uint64_t>();
      infos.push_back(std::move(info));
    }
    const uint64_t data_start = (pos_ + alignment - 1) / alignment * alignment;
    for (Info& info : infos) {
      info.tensor.data = bytes_.data() + data_start + info.offset;
      tensors_.emplace(info.name, info.tensor);
      order_.push_back(info.name);
    }
  }

  const std::map<std::string, MiniTensor>& tensors() const { return tensors_; }
  const MiniTensor& at(const std::string& name) const { return tensors_.at(name); }
  const std::vector<std::string>& names_in_file_order() const { return order_; }

 private:
  template <class T>
  T read() {
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string read_string() {
    const uint64_t n = read<uint64_t>();
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  void skip_value(uint32_t type) {
    static constexpr uint64_t kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) {
      read_string();
    } else if (type == 9) {
      const uint32_t element_type = read<uint32_t>();
      const uint64_t n = read<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) skip_value(element_type);
    } else {
      pos_ += kSizes[type];
    }
  }

  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
  std::map<std::string, MiniTensor> tensors_;
  std::vector<std::string> order_;
};

}  // namespace tessera::test
