// The CUDA KV cache in every format, with sliding windows and context shifts: the store kernels against the CPU's
// quantizers byte for byte, the three attention kernels against cpu::attend over the keys each token sees, the
// shift's kernels against a rotation on the host, and the engine end to end against the f64 reference
// (common/kv_cache_checks.h) and against the CPU backend.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/kernels.h"
#include "common/fixtures.h"
#include "common/kv_cache_checks.h"
#include "cuda/cuda_test_util.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/quant.h"

namespace tessera::cuda {
namespace {

using test::DeviceBuffer;
using test::expect_close;

constexpr int kBlock = 16;  // KV block size
const KvFormat kAllFormats[] = {KvFormat::F16, KvFormat::F32, KvFormat::BF16, KvFormat::Q8_0, KvFormat::Q4_0};

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool quantized(KvFormat f) { return f == KvFormat::Q8_0 || f == KvFormat::Q4_0; }

// One layer's keys (or values) in the device layout (kernels.h), built and read on the host: rows stored the way
// the CPU backend stores them (its Q8_0 / Q4_0 quantizers), split into the data and scale planes.
class HostCache {
 public:
  HostCache(KvFormat format, int n_slots, int kv_dim)
      : format_(format), n_slots_(n_slots), kv_dim_(kv_dim),
        data_(static_cast<size_t>(n_slots) * kv_data_bytes(format, kv_dim)),
        scales_(quantized(format) ? static_cast<size_t>(n_slots) * kv_dim / 32 : 0) {}

  void set_row(int slot, const float* x) {
    uint8_t* row = data_.data() + static_cast<size_t>(slot) * kv_data_bytes(format_, kv_dim_);
    switch (format_) {
      case KvFormat::F32: std::memcpy(row, x, kv_dim_ * sizeof(float)); return;
      case KvFormat::F16:
      case KvFormat::BF16:
        for (int i = 0; i < kv_dim_; ++i) {
          const uint16_t h = format_ == KvFormat::F16 ? quant::fp32_to_fp16(x[i]) : quant::fp32_to_bf16(x[i]);
          std::memcpy(row + 2 * i, &h, 2);
        }
        return;
      case KvFormat::Q8_0:
      case KvFormat::Q4_0: {
        const bool q8 = format_ == KvFormat::Q8_0;
        const size_t block_bytes = q8 ? 34 : 18;
        std::vector<uint8_t> blocks(kv_dim_ / 32 * block_bytes);
        if (q8) {
          quant::quantize_activations(GgmlType::Q8_0, x, blocks.data(), kv_dim_);
        } else {
          quant::quantize_row(GgmlType::Q4_0, x, blocks.data(), kv_dim_);
        }
        for (int b = 0; b < kv_dim_ / 32; ++b) {
          std::memcpy(&scales_[static_cast<size_t>(slot) * (kv_dim_ / 32) + b], blocks.data() + b * block_bytes, 2);
          std::memcpy(row + b * (block_bytes - 2), blocks.data() + b * block_bytes + 2, block_bytes - 2);
        }
        return;
      }
    }
  }
  std::vector<float> row(int slot) const {
    std::vector<float> out(kv_dim_);
    const uint8_t* row = data_.data() + static_cast<size_t>(slot) * kv_data_bytes(format_, kv_dim_);
    for (int i = 0; i < kv_dim_; ++i) {
      uint16_t h;
      switch (format_) {
        case KvFormat::F32: std::memcpy(&out[i], row + 4 * i, 4); break;
        case KvFormat::F16: std::memcpy(&h, row + 2 * i, 2), out[i] = quant::fp16_to_fp32(h); break;
        case KvFormat::BF16: std::memcpy(&h, row + 2 * i, 2), out[i] = quant::bf16_to_fp32(h); break;
        case KvFormat::Q8_0:
        case KvFormat::Q4_0: {
          const float d = quant::fp16_to_fp32(scales_[static_cast<size_t>(slot) * (kv_dim_ / 32) + i / 32]);
          if (format_ == KvFormat::Q8_0) {
            out[i] = static_cast<float>(static_cast<int8_t>(row[i])) * d;
          } else {
            const int j = i % 32;
            const uint8_t byte = row[i / 32 * 16 + j % 16];
            out[i] = static_cast<float>((j < 16 ? byte & 0xF : byte >> 4) - 8) * d;
          }
          break;
        }
      }
    }
    return out;
  }
  // One quantization step of the block holding value i of slot's row (0 for the float formats).
  float step(int slot, int i) const {
    if (!quantized(format_)) return 0;
    return std::fabs(quant::fp16_to_fp32(scales_[static_cast<size_t>(slot) * (kv_dim_ / 32) + i / 32]));
  }
  const std::vector<uint8_t>& data() const { return data_; }
  const std::vector<uint16_t>& scales() const { return scales_; }
  std::vector<uint8_t>& data() { return data_; }
  std::vector<uint16_t>& scales() { return scales_; }
  KvFormat format() const { return format_; }

 private:
  KvFormat format_;
  int n_slots_, kv_dim_;
  std::vector<uint8_t> data_;
  std::vector<uint16_t> scales_;
};

// A cache in device memory, uploaded from and downloaded into a HostCache.
class DeviceCache {
 public:
  DeviceCache(const HostCache& host, int n_slots, int kv_dim)
      : format_(host.format()), kv_dim_(kv_dim), n_slots_(n_slots),
        buffer_(kv_cache_device_bytes(host.format(), n_slots, kv_dim)),
        cache_(kv_cache_at(buffer_.get(), host.format(), n_slots, kv_dim)) {
    upload(host);
  }
  void upload(const HostCache& host) {
    ASSERT_EQ(cudaMemcpy(cache_.data, host.data().data(), host.data().size(), cudaMemcpyHostToDevice), cudaSuccess);
    if (!host.scales().empty()) {
      ASSERT_EQ(cudaMemcpy(cache_.scales, host.scales().data(), host.scales().size() * 2, cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  HostCache download() const {
    HostCache host(format_, n_slots_, kv_dim_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data().data(), cache_.data, host.data().size(), cudaMemcpyDeviceToHost), cudaSuccess);
    if (!host.scales().empty()) {
      EXPECT_EQ(cudaMemcpy(host.scales().data(), cache_.scales, host.scales().size() * 2, cudaMemcpyDeviceToHost),
                cudaSuccess);
    }
    return host;
  }
  const KvCache& cache() const { return cache_; }

 private:
  KvFormat format_;
  int kv_dim_, n_slots_;
  DeviceBuffer<uint8_t> buffer_;
  KvCache cache_;
};

HostCache random_cache(KvFormat format, int n_slots, int kv_dim, uint32_t seed) {
  HostCache cache(format, n_slots, kv_dim);
  const std::vector<float> x = random_floats(static_cast<size_t>(n_slots) * kv_dim, -1, 1, seed);
  for (int s = 0; s < n_slots; ++s) cache.set_row(s, x.data() + static_cast<size_t>(s) * kv_dim);
  return cache;
}

RopeParams rope_params(int n_head, int n_head_kv, int head_dim, const model::RopeConfig& rc) {
  return RopeParams{n_head, n_head_kv, head_dim, rc.n_dims, std::pow(rc.freq_base, -2.0f / rc.n_dims), rc.freq_scale,
                    nullptr};
}

// ---- the store -----------------------------------------------------------------------------------------------

// At position 0 RoPE is the identity, so the stored rows are the CPU's quantization of k and v, byte for byte; head
// dims 64 and 8 (blocks across four heads), keys and values in one format and in two.
TEST(CudaKvCache, StoreQuantizesAsTheCpu) {
  TESSERA_REQUIRE_GPU();
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  for (const Shape shape : {Shape{4, 2, 64}, Shape{8, 4, 8}}) {
    std::vector<KvFormats> cases;
    for (KvFormat f : kAllFormats) cases.push_back(KvFormats(f));
    cases.push_back({KvFormat::Q8_0, KvFormat::F16});
    cases.push_back({KvFormat::F32, KvFormat::Q4_0});
    for (const KvFormats formats : cases) {
      const int hd = shape.head_dim, kv_dim = shape.n_head_kv * hd, q_dim = shape.n_head * hd, n_tokens = 3;
      const int n_slots = 11;
      const std::vector<int32_t> positions = {0, 0, 0}, slots = {9, 2, 5};
      const std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 1), k = random_floats(n_tokens * kv_dim, -2, 2, 2),
                               v = random_floats(n_tokens * kv_dim, -1, 1, 3);
      model::RopeConfig rc;
      rc.n_dims = hd;
      DeviceBuffer<float> d_q(q), d_k(k), d_v(v);
      DeviceBuffer<int32_t> d_pos(positions), d_slots(slots);
      HostCache want_k(formats.k, n_slots, kv_dim), want_v(formats.v, n_slots, kv_dim);
      DeviceCache dk(want_k, n_slots, kv_dim), dv(want_v, n_slots, kv_dim);
      rope_and_store_kv(rope_params(shape.n_head, shape.n_head_kv, hd, rc), d_q.get(), d_k.get(), d_v.get(),
                        d_pos.get(), d_slots.get(), n_tokens, dk.cache(), dv.cache(), formats, nullptr);
      for (int t = 0; t < n_tokens; ++t) {
        want_k.set_row(slots[t], k.data() + t * kv_dim);
        want_v.set_row(slots[t], v.data() + t * kv_dim);
      }
      const std::string what = kv_formats_name(formats) + " head dim " + std::to_string(hd);
      const HostCache got_k = dk.download(), got_v = dv.download();
      EXPECT_EQ(got_k.data(), want_k.data()) << what << ": keys";
      EXPECT_EQ(got_k.scales(), want_k.scales()) << what << ": key scales";
      EXPECT_EQ(got_v.data(), want_v.data()) << what << ": values";
      EXPECT_EQ(got_v.scales(), want_v.scales()) << what << ": value scales";
    }
  }
}

// Where a format's blocks span heads (head dim 8 with q8_0 values) the keys are rotated in chunks of 32 values:
// still the CPU's RoPE, pair by pair.
TEST(CudaKvCache, StoreRotatesKeysInChunksOfHeads) {
  TESSERA_REQUIRE_GPU();
  const int n_head = 8, n_head_kv = 4, hd = 8, kv_dim = n_head_kv * hd, q_dim = n_head * hd, n_tokens = 3;
  const std::vector<int32_t> positions = {1, 17, 4093}, slots = {3, 0, 6};
  const std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 1), k = random_floats(n_tokens * kv_dim, -1, 1, 2),
                           v = random_floats(n_tokens * kv_dim, -1, 1, 3);
  model::RopeConfig rc;
  rc.n_dims = 6;  // the last pair of each head is not rotated
  rc.freq_base = 10000;
  DeviceBuffer<float> d_q(q), d_k(k), d_v(v);
  DeviceBuffer<int32_t> d_pos(positions), d_slots(slots);
  const KvFormats formats{KvFormat::F32, KvFormat::Q8_0};
  HostCache host_k(formats.k, 8, kv_dim), host_v(formats.v, 8, kv_dim);
  DeviceCache dk(host_k, 8, kv_dim), dv(host_v, 8, kv_dim);
  rope_and_store_kv(rope_params(n_head, n_head_kv, hd, rc), d_q.get(), d_k.get(), d_v.get(), d_pos.get(),
                    d_slots.get(), n_tokens, dk.cache(), dv.cache(), formats, nullptr);
  const HostCache got = dk.download();
  std::vector<float> got_k, want_k, q_rot = q;
  for (int t = 0; t < n_tokens; ++t) {
    const cpu::RopeAngles angles = cpu::rope_angles(rc, positions[t]);
    std::vector<float> row(k.begin() + t * kv_dim, k.begin() + (t + 1) * kv_dim);
    cpu::apply_rope(row.data(), n_head_kv, hd, angles);
    cpu::apply_rope(q_rot.data() + t * q_dim, n_head, hd, angles);
    want_k.insert(want_k.end(), row.begin(), row.end());
    const std::vector<float> stored = got.row(slots[t]);
    got_k.insert(got_k.end(), stored.begin(), stored.end());
  }
  expect_close(got_k, want_k, 2e-6, 1e-5, "keys rotated in chunks");
  expect_close(d_q.download(), q_rot, 2e-6, 1e-5, "queries");
}

// ---- attention -----------------------------------------------------------------------------------------------

// One step's tokens of several sequences: their positions, windows, and the per-position slot table.
struct Step {
  std::vector<int32_t> positions;
  std::vector<KeyWindow> windows;       // (window_begin, sink_end) per token
  std::vector<int32_t> table_offsets;   // per token: where its sequence's blocks start in the block table
  std::vector<int32_t> block_table;     // -1 for blocks no token of the sequence sees
  std::vector<int32_t> slot_of;         // per token: its sequence's slot of each position, from slot_begin[t]
  std::vector<int32_t> slot_begin;
};

// Sequences given as (first position of the step, tokens in the step), KV blocks shuffled over the cache; with a
// window, a token at p sees [first_visible(p), p] and [0, sink_end); blocks that no token of its sequence sees are
// -1 in the table (as the engine frees them).
Step make_step(const std::vector<std::pair<int, int>>& sequences, int window, int n_sink, int n_cache_blocks,
               uint32_t seed) {
  Step s;
  std::vector<int32_t> perm(n_cache_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  size_t next_block = 0;
  for (const auto& [first, count] : sequences) {
    const int end = first + count, n_blocks = (end + kBlock - 1) / kBlock;
    const int first_visible = window > 0 ? std::max(0, first - window + 1) : 0;
    const int table_offset = static_cast<int>(s.block_table.size());
    const int slot_begin = static_cast<int>(s.slot_of.size());
    for (int b = 0; b < n_blocks; ++b) {
      const bool seen = b * kBlock < n_sink || (b + 1) * kBlock > first_visible;
      const int32_t block = seen ? perm.at(next_block++) : -1;
      s.block_table.push_back(block);
      for (int j = 0; j < kBlock; ++j) s.slot_of.push_back(block < 0 ? -1 : block * kBlock + j);
    }
    for (int p = first; p < end; ++p) {
      const int wb = window > 0 ? std::max(0, p - window + 1) : 0;
      s.positions.push_back(p);
      s.windows.push_back(make_int2(wb, std::min(n_sink, wb)));
      s.table_offsets.push_back(table_offset);
      s.slot_begin.push_back(slot_begin);
    }
  }
  return s;
}

bool sees(const Step& s, int t, int key) {
  return key <= s.positions[t] && (key >= s.windows[t].x || key < s.windows[t].y);
}

// A head's query as the kernels meet quantized keys: 8 bits per block of 32 (the CPU's Q8_0 activations; a head
// under 32 values is one block, padded with zeros).
std::vector<float> q8_round(const float* x, int n) {
  const int padded = (n + 31) / 32 * 32;
  std::vector<float> in(padded, 0.0f), out(padded);
  std::copy_n(x, n, in.begin());
  std::vector<uint8_t> blocks(quant::activation_row_bytes(GgmlType::Q8_0, padded));
  quant::quantize_activations(GgmlType::Q8_0, in.data(), blocks.data(), padded);
  quant::dequantize_row(GgmlType::Q8_0, blocks.data(), out.data(), padded);
  out.resize(n);
  return out;
}

// cpu::attend for every token and query head over the keys it sees, read from the host caches; the query rounded
// as `query_rounding` says: none, to f16 with the weights, to 8 bits, or to 8 bits and then f16 with the weights
// (the flash kernel's tensor cores meeting quantized keys).
enum class QueryRounding { None, F16, Q8, Q8ThenF16 };
std::vector<float> attention_reference(const Step& s, const std::vector<float>& q, const HostCache& k,
                                       const HostCache& v, int n_head, int n_head_kv, int hd, QueryRounding rounding) {
  const int n_tokens = static_cast<int>(s.positions.size()), q_dim = n_head * hd, group = n_head / n_head_kv;
  std::vector<float> out(static_cast<size_t>(n_tokens) * q_dim);
  for (int t = 0; t < n_tokens; ++t) {
    std::vector<int> keys;
    for (int j = 0; j <= s.positions[t]; ++j) {
      if (sees(s, t, j)) keys.push_back(j);
    }
    for (int h = 0; h < n_head; ++h) {
      const int n = static_cast<int>(keys.size());
      std::vector<float> kr(n * hd), vr(n * hd), scores(n);
      for (int i = 0; i < n; ++i) {
        const int slot = s.slot_of.at(s.slot_begin[t] + keys[i]);
        const std::vector<float> krow = k.row(slot), vrow = v.row(slot);
        std::copy_n(krow.begin() + (h / group) * hd, hd, kr.begin() + i * hd);
        std::copy_n(vrow.begin() + (h / group) * hd, hd, vr.begin() + i * hd);
      }
      std::vector<float> query(q.begin() + t * q_dim + h * hd, q.begin() + t * q_dim + (h + 1) * hd);
      if (rounding == QueryRounding::Q8 || rounding == QueryRounding::Q8ThenF16) query = q8_round(query.data(), hd);
      cpu::attend(query.data(), kr.data(), vr.data(), hd, n, hd, 1.0f / std::sqrt(static_cast<float>(hd)),
                  rounding == QueryRounding::F16 || rounding == QueryRounding::Q8ThenF16, scores.data(),
                  out.data() + t * q_dim + h * hd);
    }
  }
  return out;
}

AttentionParams params(int n_head, int n_head_kv, int hd, KvFormats formats) {
  AttentionParams p;
  p.n_head = n_head;
  p.n_head_kv = n_head_kv;
  p.head_dim = hd;
  p.k_format = formats.k;
  p.v_format = formats.v;
  p.kv_block_shift = 4;
  return p;
}

struct Window {
  int window, n_sink;
};

// The general kernel (mixed formats, and head dims the fused ones do not take) with windows and split keys; quantized
// keys meet the query rounded to 8 bits per block (here a head of 8 values), as on the CPU.
TEST(CudaKvCache, AttentionKernelReadsEveryFormatWithinWindows) {
  TESSERA_REQUIRE_GPU();
  const int n_head = 8, n_head_kv = 4, hd = 8, kv_dim = n_head_kv * hd, q_dim = n_head * hd;
  const int n_cache_blocks = 40, n_slots = n_cache_blocks * kBlock;
  for (const KvFormats formats : {KvFormats{KvFormat::Q8_0, KvFormat::F16}, KvFormats{KvFormat::F16, KvFormat::Q4_0},
                                  KvFormats(KvFormat::BF16), KvFormats(KvFormat::Q8_0), KvFormats(KvFormat::Q4_0)}) {
    for (const Window w : {Window{0, 0}, Window{37, 0}, Window{37, 5}}) {
      for (int n_splits : {1, 5}) {
        const Step s = make_step({{250, 2}, {0, 1}, {40, 3}}, w.window, w.n_sink, n_cache_blocks, 3);
        const HostCache k = random_cache(formats.k, n_slots, kv_dim, 10), v = random_cache(formats.v, n_slots, kv_dim, 11);
        const int n_tokens = static_cast<int>(s.positions.size());
        const std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 12);
        DeviceCache dk(k, n_slots, kv_dim), dv(v, n_slots, kv_dim);
        DeviceBuffer<float> d_q(q), d_out(n_tokens * q_dim);
        DeviceBuffer<int32_t> d_pos(s.positions), d_off(s.table_offsets), d_table(s.block_table);
        DeviceBuffer<KeyWindow> d_windows(s.windows);
        const AttentionParams p = params(n_head, n_head_kv, hd, formats);
        DeviceBuffer<float> partials(attention_partials_floats(p, n_tokens, n_splits));
        attention(p, d_q.get(), dk.cache(), dv.cache(), d_pos.get(), w.window > 0 ? d_windows.get() : nullptr,
                  d_off.get(), d_table.get(), n_tokens, n_splits, partials.get(), d_out.get(), nullptr);
        const bool f16 = formats.k == KvFormat::F16 && formats.v == KvFormat::F16;
        const QueryRounding rounding =
            f16 ? QueryRounding::F16 : quantized(formats.k) ? QueryRounding::Q8 : QueryRounding::None;
        const std::vector<float> want = attention_reference(s, q, k, v, n_head, n_head_kv, hd, rounding);
        expect_close(d_out.download(), want, 2e-5, 0,
                     kv_formats_name(formats) + " window " + std::to_string(w.window) + " sinks " +
                         std::to_string(w.n_sink) + " splits " + std::to_string(n_splits));
      }
    }
  }
}

// The fused decode kernel in every format, with and without a window (whose blocks behind it are -1 in the table):
// six tokens of three sequences, three of them continuing one sequence (each sees the new keys of those before it,
// which this launch writes). Quantized keys meet the query quantized to 8 bits. The rows it stores are the ones
// the reference reads; they are within a quantization step of the CPU's rounding of the CPU's rotation.
TEST(CudaKvCache, DecodeAttentionInEveryFormatWithinWindows) {
  TESSERA_REQUIRE_GPU();
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  for (const Shape shape : {Shape{32, 4, 64}, Shape{8, 2, 128}, Shape{4, 4, 32}}) {
    for (const KvFormat format : kAllFormats) {
      for (const Window w : {Window{0, 0}, Window{300, 4}, Window{7, 0}}) {
        const int hd = shape.head_dim, kv_dim = shape.n_head_kv * hd, q_dim = shape.n_head * hd;
        const AttentionParams p = params(shape.n_head, shape.n_head_kv, hd, format);
        ASSERT_TRUE(decode_attention_supported(p)) << kv_format_name(format);
        decode_attention_prepare(p);
        const int n_cache_blocks = 48, n_slots = n_cache_blocks * kBlock;
        const Step s = make_step({{597, 3}, {0, 1}, {40, 1}, {5, 1}}, w.window, w.n_sink, n_cache_blocks, 5);
        const int n_tokens = static_cast<int>(s.positions.size());
        std::vector<int32_t> write_slots;
        for (int t = 0; t < n_tokens; ++t) write_slots.push_back(s.slot_of.at(s.slot_begin[t] + s.positions[t]));

        model::RopeConfig rc;
        rc.n_dims = hd - 8;
        rc.freq_base = 10000;
        const RopeParams rope = rope_params(shape.n_head, shape.n_head_kv, hd, rc);
        HostCache k_cache = random_cache(format, n_slots, kv_dim, 10), v_cache = random_cache(format, n_slots, kv_dim, 11);
        const std::vector<float> q = random_floats(n_tokens * q_dim, -1, 1, 12), k = random_floats(n_tokens * kv_dim, -1, 1, 14),
                                 v = random_floats(n_tokens * kv_dim, -1, 1, 15);
        DeviceCache dk(k_cache, n_slots, kv_dim), dv(v_cache, n_slots, kv_dim);
        DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_out(n_tokens * q_dim);
        DeviceBuffer<int32_t> d_pos(s.positions), d_off(s.table_offsets), d_table(s.block_table), d_write(write_slots);
        DeviceBuffer<KeyWindow> d_windows(s.windows);
        const int n_splits = 2;
        DeviceBuffer<float> partials(attention_partials_floats(p, n_tokens, n_splits));
        decode_attention(p, rope, d_q.get(), d_k.get(), d_v.get(), d_pos.get(), w.window > 0 ? d_windows.get() : nullptr,
                         d_write.get(), d_off.get(), d_table.get(), n_tokens, n_splits, dk.cache(), dv.cache(),
                         partials.get(), d_out.get(), Q8Rows{}, nullptr);
        const std::string what = std::string(kv_format_name(format)) + " heads " + std::to_string(shape.n_head) + "/" +
                                 std::to_string(shape.n_head_kv) + " dim " + std::to_string(hd) + " window " +
                                 std::to_string(w.window) + " sinks " + std::to_string(w.n_sink);
        const HostCache stored_k = dk.download(), stored_v = dv.download();
        // The new rows against the CPU's rotation and rounding, within what separates the two: a step of the block
        // where they round apart (quantized), an f16 or bf16 step (rotations an ulp apart).
        std::vector<float> q_rot = q;
        HostCache expected_k(format, n_slots, kv_dim), expected_v(format, n_slots, kv_dim);
        for (int t = 0; t < n_tokens; ++t) {
          const cpu::RopeAngles angles = cpu::rope_angles(rc, s.positions[t]);
          cpu::apply_rope(q_rot.data() + t * q_dim, shape.n_head, hd, angles);
          std::vector<float> k_rot(k.begin() + t * kv_dim, k.begin() + (t + 1) * kv_dim);
          cpu::apply_rope(k_rot.data(), shape.n_head_kv, hd, angles);
          expected_k.set_row(write_slots[t], k_rot.data());
          expected_v.set_row(write_slots[t], v.data() + t * kv_dim);
          const std::vector<float> want_k = expected_k.row(write_slots[t]), got_k = stored_k.row(write_slots[t]);
          const float relative = format == KvFormat::BF16 ? 8e-3f : format == KvFormat::F16 ? 1e-3f : 1e-5f;
          for (int i = 0; i < kv_dim; ++i) {
            const float tol = expected_k.step(write_slots[t], i) * 1.01f + 2e-6f + relative * std::fabs(want_k[i]);
            ASSERT_NEAR(got_k[i], want_k[i], tol) << what << ": key of token " << t << ", value " << i;
          }
          EXPECT_EQ(stored_v.row(write_slots[t]), expected_v.row(write_slots[t])) << what << ": value of token " << t;
        }
        const QueryRounding rounding =
            format == KvFormat::F16 ? QueryRounding::F16 : quantized(format) ? QueryRounding::Q8 : QueryRounding::None;
        const std::vector<float> want =
            attention_reference(s, q_rot, stored_k, stored_v, shape.n_head, shape.n_head_kv, hd, rounding);
        // The CPU rounds f16 softmax weights (ggml's f16 path); the GPU keeps them in f32.
        expect_close(d_out.download(), want, format == KvFormat::F16 ? 2e-3 : 1e-4, 0, what);
      }
    }
  }
}

// The flash prompt kernel with quantized keys and values (decoded to f16 tile by tile) and with windows, against
// cpu::attend with the f16 rounding of query and weights (and the query's 8-bit rounding for quantized keys):
// two sequences, one fresh and one continuing past 180
// cached keys, blocks behind the windows -1 in the table. Head dims 64 and 8 (q8_0 blocks spanning heads).
TEST(CudaKvCache, PromptAttentionReadsQuantizedCachesWithinWindows) {
  TESSERA_REQUIRE_GPU();
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  for (const Shape shape : {Shape{16, 2, 64}, Shape{8, 4, 8}}) {
    for (const KvFormats formats : {KvFormats(KvFormat::Q8_0), KvFormats(KvFormat::Q4_0),
                                    KvFormats{KvFormat::Q8_0, KvFormat::F16}, KvFormats{KvFormat::F16, KvFormat::Q4_0},
                                    KvFormats(KvFormat::F16)}) {
      for (const Window w : {Window{0, 0}, Window{50, 3}, Window{20, 0}}) {
        const int hd = shape.head_dim, kv_dim = shape.n_head_kv * hd, q_dim = shape.n_head * hd;
        const AttentionParams p = params(shape.n_head, shape.n_head_kv, hd, formats);
        ASSERT_TRUE(prompt_attention_supported(p));
        const int n_cache_blocks = 30, n_slots = n_cache_blocks * kBlock;
        const Step s = make_step({{0, 37}, {180, 140}}, w.window, w.n_sink, n_cache_blocks, 5);
        const int n_tokens = static_cast<int>(s.positions.size());
        const PromptSequence sequences[2] = {{0, 37, s.table_offsets[0], 37}, {37, 140, s.table_offsets[37], 320}};
        const HostCache k = random_cache(formats.k, n_slots, kv_dim, 20), v = random_cache(formats.v, n_slots, kv_dim, 21);
        const std::vector<float> q = random_floats(n_tokens * q_dim, -4, 4, 22);
        DeviceCache dk(k, n_slots, kv_dim), dv(v, n_slots, kv_dim);
        DeviceBuffer<float> d_q(q), d_out(n_tokens * q_dim);
        DeviceBuffer<int32_t> d_pos(s.positions), d_table(s.block_table);
        DeviceBuffer<KeyWindow> d_windows(s.windows);
        prompt_attention(p, d_q.get(), dk.cache(), dv.cache(), d_pos.get(), w.window > 0 ? d_windows.get() : nullptr,
                         d_table.get(), sequences, 2, d_out.get(), nullptr, nullptr);
        const QueryRounding rounding = quantized(formats.k) ? QueryRounding::Q8ThenF16 : QueryRounding::F16;
        const std::vector<float> want = attention_reference(s, q, k, v, shape.n_head, shape.n_head_kv, hd, rounding);
        // Both round the weights to f16 (the CPU after normalizing them, the GPU before); the GPU also rounds the
        // decoded quantized values to f16.
        expect_close(d_out.download(), want, 3e-3, 0,
                     kv_formats_name(formats) + " dim " + std::to_string(hd) + " window " + std::to_string(w.window) +
                         " sinks " + std::to_string(w.n_sink));
      }
    }
  }
}

// ---- context shift -------------------------------------------------------------------------------------------

// Slot copies move both planes exactly; the rotated keys are the host's rotation of the stored values by `delta`
// positions, within a step of the block where the two round apart; other slots are untouched.
TEST(CudaKvCache, ShiftCopiesSlotsAndRotatesKeys) {
  TESSERA_REQUIRE_GPU();
  const int n_head = 8, n_head_kv = 4, n_slots = 64;
  for (const int hd : {64, 8}) {
    const int kv_dim = n_head_kv * hd;
    model::RopeConfig rc;
    rc.n_dims = hd;
    rc.freq_base = 10000;
    const RopeParams rope = rope_params(n_head, n_head_kv, hd, rc);
    for (const KvFormat format : kAllFormats) {
      const HostCache before = random_cache(format, n_slots, kv_dim, 30);
      DeviceCache cache(before, n_slots, kv_dim);
      const std::vector<int2> copies = {{40, 3}, {41, 4}, {47, 10}};
      const std::vector<int32_t> rotated = {3, 4, 10, 20, 21, 63};
      const int delta = -48;
      DeviceBuffer<int2> d_copies(copies);
      DeviceBuffer<int32_t> d_rotated(rotated);
      copy_kv_slots(cache.cache(), format, kv_dim, d_copies.get(), static_cast<int>(copies.size()), nullptr);
      const HostCache copied = cache.download();
      const std::string what = std::string(kv_format_name(format)) + " head dim " + std::to_string(hd);
      HostCache want_copied = before;
      for (const int2 c : copies) {
        const size_t row = kv_data_bytes(format, kv_dim);
        std::copy_n(before.data().begin() + c.x * row, row, want_copied.data().begin() + c.y * row);
        if (quantized(format)) {
          std::copy_n(before.scales().begin() + c.x * (kv_dim / 32), kv_dim / 32,
                      want_copied.scales().begin() + c.y * (kv_dim / 32));
        }
      }
      EXPECT_EQ(copied.data(), want_copied.data()) << what;
      EXPECT_EQ(copied.scales(), want_copied.scales()) << what;

      rotate_cached_keys(rope, cache.cache(), format, delta, d_rotated.get(), static_cast<int>(rotated.size()), nullptr);
      const HostCache after = cache.download();
      const cpu::RopeAngles angles = cpu::rope_angles(rc, delta);
      for (int slot = 0; slot < n_slots; ++slot) {
        const std::vector<float> got = after.row(slot);
        std::vector<float> want = copied.row(slot);
        if (std::find(rotated.begin(), rotated.end(), slot) == rotated.end()) {
          ASSERT_EQ(got, want) << what << ": slot " << slot << " changed";
          continue;
        }
        cpu::apply_rope(want.data(), n_head_kv, hd, angles);
        HostCache rounded(format, n_slots, kv_dim);
        rounded.set_row(slot, want.data());
        const std::vector<float> want_stored = rounded.row(slot);
        for (int i = 0; i < kv_dim; ++i) {
          const float tol = rounded.step(slot, i) * 1.01f + 2e-6f + std::fabs(want[i]) * (format == KvFormat::BF16 ? 8e-3f : format == KvFormat::F16 ? 1e-3f : 1e-6f);
          ASSERT_NEAR(got[i], want_stored[i], tol) << what << ": slot " << slot << " value " << i;
        }
      }
    }
  }
}

// ---- the engine ----------------------------------------------------------------------------------------------

// The GPU's own arithmetic on the f64 reference models (common/kv_cache_checks.h): f32 products, and the f16 tensor
// cores of the prompt attention for the f16 and quantized caches.
constexpr double kCudaTolerance = 5e-4;
constexpr double kCudaF16Tolerance = 5e-3;

TEST(CudaKvCache, SlidingWindowFromTheModel) {
  TESSERA_REQUIRE_GPU();
  for (const KvFormat format : {KvFormat::F32, KvFormat::F16, KvFormat::Q8_0, KvFormat::Q4_0}) {
    tessera::test::check_sliding_window_from_the_model("cuda", format, format == KvFormat::F32 ? kCudaTolerance : kCudaF16Tolerance);
  }
}

TEST(CudaKvCache, KvWindowWithSinks) {
  TESSERA_REQUIRE_GPU();
  tessera::test::check_kv_window_with_sinks("cuda", KvFormat::F32, kCudaTolerance);
  tessera::test::check_kv_window_with_sinks("cuda", KvFormat::Q8_0, kCudaF16Tolerance);
}

TEST(CudaKvCache, CacheFormatsMatchASimulationOfTheirRounding) {
  TESSERA_REQUIRE_GPU();
  tessera::test::check_cache_formats_against_simulation("cuda", kCudaF16Tolerance);
}

TEST(CudaKvCache, KeysAndValuesInDifferentFormats) {
  TESSERA_REQUIRE_GPU();
  tessera::test::check_keys_and_values_in_different_formats("cuda", kCudaF16Tolerance);
}

TEST(CudaKvCache, ContextShiftEqualsAFreshEvaluation) {
  TESSERA_REQUIRE_GPU();
  tessera::test::check_context_shift("cuda", 1e-4);
}

std::vector<int32_t> fixture_prompt(const std::string& name) {
  std::ifstream in(tessera::test::fixture("models/" + name + ".golden.json"));
  return nlohmann::json::parse(in)["prompt_tokens"].get<std::vector<int32_t>>();
}

// Every cache format on the GPU gives the CPU's logits on a fixture, prompt in one step then token by token (the
// two backends quantize keys and values the same way), and so does the hybrid split; a context shift on both
// continues alike.
TEST(CudaKvCache, FormatsAndShiftMatchTheCpuOnAFixture) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("models/tiny-llama-Q8_0.gguf").string());
  const std::vector<int32_t> prompt = fixture_prompt("tiny-llama-Q8_0");
  for (const KvFormats formats : {KvFormats(KvFormat::Q8_0), KvFormats(KvFormat::Q4_0), KvFormats(KvFormat::BF16),
                                  KvFormats{KvFormat::Q8_0, KvFormat::F16}}) {
    std::vector<std::vector<float>> runs;
    for (const char* backend : {"cpu", "cuda", "hybrid"}) {
      engine::EngineOptions o;
      o.backend = backend;
      o.n_threads = 2;
      o.n_ctx = 64;
      o.kv_format = formats;
      o.gpu_layers = 1;
      engine::Engine eng(file, o);
      const int32_t seq = eng.new_sequence();
      std::vector<float> logits;
      const std::span<const float> l = eng.eval(seq, std::span(prompt).first(40), true);
      logits.assign(l.begin(), l.end());
      for (size_t p = 40; p < prompt.size(); ++p) {
        const std::span<const float> step = eng.eval(seq, std::span(&prompt[p], 1));
        logits.insert(logits.end(), step.begin(), step.end());
      }
      for (int i = 0; i < 16; ++i) eng.eval(seq, std::span(&prompt[i], 1));  // to 64 tokens: full
      eng.shift_context(seq, 3);
      const std::span<const float> after = eng.eval(seq, std::span(&prompt[20], 1));
      logits.insert(logits.end(), after.begin(), after.end());
      runs.push_back(std::move(logits));
    }
    expect_close(runs[1], runs[0], 0.05, 0, "cuda vs cpu, " + kv_formats_name(formats));
    expect_close(runs[2], runs[0], 0.05, 0, "hybrid vs cpu, " + kv_formats_name(formats));
  }
}

// stories260K (head dim 8: q8_0 blocks span four heads) with quantized caches keeps its golden greedy text as far
// as on the CPU (KvQuality.Stories260KGreedyTextWithQuantizedCaches): q8_0 keys and values to the near-tie at step
// 110 (the rounding itself moves its logits enough there: docs/notes/2026-12-05-kv-cache-quantization.md), q8_0
// values with f16 keys, and f16, past the near-tie at step 181.
TEST(CudaKvCache, Stories260KGreedyTextWithQuantizedCaches) {
  TESSERA_REQUIRE_GPU();
  const gguf::File file = gguf::File::open(tessera::test::fixture("trained/stories260K.gguf").string());
  std::ifstream in(tessera::test::fixture("trained/stories260K.golden.json"));
  const nlohmann::json golden = nlohmann::json::parse(in);
  const std::vector<int32_t> prompt = golden["prompt_tokens"].get<std::vector<int32_t>>();
  const std::vector<int32_t> want = golden["greedy_tokens"].get<std::vector<int32_t>>();
  auto leading_agreement = [&](KvFormats formats) {
    engine::EngineOptions o;
    o.backend = "cuda";
    o.n_ctx = 256;
    o.kv_format = formats;
    engine::Engine eng(file, o);
    const int32_t seq = eng.new_sequence();
    std::span<const float> logits = eng.eval(seq, prompt);
    size_t agree = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (next != want[i]) break;
      ++agree;
      logits = eng.eval(seq, std::span(&next, 1));
    }
    return agree;
  };
  EXPECT_GE(leading_agreement(KvFormat::F16), 181u);
  EXPECT_GE(leading_agreement(KvFormats{KvFormat::F16, KvFormat::Q8_0}), 181u);
  EXPECT_GE(leading_agreement(KvFormat::Q8_0), 110u);
}

}  // namespace
}  // namespace tessera::cuda
