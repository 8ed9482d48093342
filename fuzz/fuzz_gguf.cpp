// libFuzzer target for the GGUF reader: any input must either parse or throw FormatError, never crash, read out
// of bounds or allocate without bound. A parsed file is also rewritten and re-read, which must give the same
// bytes again.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "gguf/gguf.h"

namespace {

// Touches every value and the first and last byte of every tensor, so a bad view shows up under ASan.
uint64_t touch_everything(const tessera::gguf::File& file) {
  uint64_t sum = file.version() + file.alignment() + file.data_offset();
  for (const auto& [key, value] : file.metadata()) {
    sum += key.size() + value.array_size() + static_cast<uint64_t>(value.element_type());
    if (const auto i = value.to_int()) sum += static_cast<uint64_t>(*i);
    if (const auto* strings = value.get_if<std::vector<std::string>>())
      for (const std::string& s : *strings) sum += s.size();
  }
  for (const tessera::gguf::TensorInfo& t : file.tensors()) {
    sum += t.n_elements + t.n_rows() + t.row_bytes() + t.data[0] + t.data[t.n_bytes - 1];
    if (file.find_tensor(t.name) != &t) std::abort();
  }
  return sum;
}

std::vector<uint8_t> rewrite(const tessera::gguf::File& file) {
  tessera::gguf::Writer writer(static_cast<uint32_t>(file.alignment()));
  for (const auto& [key, value] : file.metadata()) writer.set(key, value);
  for (const tessera::gguf::TensorInfo& t : file.tensors())
    writer.add_tensor(t.name, t.type, t.shape, std::span<const uint8_t>(t.data, t.n_bytes));
  return writer.to_bytes();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const tessera::gguf::File file = tessera::gguf::File::parse(std::span<const uint8_t>(data, size));
    volatile uint64_t sink = touch_everything(file);
    (void)sink;
    // A valid file may declare a huge general.alignment (any power of two); rewriting it would pad to that
    // size, which tests the writer's memset rather than the reader, so only modest alignments are rewritten.
    if (file.alignment() > size + 64) return 0;
    const std::vector<uint8_t> bytes = rewrite(file);
    const tessera::gguf::File again = tessera::gguf::File::parse(bytes);
    if (rewrite(again) != bytes) {
      std::fprintf(stderr, "rewriting a parsed file is not stable\n");
      std::abort();
    }
  } catch (const tessera::gguf::FormatError&) {
    // Refusing a malformed file is the expected outcome for most inputs.
  }
  return 0;
}
