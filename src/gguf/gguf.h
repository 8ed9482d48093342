// GGUF v2/v3: a validated, memory-mapped, zero-copy reader and a streaming writer.
//
// The reader checks every count, length, offset and product before it allocates or indexes, so a hostile file
// fails with one FormatError line naming the field and its value; memory use is bounded by a small multiple of
// the file size.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "gguf/ggml_type.h"

namespace tessera::gguf {

// Any malformed, truncated or unsupported content. what() is one line, e.g.
// "tensor 'blk.0.attn_q.weight': data [4096, 8192) runs past the end of the file (6000 bytes)".
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Metadata value types with the ids GGUF stores.
enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
std::string_view value_type_name(ValueType type);  // "u32", "string", "array", ...

// One metadata value: a scalar, or an array of scalars of one type (GGUF arrays of arrays are refused).
// The C++ type held says the GGUF type exactly, so a read -> write round trip is lossless.
class Value {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
                               uint64_t, int64_t, double,
                               std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>,
                               std::vector<int16_t>, std::vector<uint32_t>, std::vector<int32_t>,
                               std::vector<float>, std::vector<bool>, std::vector<std::string>,
                               std::vector<uint64_t>, std::vector<int64_t>, std::vector<double>>;

  Value() = default;
  template <class T>
    requires std::is_constructible_v<Storage, T&&>
  Value(T&& v) : storage_(std::forward<T>(v)) {}  // NOLINT: implicit on purpose, Value v = uint32_t{4}
  Value(const char* s) : storage_(std::string(s)) {}  // NOLINT

  ValueType type() const;          // ARRAY for arrays
  ValueType element_type() const;  // an array's element type; a scalar's own type
  bool is_array() const { return type() == ValueType::ARRAY; }
  size_t array_size() const;       // 0 for scalars
  const Storage& storage() const { return storage_; }
  template <class T>
  const T* get_if() const { return std::get_if<T>(&storage_); }

  // Lenient readers for callers that accept any integer or float width; nullopt if the value is not one.
  std::optional<int64_t> to_int() const;    // any integer scalar (a u64 above INT64_MAX gives nullopt)
  std::optional<double> to_float() const;   // f32 / f64 scalar, or any integer scalar

  bool operator==(const Value&) const = default;

 private:
  Storage storage_;
};

// One tensor as the file describes it, with a view of its bytes inside the mapping.
struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<uint64_t> shape;  // GGUF order: shape[0] = ne0, the row length
  uint64_t offset = 0;          // as stored: relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // points into the file mapping; valid while the File lives

  uint64_t row_length() const { return shape[0]; }
  uint64_t n_rows() const { return n_elements / shape[0]; }
  uint64_t row_bytes() const { return n_bytes / n_rows(); }
};

// A parsed, validated GGUF file. Move-only; tensor data stays in the mapping (or the caller's buffer).
class File {
 public:
  // Maps and validates `path`. Throws FormatError for bad content, std::runtime_error if it cannot be opened.
  static File open(const std::string& path);
  // Parses bytes the caller keeps alive (tests, the fuzzer).
  static File parse(std::span<const uint8_t> bytes);

  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }   // absolute offset of the data section
  std::span<const uint8_t> bytes() const { return bytes_; }

  // Says that [data, data + n) of the mapping will not be read again soon: its pages leave the process's resident
  // memory (they are read back from the file if touched). For a backend that keeps its own copy of a tensor in
  // another layout. Does nothing for parsed buffers, which the caller owns.
  void release_pages(const uint8_t* data, size_t n) const;

  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }  // file order
  const Value* find(std::string_view key) const;

  // Typed getters for keys callers know. nullopt when absent; FormatError naming the key when the value has
  // another type than the getter reads (integers of any width are accepted by get_int / get_uint).
  std::optional<int64_t> get_int(std::string_view key) const;
  std::optional<uint64_t> get_uint(std::string_view key) const;   // refuses negative values
  std::optional<double> get_float(std::string_view key) const;     // f32 or f64
  std::optional<bool> get_bool(std::string_view key) const;
  std::optional<std::string> get_string(std::string_view key) const;
  const std::vector<std::string>* get_string_array(std::string_view key) const;  // nullptr when absent
  std::optional<std::vector<float>> get_float_array(std::string_view key) const;
  std::optional<std::vector<int64_t>> get_int_array(std::string_view key) const;  // any integer element type

  std::string architecture() const;  // general.architecture, or "" when absent

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;

 private:
  File() = default;
  struct Mapping;
  std::unique_ptr<Mapping> mapping_;
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<TensorInfo> tensors_;
  friend class Parser;
};

// Writes GGUF v3 the way llama.cpp's gguf writer does: header, metadata in insertion order, tensor infos,
// padding to general.alignment, then each tensor's data padded to the alignment. Tensor data is produced one
// tensor at a time while writing, so a writer of a large model holds at most one tensor in memory.
class Writer {
 public:
  explicit Writer(uint32_t alignment = 32);

  // Adds or replaces a key (replacing keeps its first position). Setting general.alignment changes alignment.
  void set(std::string key, Value value);
  void remove(std::string_view key);

  // Fills `out` (exactly the tensor's byte size) when the tensor is written.
  using Producer = std::function<void(std::span<uint8_t> out)>;
  void add_tensor(std::string name, GgmlType type, std::vector<uint64_t> shape, Producer produce);
  // Copies from `data`, which must stay alive until write() returns.
  void add_tensor(std::string name, GgmlType type, std::vector<uint64_t> shape, std::span<const uint8_t> data);

  // Writes to `path` through io::OutputFile: only a regular file is replaced, and a failure leaves the old file
  // and no partial one.
  void write(const std::string& path) const;
  // The whole file in memory (tests, small files).
  std::vector<uint8_t> to_bytes() const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> shape;
    uint64_t n_bytes;
    Producer produce;
  };
  uint32_t alignment_;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace tessera::gguf
