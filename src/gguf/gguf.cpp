// The GGUF reader: one forward pass over the header, metadata and tensor infos, checking every length and count
// against the bytes that are left before allocating anything, then a check of the tensor data layout.
#include "gguf/gguf.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "gguf/known_keys.h"
#include "io/file_type.h"

namespace tessera::gguf {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

std::string_view value_type_name(ValueType type) {
  switch (type) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "unknown";
}

namespace {

// The Storage variant lists the 12 scalar types, then arrays of them, in this order.
constexpr std::array kScalarTypeByIndex = {
    ValueType::U8,  ValueType::I8,  ValueType::U16, ValueType::I16, ValueType::U32, ValueType::I32,
    ValueType::F32, ValueType::BOOL, ValueType::STRING, ValueType::U64, ValueType::I64, ValueType::F64,
};

bool is_integer_type(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::U16: case ValueType::I16: case ValueType::U32:
    case ValueType::I32: case ValueType::U64: case ValueType::I64:
      return true;
    default:
      return false;
  }
}

// Bytes one element of a scalar type takes in the file; strings take at least their 8-byte length.
uint64_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::BOOL: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: case ValueType::STRING: return 8;
    case ValueType::ARRAY: return 12;  // element type + count
  }
  return 1;
}

std::string type_description(const Value& v) {
  if (v.is_array()) return fmt::format("array of {}", value_type_name(v.element_type()));
  return std::string(value_type_name(v.type()));
}

// A readable form of a key or name read from a hostile file: printable ASCII kept, the rest escaped, long ones cut.
std::string printable(std::string_view s) {
  std::string out;
  for (char ch : s.substr(0, 80)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7F && c != '\'') out.push_back(ch);
    else out += fmt::format("\\x{:02x}", c);
  }
  if (s.size() > 80) out += "...";
  return out;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool checked_add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

}  // namespace

ValueType Value::type() const {
  const size_t i = storage_.index();
  return i < kScalarTypeByIndex.size() ? kScalarTypeByIndex[i] : ValueType::ARRAY;
}

ValueType Value::element_type() const { return kScalarTypeByIndex[storage_.index() % kScalarTypeByIndex.size()]; }

size_t Value::array_size() const {
  return std::visit(
      [](const auto& v) -> size_t {
        using T = std::decay_t<decltype(v)>;
        if constexpr (requires { v.size(); } && !std::is_same_v<T, std::string>) return v.size();
        else return 0;
      },
      storage_);
}

std::optional<int64_t> Value::to_int() const {
  return std::visit(
      [](const auto& v) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, uint64_t>) {
          if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
          return static_cast<int64_t>(v);
        } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<int64_t>(v);
        } else {
          return std::nullopt;
        }
      },
      storage_);
}

std::optional<double> Value::to_float() const {
  if (const float* f = get_if<float>()) return *f;
  if (const double* d = get_if<double>()) return *d;
  if (std::optional<int64_t> i = to_int()) return static_cast<double>(*i);
  if (const uint64_t* u = get_if<uint64_t>()) return static_cast<double>(*u);
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------------------------

struct File::Mapping {
  void* address = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (address) munmap(address, size);
  }
};

void File::release_pages(const uint8_t* data, size_t n) const {
  if (!mapping_ || !mapping_->address) return;
  const auto begin = reinterpret_cast<uintptr_t>(mapping_->address);
  const auto first = reinterpret_cast<uintptr_t>(data);
  if (first < begin || n > mapping_->size || first - begin > mapping_->size - n) return;
  // Whole pages inside the range only: the neighbours' bytes share the pages at its ends.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t from = (first + page - 1) / page * page, to = (first + n) / page * page;
  if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
}

File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

class Parser {
 public:
  explicit Parser(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  void parse_into(File& file) {
    file.bytes_ = bytes_;
    read_header(file);
    read_metadata(file);
    check_known_keys(file);
    read_alignment(file);
    read_tensor_infos(file);
    place_tensor_data(file);
  }

 private:
  uint64_t left() const { return bytes_.size() - pos_; }

  [[noreturn]] void fail(const std::string& message) const { throw FormatError(message); }

  void need(uint64_t n, std::string_view what) const {
    if (n > left())
      fail(fmt::format("{}: needs {} bytes at offset {} but the file has only {} left", what, n, pos_, left()));
  }

  template <class T>
  T read_raw(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what) {
    const uint64_t length = read_raw<uint64_t>(what);
    if (length > left())
      fail(fmt::format("{}: string length {} at offset {} exceeds the {} bytes left in the file", what, length,
                       pos_ - 8, left()));
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<size_t>(length));
    pos_ += length;
    return s;
  }

  void read_header(File& file) {
    if (bytes_.size() < 4 || std::memcmp(bytes_.data(), "GGUF", 4) != 0) {
      std::string seen;
      for (size_t i = 0; i < std::min<size_t>(4, bytes_.size()); ++i) seen += fmt::format("{:02x}", bytes_[i]);
      fail(fmt::format("bad magic: expected 'GGUF' (47475546), found {}", seen.empty() ? "an empty file" : seen));
    }
    pos_ = 4;
    const uint32_t version = read_raw<uint32_t>("header version");
    if (version != 2 && version != 3) {
      const bool looks_big_endian = version >= 0x01000000 && __builtin_bswap32(version) <= 3;
      fail(fmt::format("unsupported GGUF version {}{} (this reader supports versions 2 and 3)", version,
                       looks_big_endian ? " (a big-endian file?)" : ""));
    }
    file.version_ = version;
    tensor_count_ = read_raw<uint64_t>("header tensor count");
    kv_count_ = read_raw<uint64_t>("header metadata count");
    // Each metadata pair takes at least 13 bytes (key length, type, 1-byte value); each tensor info at least 32
    // (name length, n_dims, one dimension, type, offset). Refusing impossible counts here keeps the reservations
    // below bounded by the file size.
    constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
    constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
    if (kv_count_ > left() / kMinKvBytes)
      fail(fmt::format("header metadata count {} cannot fit in the {} bytes left in the file", kv_count_, left()));
    if (tensor_count_ > left() / kMinTensorInfoBytes)
      fail(fmt::format("header tensor count {} cannot fit in the {} bytes left in the file", tensor_count_, left()));
    if (kv_count_ * kMinKvBytes + tensor_count_ * kMinTensorInfoBytes > left())
      fail(fmt::format("header counts ({} metadata pairs, {} tensors) cannot fit in the {} bytes left in the file",
                       kv_count_, tensor_count_, left()));
  }

  ValueType read_value_type(std::string_view what) {
    const uint32_t raw = read_raw<uint32_t>(what);
    if (raw > static_cast<uint32_t>(ValueType::F64)) fail(fmt::format("{}: unknown value type id {}", what, raw));
    return static_cast<ValueType>(raw);
  }

  template <class T>
  T read_scalar(std::string_view what) {
    if constexpr (std::is_same_v<T, bool>) {
      const uint8_t b = read_raw<uint8_t>(what);
      if (b > 1) fail(fmt::format("{}: bool value {} is neither 0 nor 1", what, b));
      return b == 1;
    } else if constexpr (std::is_same_v<T, std::string>) {
      return read_string(what);
    } else {
      return read_raw<T>(what);
    }
  }

  template <class T>
  Value read_array_of(uint64_t count, std::string_view what) {
    std::vector<T> values;
    values.reserve(static_cast<size_t>(count));  // count was checked against the bytes left
    for (uint64_t i = 0; i < count; ++i) values.push_back(read_scalar<T>(what));
    return Value(std::move(values));
  }

  // Calls f(T{}) with the C++ type that holds a scalar GGUF type.
  template <class F>
  static decltype(auto) with_cpp_type(ValueType t, F&& f) {
    switch (t) {
      case ValueType::U8: return f(uint8_t{});
      case ValueType::I8: return f(int8_t{});
      case ValueType::U16: return f(uint16_t{});
      case ValueType::I16: return f(int16_t{});
      case ValueType::U32: return f(uint32_t{});
      case ValueType::I32: return f(int32_t{});
      case ValueType::F32: return f(float{});
      case ValueType::BOOL: return f(bool{});
      case ValueType::STRING: return f(std::string{});
      case ValueType::U64: return f(uint64_t{});
      case ValueType::I64: return f(int64_t{});
      case ValueType::F64: return f(double{});
      case ValueType::ARRAY: break;
    }
    throw std::logic_error("with_cpp_type called with ARRAY");
  }

  Value read_value(ValueType type, const std::string& what) {
    if (type != ValueType::ARRAY)
      return with_cpp_type(type, [&](auto tag) { return Value(read_scalar<decltype(tag)>(what)); });
    const ValueType element = read_value_type(what + " array element type");
    if (element == ValueType::ARRAY) fail(fmt::format("{}: nested arrays (arrays of arrays) are not supported", what));
    const uint64_t count = read_raw<uint64_t>(what + " array length");
    const uint64_t element_bytes = min_encoded_size(element);
    if (count > left() / element_bytes)
      fail(fmt::format("{}: array of {} {} elements needs at least {} bytes per element but only {} bytes are left",
                       what, count, value_type_name(element), element_bytes, left()));
    return with_cpp_type(element, [&](auto tag) { return read_array_of<decltype(tag)>(count, what); });
  }

  void read_metadata(File& file) {
    file.metadata_.reserve(static_cast<size_t>(kv_count_));
    std::unordered_set<std::string> seen;
    for (uint64_t i = 0; i < kv_count_; ++i) {
      std::string key = read_string(fmt::format("metadata key #{}", i));
      if (key.empty()) fail(fmt::format("metadata key #{} is empty", i));
      const std::string what = fmt::format("metadata key '{}'", printable(key));
      if (!seen.insert(key).second) fail(fmt::format("duplicate {}", what));
      const ValueType type = read_value_type(what + " value type");
      Value value = read_value(type, what);
      file.metadata_.emplace_back(std::move(key), std::move(value));
    }
  }

  void check_known_keys(const File& file) {
    const Value* arch = file.find("general.architecture");
    const std::string* arch_name = arch ? arch->get_if<std::string>() : nullptr;
    for (const auto& [key, value] : file.metadata_) {
      const std::optional<std::string_view> problem =
          known_key_type_problem(key, value, arch_name ? *arch_name : std::string_view{});
      if (problem)
        fail(fmt::format("metadata key '{}' has type {}, expected {}", printable(key), type_description(value),
                         *problem));
    }
  }

  void read_alignment(File& file) {
    const Value* v = file.find("general.alignment");
    if (!v) return;
    const uint32_t alignment = *v->get_if<uint32_t>();  // its type was checked with the known keys
    if (alignment == 0 || !std::has_single_bit(alignment))
      fail(fmt::format("general.alignment {} is not a power of two", alignment));
    file.alignment_ = alignment;
  }

  void read_tensor_infos(File& file) {
    file.tensors_.reserve(static_cast<size_t>(tensor_count_));
    std::unordered_set<std::string> seen;
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      TensorInfo t;
      t.name = read_string(fmt::format("tensor #{} name", i));
      const std::string what = fmt::format("tensor '{}'", printable(t.name));
      if (t.name.empty()) fail(fmt::format("tensor #{} has an empty name", i));
      if (!seen.insert(t.name).second) fail(fmt::format("duplicate tensor name '{}'", printable(t.name)));
      const uint32_t n_dims = read_raw<uint32_t>(what + " n_dims");
      if (n_dims == 0 || n_dims > 4) fail(fmt::format("{}: n_dims {} is not in 1..4", what, n_dims));
      t.shape.resize(n_dims);
      uint64_t n_elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        t.shape[d] = read_raw<uint64_t>(what + " dimension");
        if (t.shape[d] == 0) fail(fmt::format("{}: dimension {} is 0", what, d));
        if (!checked_mul(n_elements, t.shape[d], &n_elements))
          fail(fmt::format("{}: element count of shape {} overflows 64 bits", what, shape_text(t.shape, d + 1)));
      }
      t.n_elements = n_elements;
      const uint32_t raw_type = read_raw<uint32_t>(what + " type");
      const GgmlTypeTraits* traits = ggml_type_traits(raw_type);
      if (!traits) fail(fmt::format("{}: unknown tensor type id {}", what, raw_type));
      t.type = traits->type;
      if (t.shape[0] % traits->block_size != 0)
        fail(fmt::format("{}: row length {} is not a multiple of {}'s block size {}", what, t.shape[0],
                         traits->name, traits->block_size));
      if (!checked_mul(n_elements / traits->block_size, traits->block_bytes, &t.n_bytes))
        fail(fmt::format("{}: byte size of {} {} elements overflows 64 bits", what, n_elements, traits->name));
      t.offset = read_raw<uint64_t>(what + " offset");
      if (t.offset % file.alignment_ != 0)
        fail(fmt::format("{}: data offset {} is not a multiple of the alignment {}", what, t.offset,
                         file.alignment_));
      file.tensors_.push_back(std::move(t));
    }
  }

  static std::string shape_text(const std::vector<uint64_t>& shape, size_t n) {
    std::string s = "[";
    for (size_t i = 0; i < n; ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
    return s + "]";
  }

  void place_tensor_data(File& file) {
    const uint64_t a = file.alignment_;
    const uint64_t data_offset = (pos_ + a - 1) / a * a;  // pos_ <= file size, so this cannot overflow
    file.data_offset_ = data_offset;
    if (file.tensors_.empty()) return;
    const uint64_t file_size = bytes_.size();
    if (data_offset > file_size)
      fail(fmt::format("data section starts at offset {}, past the end of the file ({} bytes)", data_offset,
                       file_size));
    const uint64_t data_size = file_size - data_offset;
    for (TensorInfo& t : file.tensors_) {
      uint64_t end = 0;
      if (!checked_add(t.offset, t.n_bytes, &end) || end > data_size)
        fail(fmt::format("tensor '{}': data [{}, {}) runs past the end of the data section ({} bytes)",
                         printable(t.name), t.offset, t.offset + std::min(t.n_bytes, UINT64_MAX - t.offset),
                         data_size));
      t.data = bytes_.data() + data_offset + t.offset;
    }
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(file.tensors_.size());
    for (const TensorInfo& t : file.tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* x, const TensorInfo* y) { return x->offset < y->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const TensorInfo& prev = *by_offset[i - 1];
      const TensorInfo& next = *by_offset[i];
      if (prev.offset + prev.n_bytes > next.offset)
        fail(fmt::format("tensor '{}': data [{}, {}) overlaps tensor '{}' at [{}, {})", printable(next.name),
                         next.offset, next.offset + next.n_bytes, printable(prev.name), prev.offset,
                         prev.offset + prev.n_bytes));
    }
  }

  std::span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
  uint64_t tensor_count_ = 0;
  uint64_t kv_count_ = 0;
};

File File::parse(std::span<const uint8_t> bytes) {
  File file;
  Parser(bytes).parse_into(file);
  return file;
}

File File::open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below like every other special file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(fmt::format("cannot open '{}': {}", path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(fmt::format("'{}' is {}, not a regular file", path, io::file_type_name(st.st_mode)));
  }
  auto mapping = std::make_unique<Mapping>();
  if (st.st_size > 0) {
    mapping->size = static_cast<size_t>(st.st_size);
    void* address = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("cannot map '{}': {}", path, std::strerror(err)));
    }
    mapping->address = address;
  }
  ::close(fd);
  const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(mapping->address), mapping->size);
  File file = parse(bytes);
  file.mapping_ = std::move(mapping);
  return file;
}

// ---------------------------------------------------------------------------------------------------------------

const Value* File::find(std::string_view key) const {
  for (const auto& [k, v] : metadata_)
    if (k == key) return &v;
  return nullptr;
}

namespace {

[[noreturn]] void wrong_type(std::string_view key, const Value& v, std::string_view expected) {
  throw FormatError(fmt::format("metadata key '{}' has type {}, expected {}", key, type_description(v), expected));
}

}  // namespace

std::optional<int64_t> File::get_int(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array() || !is_integer_type(v->type())) wrong_type(key, *v, "an integer");
  const std::optional<int64_t> i = v->to_int();
  if (!i) throw FormatError(fmt::format("metadata key '{}' value {} does not fit in int64", key, *v->get_if<uint64_t>()));
  return i;
}

std::optional<uint64_t> File::get_uint(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array() || !is_integer_type(v->type())) wrong_type(key, *v, "an integer");
  if (const uint64_t* u = v->get_if<uint64_t>()) return *u;
  const int64_t i = *v->to_int();
  if (i < 0) throw FormatError(fmt::format("metadata key '{}' value {} is negative", key, i));
  return static_cast<uint64_t>(i);
}

std::optional<double> File::get_float(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (const float* f = v->get_if<float>()) return *f;
  if (const double* d = v->get_if<double>()) return *d;
  wrong_type(key, *v, "f32 or f64");
}

std::optional<bool> File::get_bool(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (const bool* b = v->get_if<bool>()) return *b;
  wrong_type(key, *v, "bool");
}

std::optional<std::string> File::get_string(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (const std::string* s = v->get_if<std::string>()) return *s;
  wrong_type(key, *v, "string");
}

const std::vector<std::string>* File::get_string_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return nullptr;
  if (const auto* a = v->get_if<std::vector<std::string>>()) return a;
  wrong_type(key, *v, "array of string");
}

std::optional<std::vector<float>> File::get_float_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (const auto* a = v->get_if<std::vector<float>>()) return *a;
  if (const auto* a = v->get_if<std::vector<double>>()) return std::vector<float>(a->begin(), a->end());
  wrong_type(key, *v, "array of f32 or f64");
}

std::optional<std::vector<int64_t>> File::get_int_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() || !is_integer_type(v->element_type())) wrong_type(key, *v, "array of integers");
  return std::visit(
      [&](const auto& a) -> std::vector<int64_t> {
        using T = std::decay_t<decltype(a)>;
        std::vector<int64_t> out;
        if constexpr (requires { typename T::value_type; } && !std::is_same_v<T, std::string>) {
          using E = typename T::value_type;
          if constexpr (std::is_integral_v<E> && !std::is_same_v<E, bool>) {
            out.reserve(a.size());
            for (E e : a) {
              if constexpr (std::is_same_v<E, uint64_t>) {
                if (e > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                  throw FormatError(fmt::format("metadata key '{}' element {} does not fit in int64", key, e));
              }
              out.push_back(static_cast<int64_t>(e));
            }
          }
        }
        return out;
      },
      v->storage());
}

std::string File::architecture() const {
  const Value* v = find("general.architecture");
  const std::string* s = v ? v->get_if<std::string>() : nullptr;
  return s ? *s : std::string();
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  for (const TensorInfo& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

}  // namespace tessera::gguf
