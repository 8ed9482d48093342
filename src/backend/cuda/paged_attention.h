// Decode attention for many sequences in one launch, over a paged KV cache addressed by block tables: for each query
// token (one per sequence in decode, or several tokens of one sequence) and query head h, out = softmax(q.k /
// sqrt(head_dim)) V over the token's visible keys, whose rows are [n_slots][n_head_kv * head_dim] f16 or f32 per layer
// (kernels.h's cache layout). One block per (token, KV head) serves all query heads of the KV head (GQA: one load of
// each K/V row for the group); long sequences at small batches split their keys over several blocks (flash decoding)
// whose partial results a second kernel combines. All pointers are device pointers; the functions only enqueue work
// on `stream`.
#pragma once

#include "backend/cuda/kernels.h"

namespace tessera::cuda {

// Where a token's keys are. Key j (first_key <= j < n_keys) of token i's sequence is in cache slot
// block_tables[table_offsets[i] + j / block_size] * block_size + j % block_size. Device arrays of n_tokens entries
// (block_tables: every sequence's table, concatenated).
struct PagedKeys {
  const int32_t* block_tables = nullptr;
  const int32_t* table_offsets = nullptr;
  const int32_t* n_keys = nullptr;     // keys visible to the token: its position + 1
  const int32_t* first_key = nullptr;  // keys below it are masked (sliding window); null: none are
  int block_size = 16;                 // slots per block, a power of two
};

// The cache slot of key `key` of a sequence whose block table is `table` (block_size = 1 << block_shift).
__host__ __device__ inline int64_t paged_key_slot(const int32_t* table, int block_shift, int key) {
  return (static_cast<int64_t>(table[key >> block_shift]) << block_shift) + (key & ((1 << block_shift) - 1));
}

// Split `split` of n_splits of the keys [first_key, n_keys): consecutive runs of ceil(count / n_splits) keys, the last
// ones possibly empty (begin == end).
struct KeyRange {
  int begin = 0;
  int end = 0;
};
__host__ __device__ inline KeyRange split_key_range(int first_key, int n_keys, int n_splits, int split) {
  const int first = first_key > 0 ? first_key : 0;
  const int count = n_keys > first ? n_keys - first : 0;
  const int per_split = (count + n_splits - 1) / n_splits;
  const int begin = split * per_split < count ? split * per_split : count;
  const int end = begin + per_split < count ? begin + per_split : count;
  return {first + begin, first + end};
}

// Query heads per group a whole multiple of n_head_kv, and a head's cache row (head_dim values) a multiple of 16
// bytes up to 512 (head_dim 8..256 with an f16 cache, 4..128 with f32).
bool paged_attention_supported(const AttentionParams& p);

// The split count for a step: 1 while the blocks without splitting fill the SMs twice over (two blocks per SM) or
// the longest sequence is short; else doubled while they do not and each split keeps at least 128 of max_keys keys
// (at most 32 splits). sm_count: the device's SMs (paged_attention_splits asks the current device).
int plan_paged_attention_splits(const AttentionParams& p, int n_tokens, int max_keys, int sm_count);
int paged_attention_splits(const AttentionParams& p, int n_tokens, int max_keys);
// f32 scratch for n_splits > 1: n_tokens * n_head * n_splits * (head_dim + 2) floats.
size_t paged_attention_workspace_floats(const AttentionParams& p, int n_tokens, int n_splits);

// Raises the kernel's shared-memory limit for p; once, before capturing a graph that launches it (paged_attention
// does it on first use otherwise).
void paged_attention_prepare(const AttentionParams& p);

// q [n_tokens][n_head * head_dim] f32 (rotated); out the same shape f32, and out16 (optional) its f16 copy. With an
// f16 cache the queries are rounded to f16 first, as ggml does before its f16 dot products; softmax and sums are f32.
// A token with no visible keys gets zeros. workspace: paged_attention_workspace_floats(p, n_tokens, n_splits) floats
// when n_splits > 1, else unused.
void paged_attention(const AttentionParams& p, const float* q, const void* k_cache, const void* v_cache,
                     const PagedKeys& keys, int n_tokens, int n_splits, float* workspace, float* out, __half* out16,
                     cudaStream_t stream);

}  // namespace tessera::cuda
