// paged_attention against a double-precision reference of softmax(q.k / sqrt(head_dim)) V over each token's visible
// keys, with the cache values as stored (f16 or f32) and, with an f16 cache, the queries rounded to f16 (the kernel's
// documented rounding; everything after it is f32). Caches of random values whose blocks are handed out to the
// sequences in shuffled order; sequences of 1, 15, 16, 17, 100, 1000 and 4097 keys, windows that mask the first keys,
// three tokens of one sequence, and batches of 1, 7, 64 and 256 sequences of random lengths; f16 and f32 caches,
// block sizes 16 and 64, GQA groups of 8 (TinyLlama), 1 (Llama-2-7B), 3 (one block per head) and 4 at head_dim 256;
// no split, the planned split count and forced ones (3, 16: splits without keys).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda/paged_attention.h"
#include "cuda/batch_test_util.h"
#include "cuda/cuda_test_util.h"
#include "quant/quant.h"

namespace tessera::cuda {
namespace {

using test::DeviceBuffer;

// One query token: the sequence whose table it reads, its visible keys and its window.
struct Query {
  int sequence;
  int n_keys;
  int first_key;
};

// A step's tokens over a paged cache: sequences of the given lengths get blocks from a shuffled pool (a few blocks
// of the pool belong to nobody), tables concatenated.
struct Step {
  int block_size = 16;
  std::vector<int32_t> tables, table_offsets, n_keys, first_key;
  int n_slots = 0;
  int max_keys = 0;

  Step(const std::vector<int>& lengths, const std::vector<Query>& queries, int block_size_, uint32_t seed)
      : block_size(block_size_) {
    std::vector<int> offsets;
    int n_blocks = 3;
    for (const int length : lengths) n_blocks += (length + block_size - 1) / block_size;
    std::vector<int32_t> pool(n_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
    int next = 0;
    for (const int length : lengths) {
      offsets.push_back(static_cast<int>(tables.size()));
      for (int b = 0; b < (length + block_size - 1) / block_size; ++b) tables.push_back(pool[next++]);
    }
    n_slots = n_blocks * block_size;
    for (const Query& q : queries) {
      table_offsets.push_back(offsets[q.sequence]);
      n_keys.push_back(q.n_keys);
      first_key.push_back(q.first_key);
      max_keys = std::max(max_keys, q.n_keys);
    }
  }
  int n_tokens() const { return static_cast<int>(n_keys.size()); }
};

// out [n_tokens][n_head * head_dim] in double, from the stored cache values (k, v: [n_slots][kv_dim]).
std::vector<float> reference(const AttentionParams& p, const Step& step, const std::vector<float>& q,
                             const std::vector<float>& k, const std::vector<float>& v) {
  const int hd = p.head_dim, group = p.n_head / p.n_head_kv;
  const int64_t q_dim = static_cast<int64_t>(p.n_head) * hd, kv_dim = static_cast<int64_t>(p.n_head_kv) * hd;
  std::vector<float> out(step.n_tokens() * q_dim, 0.0f);
  for (int t = 0; t < step.n_tokens(); ++t) {
    const int first = std::max(step.first_key[t], 0), n_keys = step.n_keys[t];
    const int32_t* table = step.tables.data() + step.table_offsets[t];
    for (int h = 0; h < p.n_head; ++h) {
      std::vector<double> query(hd);
      for (int d = 0; d < hd; ++d) {
        const float x = q[t * q_dim + h * hd + d];
        query[d] = (p.k_format == KvFormat::F16) ? test::round_to_f16(x) : x;
      }
      std::vector<double> scores;
      std::vector<int64_t> rows;
      double big = -INFINITY;
      for (int j = first; j < n_keys; ++j) {
        const int64_t slot = static_cast<int64_t>(table[j / step.block_size]) * step.block_size + j % step.block_size;
        const int64_t row = slot * kv_dim + static_cast<int64_t>(h / group) * hd;
        double s = 0;
        for (int d = 0; d < hd; ++d) s += query[d] * k[row + d];
        scores.push_back(s / std::sqrt(static_cast<double>(hd)));
        rows.push_back(row);
        big = std::max(big, scores.back());
      }
      if (scores.empty()) continue;
      double sum = 0;
      for (double& s : scores) sum += (s = std::exp(s - big));
      for (int d = 0; d < hd; ++d) {
        double o = 0;
        for (size_t j = 0; j < scores.size(); ++j) o += scores[j] * v[rows[j] + d];
        out[t * q_dim + h * hd + d] = static_cast<float>(o / sum);
      }
    }
  }
  return out;
}

// Random cache contents as the device stores them (bytes) and as their values.
struct Cache {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};
Cache random_cache(size_t n, bool f16, uint32_t seed) {
  Cache c{std::vector<uint8_t>(n * (f16 ? 2 : 4)), test::uniform_floats(n, -1, 1, seed)};
  for (size_t i = 0; i < n; ++i) {
    if (f16) {
      const uint16_t h = quant::fp32_to_fp16(c.values[i]);
      std::memcpy(c.bytes.data() + 2 * i, &h, 2);
      c.values[i] = quant::fp16_to_fp32(h);
    } else {
      std::memcpy(c.bytes.data() + 4 * i, &c.values[i], 4);
    }
  }
  return c;
}

void check_step(const AttentionParams& p, const Step& step, const std::vector<int>& split_counts, uint32_t seed,
                const std::string& name) {
  const int64_t q_dim = static_cast<int64_t>(p.n_head) * p.head_dim;
  const size_t kv_values = static_cast<size_t>(step.n_slots) * p.n_head_kv * p.head_dim;
  const Cache k = random_cache(kv_values, (p.k_format == KvFormat::F16), seed), v = random_cache(kv_values, (p.k_format == KvFormat::F16), seed + 1);
  const std::vector<float> q = test::uniform_floats(step.n_tokens() * q_dim, -1, 1, seed + 2);
  const std::vector<float> want = reference(p, step, q, k.values, v.values);

  DeviceBuffer<uint8_t> d_k(k.bytes), d_v(v.bytes);
  DeviceBuffer<float> d_q(q);
  DeviceBuffer<int32_t> d_tables(step.tables), d_offsets(step.table_offsets), d_n_keys(step.n_keys),
      d_first(step.first_key);
  const PagedKeys keys{d_tables.get(), d_offsets.get(), d_n_keys.get(), d_first.get(), step.block_size};
  for (int n_splits : split_counts) {
    if (n_splits == 0) n_splits = paged_attention_splits(p, step.n_tokens(), step.max_keys);
    const std::string what = name + ", heads " + std::to_string(p.n_head) + "/" + std::to_string(p.n_head_kv) +
                             " dim " + std::to_string(p.head_dim) + ((p.k_format == KvFormat::F16) ? " f16" : " f32") + ", block size " +
                             std::to_string(step.block_size) + ", " + std::to_string(n_splits) + " splits";
    DeviceBuffer<float> d_out(want.size()), workspace(paged_attention_workspace_floats(p, step.n_tokens(), n_splits));
    DeviceBuffer<__half> d_out16(want.size());
    paged_attention(p, d_q.get(), d_k.get(), d_v.get(), keys, step.n_tokens(), n_splits, workspace.get(), d_out.get(),
                    d_out16.get(), nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << what;
    // f32 dot products, exp2f and sums over up to 4097 keys (a key read from a wrong slot costs more than 1e-4).
    const std::vector<float> got = d_out.download();
    test::expect_close(got, want, 5e-5, 0, what);
    const std::vector<__half> got16 = d_out16.download();
    size_t bad16 = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      bad16 += quant::fp32_to_fp16(got[i]) != __half_as_ushort(got16[i]);
    }
    EXPECT_EQ(bad16, 0u) << what << ": the f16 copy is not the output rounded";
  }
}

const AttentionParams kShapes[] = {
    {32, 4, 64, KvFormat::F16, KvFormat::F16}, {32, 4, 64, KvFormat::F32, KvFormat::F32},  // TinyLlama: a block for all 8 heads of a KV head
    {8, 8, 128, KvFormat::F16, KvFormat::F16}, {8, 8, 128, KvFormat::F32, KvFormat::F32},  // Llama-2-7B's group of 1 and head_dim
    {6, 2, 80, KvFormat::F16, KvFormat::F16},  {6, 2, 80, KvFormat::F32, KvFormat::F32},   // groups of 3: one head per block; 10 of 16 lanes per key hold a chunk
    {8, 2, 256, KvFormat::F16, KvFormat::F16},                      // a key per warp
};

class CudaPagedAttention : public ::testing::TestWithParam<AttentionParams> {};

TEST_P(CudaPagedAttention, SequencesOfManyLengthsMatchReference) {
  TESSERA_REQUIRE_GPU();
  const AttentionParams p = GetParam();
  ASSERT_TRUE(paged_attention_supported(p));
  paged_attention_prepare(p);
  const std::vector<int> lengths = {1, 15, 16, 17, 100, 1000, 4097};
  std::vector<Query> queries;
  for (int s = 0; s < static_cast<int>(lengths.size()); ++s) queries.push_back({s, lengths[s], 0});
  // Windows: the last key only, half the keys, all but one tile's worth.
  queries.push_back({3, 17, 16});
  queries.push_back({5, 1000, 500});
  queries.push_back({6, 4097, 4000});
  // Three tokens of one sequence, at positions 97, 98, 99.
  for (const int n : {98, 99, 100}) queries.push_back({4, n, 0});
  uint32_t seed = 1 + 7 * static_cast<uint32_t>(p.head_dim + p.n_head_kv);
  for (const int block_size : {16, 64}) {
    const Step step(lengths, queries, block_size, seed += 7);
    check_step(p, step, {1, 0, 3, 16}, seed += 7, "lengths 1..4097");
  }
}

TEST_P(CudaPagedAttention, BatchesOfSequencesMatchReference) {
  TESSERA_REQUIRE_GPU();
  const AttentionParams p = GetParam();
  uint32_t seed = 1000 + 11 * static_cast<uint32_t>(p.head_dim + p.n_head_kv);
  for (const int n_tokens : {1, 7, 64, 256}) {
    std::mt19937 rng(seed += 11);
    std::vector<int> lengths;
    std::vector<Query> queries;
    for (int t = 0; t < n_tokens; ++t) {
      const int n = 1 + static_cast<int>(rng() % (n_tokens == 1 ? 3000 : 300));
      lengths.push_back(n);
      queries.push_back({t, n, t % 5 == 4 ? static_cast<int>(rng() % n) : 0});
    }
    const Step step(lengths, queries, 16, seed);
    check_step(p, step, {0}, seed + 1, std::to_string(n_tokens) + " sequences");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaPagedAttention, ::testing::ValuesIn(kShapes),
                         [](const ::testing::TestParamInfo<AttentionParams>& info) {
                           const AttentionParams& p = info.param;
                           return "heads" + std::to_string(p.n_head) + "_kv" + std::to_string(p.n_head_kv) + "_dim" +
                                  std::to_string(p.head_dim) + ((p.k_format == KvFormat::F16) ? "_f16" : "_f32");
                         });

// Refused before anything is launched: no GPU needed.
TEST(CudaPagedAttentionChecks, RefusesWhatItCannotTake) {
  const PagedKeys keys{nullptr, nullptr, nullptr, nullptr, 16};
  auto expect_refused = [](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "not refused: " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const AttentionParams ok{32, 4, 64, KvFormat::F16, KvFormat::F16};
  expect_refused(
      [&] {
        paged_attention({8, 8, 36, KvFormat::F16, KvFormat::F16}, nullptr, nullptr, nullptr, keys, 4, 1, nullptr, nullptr, nullptr, nullptr);
      },
      "are not supported");
  PagedKeys odd = keys;
  odd.block_size = 24;
  expect_refused([&] { paged_attention(ok, nullptr, nullptr, nullptr, odd, 4, 1, nullptr, nullptr, nullptr, nullptr); },
                 "not a power of two");
  expect_refused(
      [&] { paged_attention(ok, nullptr, nullptr, nullptr, keys, 4, 2, nullptr, nullptr, nullptr, nullptr); },
      "splits need a workspace");
}

}  // namespace
}  // namespace tessera::cuda
