// Hand-built malformed files, one per failure class the reader must refuse, each with its one-line message.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace tessera::gguf {
namespace {

// Builds GGUF bytes field by field, so a test can write any value into any field.
struct Bytes {
  std::vector<uint8_t> b;

  Bytes& raw(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return *this;
  }
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& f32(float v) { return raw(&v, 4); }
  Bytes& str(std::string_view s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    raw("GGUF", 4);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Bytes& kv_u32(std::string_view key, uint32_t v) { return str(key).u32(static_cast<uint32_t>(ValueType::U32)).u32(v); }
  Bytes& kv_string(std::string_view key, std::string_view v) {
    return str(key).u32(static_cast<uint32_t>(ValueType::STRING)).str(v);
  }
  Bytes& tensor(std::string_view name, std::vector<uint64_t> shape, GgmlType type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(shape.size()));
    for (uint64_t d : shape) u64(d);
    return u32(static_cast<uint32_t>(type)).u64(offset);
  }
  Bytes& pad_to(size_t alignment) {
    while (b.size() % alignment) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.resize(b.size() + n, 0);
    return *this;
  }
};

// The message the reader throws for `bytes`, or "" if it accepts them.
std::string rejection(const std::vector<uint8_t>& bytes) {
  try {
    File::parse(bytes);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

void expect_rejected(const Bytes& bytes, std::string_view expected_part) {
  const std::string message = rejection(bytes.b);
  ASSERT_FALSE(message.empty()) << "accepted a file that should fail with '" << expected_part << "'";
  EXPECT_NE(message.find(expected_part), std::string::npos) << "message: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "message is not one line: " << message;
}

// A valid one-tensor file to derive broken ones from: 8 F32 values.
Bytes one_tensor_file(std::vector<uint64_t> shape = {8}, GgmlType type = GgmlType::F32, uint64_t offset = 0,
                      size_t data_bytes = 32) {
  Bytes b;
  b.header(1, 1).kv_string("general.architecture", "llama").tensor("w", std::move(shape), type, offset);
  return b.pad_to(32).zeros(data_bytes);
}

TEST(GgufMalformed, ValidBaseFileIsAccepted) {
  const Bytes b = one_tensor_file();
  const File f = File::parse(b.b);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].n_bytes, 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
}

TEST(GgufMalformed, BadMagic) {
  Bytes b = one_tensor_file();
  std::memcpy(b.b.data(), "GGML", 4);
  expect_rejected(b, "bad magic: expected 'GGUF' (47475546), found 47474d4c");
  expect_rejected(Bytes{}, "bad magic");
}

TEST(GgufMalformed, UnsupportedVersions) {
  expect_rejected(Bytes().header(0, 0, 1), "unsupported GGUF version 1");
  expect_rejected(Bytes().header(0, 0, 4), "unsupported GGUF version 4");
  expect_rejected(Bytes().header(0, 0, 0x03000000), "(a big-endian file?)");
}

TEST(GgufMalformed, TruncatedHeader) {
  Bytes b;
  b.raw("GGUF", 4).u32(3).u64(0);
  expect_rejected(b, "header metadata count: needs 8 bytes at offset 16 but the file has only 0 left");
}

TEST(GgufMalformed, TensorCountTooLargeForTheFileFailsFast) {
  Bytes b;
  b.header(uint64_t{1} << 60, 0).zeros(1000);
  expect_rejected(b, "header tensor count 1152921504606846976 cannot fit in the 1000 bytes left");
}

TEST(GgufMalformed, MetadataCountTooLargeForTheFileFailsFast) {
  Bytes b;
  b.header(0, uint64_t{1} << 60).zeros(1000);
  expect_rejected(b, "header metadata count 1152921504606846976 cannot fit");
}

TEST(GgufMalformed, StringLongerThanTheFile) {
  Bytes b;
  b.header(0, 1).u64(5000).raw("general.name", 12).zeros(20);
  expect_rejected(b, "metadata key #0: string length 5000 at offset 24 exceeds the 32 bytes left");
}

TEST(GgufMalformed, HugeArrayFailsFastWithoutAllocating) {
  Bytes b;
  b.header(0, 1).str("x.values").u32(static_cast<uint32_t>(ValueType::ARRAY)).u32(static_cast<uint32_t>(ValueType::U64));
  b.u64(uint64_t{1} << 60).zeros(1000);
  expect_rejected(b, "metadata key 'x.values': array of 1152921504606846976 u64 elements");
}

TEST(GgufMalformed, StringArrayElementLongerThanTheFile) {
  Bytes b;
  b.header(0, 1).str("tokenizer.ggml.tokens").u32(static_cast<uint32_t>(ValueType::ARRAY));
  b.u32(static_cast<uint32_t>(ValueType::STRING)).u64(2).str("<unk>").u64(uint64_t{1} << 62);
  expect_rejected(b, "string length 4611686018427387904");
}

TEST(GgufMalformed, NestedArrays) {
  Bytes b;
  b.header(0, 1).str("x.nested").u32(static_cast<uint32_t>(ValueType::ARRAY)).u32(static_cast<uint32_t>(ValueType::ARRAY));
  b.u64(1).u32(static_cast<uint32_t>(ValueType::U8)).u64(1).u8(7);
  expect_rejected(b, "metadata key 'x.nested': nested arrays (arrays of arrays) are not supported");
}

TEST(GgufMalformed, UnknownValueType) {
  Bytes b;
  b.header(0, 1).str("x.y").u32(13).u32(0);
  expect_rejected(b, "metadata key 'x.y' value type: unknown value type id 13");
}

TEST(GgufMalformed, BoolOtherThanZeroOrOne) {
  Bytes b;
  b.header(0, 1).str("tokenizer.ggml.add_bos_token").u32(static_cast<uint32_t>(ValueType::BOOL)).u8(2);
  expect_rejected(b, "bool value 2 is neither 0 nor 1");
}

TEST(GgufMalformed, DuplicateKey) {
  Bytes b;
  b.header(0, 2).kv_u32("llama.block_count", 2).kv_u32("llama.block_count", 3);
  expect_rejected(b, "duplicate metadata key 'llama.block_count'");
}

TEST(GgufMalformed, EmptyKey) {
  Bytes b;
  b.header(0, 1).kv_u32("", 2);
  expect_rejected(b, "metadata key #0 is empty");
}

TEST(GgufMalformed, KnownKeyWithTheWrongType) {
  Bytes b;
  b.header(0, 2).kv_string("general.architecture", "llama").kv_string("llama.block_count", "two");
  expect_rejected(b, "metadata key 'llama.block_count' has type string, expected u32");
  Bytes tokens;
  tokens.header(0, 1).str("tokenizer.ggml.tokens").u32(static_cast<uint32_t>(ValueType::ARRAY));
  tokens.u32(static_cast<uint32_t>(ValueType::I32)).u64(1).u32(5);
  expect_rejected(tokens, "metadata key 'tokenizer.ggml.tokens' has type array of i32, expected array of string");
}

TEST(GgufMalformed, HeadCountMayBeAnArrayPerLayer) {
  Bytes b;
  b.header(0, 2).kv_string("general.architecture", "llama").str("llama.attention.head_count");
  b.u32(static_cast<uint32_t>(ValueType::ARRAY)).u32(static_cast<uint32_t>(ValueType::I32)).u64(2).u32(4).u32(8);
  const File f = File::parse(b.b);
  EXPECT_EQ(f.get_int_array("llama.attention.head_count"), (std::vector<int64_t>{4, 8}));
}

TEST(GgufMalformed, AlignmentNotAPowerOfTwo) {
  Bytes b;
  b.header(0, 1).kv_u32("general.alignment", 48);
  expect_rejected(b, "general.alignment 48 is not a power of two");
  Bytes zero;
  zero.header(0, 1).kv_u32("general.alignment", 0);
  expect_rejected(zero, "general.alignment 0 is not a power of two");
}

TEST(GgufMalformed, AlignmentOfTheWrongType) {
  Bytes b;
  b.header(0, 1).str("general.alignment").u32(static_cast<uint32_t>(ValueType::U64)).u64(32);
  expect_rejected(b, "metadata key 'general.alignment' has type u64, expected u32");
}

TEST(GgufMalformed, DuplicateTensorName) {
  Bytes b;
  b.header(2, 0).tensor("w", {8}, GgmlType::F32, 0).tensor("w", {8}, GgmlType::F32, 32).pad_to(32).zeros(64);
  expect_rejected(b, "duplicate tensor name 'w'");
}

TEST(GgufMalformed, NDimsZeroOrMoreThanFour) {
  Bytes zero;
  zero.header(1, 0).str("w").u32(0).u32(0).u64(0).zeros(64);
  expect_rejected(zero, "tensor 'w': n_dims 0 is not in 1..4");
  expect_rejected(one_tensor_file({2, 2, 2, 1, 1}), "tensor 'w': n_dims 5 is not in 1..4");
}

TEST(GgufMalformed, DimensionOfZero) {
  expect_rejected(one_tensor_file({8, 0}), "tensor 'w': dimension 1 is 0");
}

TEST(GgufMalformed, ElementCountOverflow) {
  expect_rejected(one_tensor_file({uint64_t{1} << 32, uint64_t{1} << 32, 2}),
                  "tensor 'w': element count of shape [4294967296, 4294967296] overflows 64 bits");
}

TEST(GgufMalformed, ByteSizeOverflow) {
  expect_rejected(one_tensor_file({uint64_t{1} << 62}), "tensor 'w': byte size of 4611686018427387904 F32 elements overflows");
}

TEST(GgufMalformed, UnknownTensorType) {
  expect_rejected(one_tensor_file({8}, static_cast<GgmlType>(4)), "tensor 'w': unknown tensor type id 4");
  expect_rejected(one_tensor_file({8}, static_cast<GgmlType>(1000)), "unknown tensor type id 1000");
}

TEST(GgufMalformed, RowLengthNotAMultipleOfTheBlockSize) {
  expect_rejected(one_tensor_file({100, 2}, GgmlType::Q4_K),
                  "tensor 'w': row length 100 is not a multiple of Q4_K's block size 256");
}

TEST(GgufMalformed, TensorDataPastTheEnd) {
  expect_rejected(one_tensor_file({8}, GgmlType::F32, 0, 16),
                  "tensor 'w': data [0, 32) runs past the end of the data section (16 bytes)");
  expect_rejected(one_tensor_file({8}, GgmlType::F32, UINT64_MAX - 31, 32), "runs past the end");
}

TEST(GgufMalformed, MisalignedTensorOffset) {
  expect_rejected(one_tensor_file({8}, GgmlType::F32, 4, 64), "tensor 'w': data offset 4 is not a multiple of the alignment 32");
}

TEST(GgufMalformed, OverlappingTensors) {
  Bytes b;
  b.header(2, 0).tensor("a", {16}, GgmlType::F32, 0).tensor("b", {8}, GgmlType::F32, 32).pad_to(32).zeros(96);
  expect_rejected(b, "tensor 'b': data [32, 64) overlaps tensor 'a' at [0, 64)");
}

TEST(GgufMalformed, TruncatedTensorInfo) {
  Bytes b;
  b.header(1, 0).str("w").u32(4).u64(8).u64(8).u64(8).u32(1);
  expect_rejected(b, "tensor 'w' dimension: needs 8 bytes");
}

TEST(GgufMalformed, HostileNamesArePrintedEscaped) {
  Bytes b;
  b.header(0, 2).kv_u32("a\nb", 1).kv_u32("a\nb", 1);
  expect_rejected(b, "duplicate metadata key 'a\\x0ab'");
}

}  // namespace
}  // namespace tessera::gguf
