// Writer -> reader round trips: every value type, tensor layout and padding, and every fixture read, rewritten
// and read again.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "gguf/gguf.h"

namespace tessera::gguf {
namespace {

std::vector<std::filesystem::path> every_fixture_gguf() {
  std::vector<std::filesystem::path> paths;
  for (const char* dir : {"models", "trained", "vocab"})
    for (const auto& entry : std::filesystem::directory_iterator(test::fixture(dir)))
      if (entry.path().extension() == ".gguf") paths.push_back(entry.path());
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST(GgufWriter, EveryValueTypeRoundTrips) {
  Writer w;
  w.set("t.u8", uint8_t{200});
  w.set("t.i8", int8_t{-100});
  w.set("t.u16", uint16_t{60000});
  w.set("t.i16", int16_t{-30000});
  w.set("t.u32", uint32_t{4000000000u});
  w.set("t.i32", int32_t{-2000000000});
  w.set("t.f32", 1.5f);
  w.set("t.bool", true);
  w.set("t.string", "héllo");
  w.set("t.u64", uint64_t{18000000000000000000u});
  w.set("t.i64", int64_t{-9000000000000000000});
  w.set("t.f64", 2.25e300);
  w.set("t.empty_string", "");
  w.set("a.u8", std::vector<uint8_t>{0, 255});
  w.set("a.i8", std::vector<int8_t>{-128, 127});
  w.set("a.u16", std::vector<uint16_t>{1, 65535});
  w.set("a.i16", std::vector<int16_t>{-32768, 5});
  w.set("a.u32", std::vector<uint32_t>{7, 4294967295u});
  w.set("a.i32", std::vector<int32_t>{-1, 2});
  w.set("a.f32", std::vector<float>{0.25f, -3.0f});
  w.set("a.bool", std::vector<bool>{true, false, true});
  w.set("a.string", std::vector<std::string>{"a", "", "ccc"});
  w.set("a.u64", std::vector<uint64_t>{1, UINT64_MAX});
  w.set("a.i64", std::vector<int64_t>{INT64_MIN, 3});
  w.set("a.f64", std::vector<double>{-1.25, 0.5});
  w.set("a.empty", std::vector<uint32_t>{});
  const std::vector<uint8_t> bytes = w.to_bytes();
  const File f = File::parse(bytes);
  EXPECT_EQ(f.version(), 3u);
  ASSERT_EQ(f.metadata().size(), 26u);
  EXPECT_EQ(f.metadata()[0].first, "t.u8");  // insertion order
  EXPECT_EQ(f.metadata()[25].first, "a.empty");
  EXPECT_EQ(*f.find("t.u8")->get_if<uint8_t>(), 200);
  EXPECT_EQ(*f.find("t.i8")->get_if<int8_t>(), -100);
  EXPECT_EQ(*f.find("t.u16")->get_if<uint16_t>(), 60000);
  EXPECT_EQ(*f.find("t.i16")->get_if<int16_t>(), -30000);
  EXPECT_EQ(*f.find("t.u32")->get_if<uint32_t>(), 4000000000u);
  EXPECT_EQ(*f.find("t.i32")->get_if<int32_t>(), -2000000000);
  EXPECT_EQ(*f.find("t.f32")->get_if<float>(), 1.5f);
  EXPECT_EQ(*f.find("t.bool")->get_if<bool>(), true);
  EXPECT_EQ(*f.find("t.string")->get_if<std::string>(), "héllo");
  EXPECT_EQ(*f.find("t.u64")->get_if<uint64_t>(), 18000000000000000000u);
  EXPECT_EQ(*f.find("t.i64")->get_if<int64_t>(), -9000000000000000000);
  EXPECT_EQ(*f.find("t.f64")->get_if<double>(), 2.25e300);
  EXPECT_EQ(*f.find("a.bool")->get_if<std::vector<bool>>(), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(*f.find("a.string")->get_if<std::vector<std::string>>(), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(*f.find("a.i64")->get_if<std::vector<int64_t>>(), (std::vector<int64_t>{INT64_MIN, 3}));
  EXPECT_EQ(f.find("a.empty")->element_type(), ValueType::U32);
  EXPECT_EQ(f.find("a.empty")->array_size(), 0u);
  // Every value is identical, type included.
  Writer again;
  for (const auto& [key, value] : f.metadata()) again.set(key, value);
  EXPECT_EQ(again.to_bytes(), bytes);

  // The lenient getters.
  EXPECT_EQ(f.get_int("t.u32"), 4000000000);
  EXPECT_EQ(f.get_uint("t.u8"), 200u);
  EXPECT_THROW(f.get_uint("t.i8"), FormatError);  // negative
  EXPECT_THROW(f.get_int("t.u64"), FormatError);  // above INT64_MAX
  EXPECT_EQ(f.get_uint("t.u64"), 18000000000000000000u);
  EXPECT_EQ(f.get_float("t.f64"), 2.25e300);
  EXPECT_EQ(f.get_int_array("a.u16"), (std::vector<int64_t>{1, 65535}));
  EXPECT_EQ(f.get_float_array("a.f64"), (std::vector<float>{-1.25f, 0.5f}));
  EXPECT_THROW(f.get_int_array("a.u64"), FormatError);  // UINT64_MAX does not fit
  EXPECT_EQ(f.find("t.i16")->to_int(), -30000);
  EXPECT_EQ(f.find("t.u32")->to_float(), 4000000000.0);
  EXPECT_FALSE(f.find("t.string")->to_int().has_value());
}

TEST(GgufWriter, SetReplacesInPlaceAndRemoveDeletes) {
  Writer w;
  w.set("a", uint32_t{1});
  w.set("b", uint32_t{2});
  w.set("a", "now a string");
  w.remove("b");
  const std::vector<uint8_t> bytes = w.to_bytes();
  const File f = File::parse(bytes);
  ASSERT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.get_string("a"), "now a string");
}

TEST(GgufWriter, TensorLayoutIsAlignedAndPadded) {
  for (uint32_t alignment : {32u, 64u, 1u}) {
    SCOPED_TRACE(alignment);
    Writer w(alignment);
    w.set("general.architecture", "llama");
    std::vector<uint8_t> q8(34 * 2);  // 2 Q8_0 blocks
    for (size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<uint8_t>(i * 7);
    std::vector<float> norm = {1.0f, 2.0f, 3.0f};
    w.add_tensor("q", GgmlType::Q8_0, {64}, q8);
    w.add_tensor("norm", GgmlType::F32, {3}, [&](std::span<uint8_t> out) {
      ASSERT_EQ(out.size(), 12u);
      std::memcpy(out.data(), norm.data(), out.size());
    });
    w.add_tensor("m", GgmlType::F16, {2, 3, 1, 1}, [](std::span<uint8_t> out) { std::memset(out.data(), 0x3c, out.size()); });
    const std::vector<uint8_t> bytes = w.to_bytes();
    const File f = File::parse(bytes);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.get_uint("general.alignment").has_value(), alignment != 32);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    ASSERT_EQ(f.tensors().size(), 3u);
    const TensorInfo& q = f.tensors()[0];
    const TensorInfo& n = f.tensors()[1];
    const TensorInfo& m = f.tensors()[2];
    EXPECT_EQ(q.offset, 0u);
    EXPECT_EQ(n.offset, (68 + alignment - 1) / alignment * alignment);
    EXPECT_EQ(m.offset % alignment, 0u);
    EXPECT_EQ(m.shape, (std::vector<uint64_t>{2, 3, 1, 1}));
    EXPECT_EQ(m.n_bytes, 12u);
    EXPECT_EQ(std::vector<uint8_t>(q.data, q.data + q.n_bytes), q8);
    EXPECT_EQ(std::memcmp(n.data, norm.data(), 12), 0);
    EXPECT_EQ(m.data[11], 0x3c);
    // The file ends with the last tensor's padding, as llama.cpp writes it.
    EXPECT_EQ(bytes.size(), f.data_offset() + m.offset + (12 + alignment - 1) / alignment * alignment);
  }
}

TEST(GgufWriter, RefusesInvalidTensorsAndAlignment) {
  Writer w;
  EXPECT_THROW(w.add_tensor("x", GgmlType::Q4_K, {100}, [](std::span<uint8_t>) {}), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("x", GgmlType::F32, {}, [](std::span<uint8_t>) {}), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("x", GgmlType::F32, {4, 0}, [](std::span<uint8_t>) {}), std::invalid_argument);
  const std::vector<uint8_t> eight(8);
  EXPECT_THROW(w.add_tensor("x", GgmlType::F32, {4}, eight), std::invalid_argument);
  w.add_tensor("x", GgmlType::F32, {2}, eight);
  EXPECT_THROW(w.add_tensor("x", GgmlType::F32, {2}, eight), std::invalid_argument);
  EXPECT_THROW(w.set("general.alignment", uint32_t{24}), std::invalid_argument);
  EXPECT_THROW(w.set("general.alignment", uint64_t{32}), std::invalid_argument);
  EXPECT_THROW(Writer(0), std::invalid_argument);
}

TEST(GgufWriter, WriteGoesThroughATemporaryFile) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("tessera-gguf-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Writer w;
  w.set("general.name", "written");
  const std::vector<uint8_t> data(32, 9);
  w.add_tensor("t", GgmlType::F32, {8}, data);
  const std::string path = (dir / "out.gguf").string();
  w.write(path);
  EXPECT_EQ(read_file(path), w.to_bytes());
  EXPECT_EQ(File::open(path).get_string("general.name"), "written");
  // A producer that throws leaves neither the file nor the temporary behind.
  Writer failing;
  failing.add_tensor("t", GgmlType::F32, {8}, [](std::span<uint8_t>) { throw std::runtime_error("no data"); });
  const std::string failed_path = (dir / "failed.gguf").string();
  EXPECT_THROW(failing.write(failed_path), std::runtime_error);
  EXPECT_FALSE(std::filesystem::exists(failed_path));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);
  std::filesystem::remove_all(dir);
}

// Read -> write -> read keeps every key, value and tensor byte, and gives llama.cpp's own layout byte for byte.
TEST(GgufWriter, EveryFixtureRoundTrips) {
  const std::vector<std::filesystem::path> paths = every_fixture_gguf();
  ASSERT_EQ(paths.size(), 25u);
  for (const std::filesystem::path& path : paths) {
    SCOPED_TRACE(path.filename().string());
    const File original = File::open(path.string());
    Writer w(static_cast<uint32_t>(original.alignment()));
    for (const auto& [key, value] : original.metadata()) w.set(key, value);
    for (const TensorInfo& t : original.tensors())
      w.add_tensor(t.name, t.type, t.shape, std::span<const uint8_t>(t.data, t.n_bytes));
    const std::vector<uint8_t> bytes = w.to_bytes();
    const File copy = File::parse(bytes);
    EXPECT_EQ(copy.metadata(), original.metadata());
    ASSERT_EQ(copy.tensors().size(), original.tensors().size());
    for (size_t i = 0; i < copy.tensors().size(); ++i) {
      const TensorInfo& a = original.tensors()[i];
      const TensorInfo& b = copy.tensors()[i];
      EXPECT_EQ(b.name, a.name);
      EXPECT_EQ(b.type, a.type);
      EXPECT_EQ(b.shape, a.shape);
      EXPECT_EQ(b.offset, a.offset);
      ASSERT_EQ(b.n_bytes, a.n_bytes);
      EXPECT_EQ(std::memcmp(b.data, a.data, a.n_bytes), 0) << a.name;
    }
    if (!original.tensors().empty()) {
      EXPECT_TRUE(bytes == read_file(path)) << "layout differs from the original";
    }
  }
}

}  // namespace
}  // namespace tessera::gguf
