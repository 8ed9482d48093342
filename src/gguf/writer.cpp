// The GGUF v3 writer, laid out as llama.cpp's writer does: header, metadata, tensor infos, zero padding to the
// alignment, then each tensor's bytes followed by zero padding to the alignment.
#include <fmt/format.h>

#include <bit>
#include <cstring>

#include "gguf/gguf.h"
#include "io/output_file.h"

namespace tessera::gguf {
namespace {

constexpr std::string_view kAlignmentKey = "general.alignment";

// Where encoded bytes go: a vector (to_bytes) or a file (write).
using Sink = std::function<void(const void* data, size_t size)>;

template <class T>
void put(const Sink& sink, T v) {
  sink(&v, sizeof(T));
}

void put_string(const Sink& sink, const std::string& s) {
  put<uint64_t>(sink, s.size());
  sink(s.data(), s.size());
}

template <class T>
void put_scalar(const Sink& sink, const T& v) {
  if constexpr (std::is_same_v<T, bool>) put<uint8_t>(sink, v ? 1 : 0);
  else if constexpr (std::is_same_v<T, std::string>) put_string(sink, v);
  else put<T>(sink, v);
}

void put_value(const Sink& sink, const Value& value) {
  put<uint32_t>(sink, static_cast<uint32_t>(value.type()));
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (requires { typename T::value_type; } && !std::is_same_v<T, std::string>) {
          put<uint32_t>(sink, static_cast<uint32_t>(value.element_type()));
          put<uint64_t>(sink, v.size());
          for (const auto& e : v) put_scalar<typename T::value_type>(sink, e);
        } else {
          put_scalar(sink, v);
        }
      },
      value.storage());
}

uint64_t padding(uint64_t offset, uint64_t alignment) { return (alignment - offset % alignment) % alignment; }

void put_zeros(const Sink& sink, uint64_t n) {
  static constexpr uint8_t kZeros[256] = {};
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, sizeof(kZeros)));
    sink(kZeros, chunk);
    n -= chunk;
  }
}

void check_alignment(uint64_t alignment) {
  if (alignment == 0 || alignment > UINT32_MAX || !std::has_single_bit(alignment))
    throw std::invalid_argument(fmt::format("GGUF alignment {} is not a power of two", alignment));
}

}  // namespace

Writer::Writer(uint32_t alignment) : alignment_(alignment) {
  check_alignment(alignment);
  if (alignment != 32) set(std::string(kAlignmentKey), alignment);
}

void Writer::set(std::string key, Value value) {
  if (key == kAlignmentKey) {
    const uint32_t* a = value.get_if<uint32_t>();
    if (!a) throw std::invalid_argument("general.alignment must be a u32");
    check_alignment(*a);
    alignment_ = *a;
  }
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

void Writer::remove(std::string_view key) {
  std::erase_if(metadata_, [&](const auto& kv) { return kv.first == key; });
  if (key == kAlignmentKey) alignment_ = 32;
}

void Writer::add_tensor(std::string name, GgmlType type, std::vector<uint64_t> shape, Producer produce) {
  for (const Tensor& t : tensors_)
    if (t.name == name) throw std::invalid_argument(fmt::format("tensor '{}' is added twice", name));
  if (shape.empty() || shape.size() > 4)
    throw std::invalid_argument(fmt::format("tensor '{}': {} dimensions, expected 1..4", name, shape.size()));
  const GgmlTypeTraits& traits = ggml_type_traits(type);
  uint64_t n_elements = 1;
  for (uint64_t d : shape) {
    if (d == 0) throw std::invalid_argument(fmt::format("tensor '{}' has a dimension of 0", name));
    if (__builtin_mul_overflow(n_elements, d, &n_elements))
      throw std::invalid_argument(fmt::format("tensor '{}': element count overflows 64 bits", name));
  }
  if (shape[0] % traits.block_size != 0)
    throw std::invalid_argument(fmt::format("tensor '{}': row length {} is not a multiple of {}'s block size {}",
                                            name, shape[0], traits.name, traits.block_size));
  uint64_t n_bytes = 0;
  if (__builtin_mul_overflow(n_elements / traits.block_size, uint64_t{traits.block_bytes}, &n_bytes))
    throw std::invalid_argument(fmt::format("tensor '{}': byte size overflows 64 bits", name));
  tensors_.push_back(Tensor{std::move(name), type, std::move(shape), n_bytes, std::move(produce)});
}

void Writer::add_tensor(std::string name, GgmlType type, std::vector<uint64_t> shape,
                        std::span<const uint8_t> data) {
  const std::string name_copy = name;
  add_tensor(std::move(name), type, std::move(shape), [data](std::span<uint8_t> out) {
    std::memcpy(out.data(), data.data(), out.size());
  });
  if (tensors_.back().n_bytes != data.size()) {
    const uint64_t expected = tensors_.back().n_bytes;
    tensors_.pop_back();
    throw std::invalid_argument(
        fmt::format("tensor '{}': {} data bytes given, its type and shape need {}", name_copy, data.size(), expected));
  }
}

namespace {

// Writes the whole file through `sink`; `produce_into` gives each tensor's bytes.
void encode(const Sink& sink, uint64_t alignment, const std::vector<std::pair<std::string, Value>>& metadata,
            const auto& tensors, const std::function<void(size_t index)>& emit_tensor) {
  uint64_t written = 0;
  const Sink counting = [&](const void* data, size_t size) {
    sink(data, size);
    written += size;
  };
  counting("GGUF", 4);
  put<uint32_t>(counting, 3);
  put<uint64_t>(counting, tensors.size());
  put<uint64_t>(counting, metadata.size());
  for (const auto& [key, value] : metadata) {
    put_string(counting, key);
    put_value(counting, value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    put_string(counting, t.name);
    put<uint32_t>(counting, static_cast<uint32_t>(t.shape.size()));
    for (uint64_t d : t.shape) put<uint64_t>(counting, d);
    put<uint32_t>(counting, static_cast<uint32_t>(t.type));
    put<uint64_t>(counting, offset);
    offset += t.n_bytes + padding(t.n_bytes, alignment);
  }
  put_zeros(counting, padding(written, alignment));
  for (size_t i = 0; i < tensors.size(); ++i) {
    emit_tensor(i);
    put_zeros(counting, padding(tensors[i].n_bytes, alignment));
  }
}

}  // namespace

std::vector<uint8_t> Writer::to_bytes() const {
  std::vector<uint8_t> out;
  const Sink sink = [&](const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    out.insert(out.end(), p, p + size);
  };
  encode(sink, alignment_, metadata_, tensors_, [&](size_t i) {
    const size_t start = out.size();
    out.resize(start + tensors_[i].n_bytes);
    tensors_[i].produce(std::span<uint8_t>(out.data() + start, tensors_[i].n_bytes));
  });
  return out;
}

void Writer::write(const std::string& path) const {
  io::OutputFile out(path);
  const Sink sink = [&](const void* data, size_t size) { out.write(data, size); };
  std::vector<uint8_t> buffer;
  encode(sink, alignment_, metadata_, tensors_, [&](size_t i) {
    buffer.assign(tensors_[i].n_bytes, 0);
    tensors_[i].produce(buffer);
    sink(buffer.data(), buffer.size());
  });
  out.commit();
}

}  // namespace tessera::gguf
