// Prompt attention over an f16 KV cache: flash attention on the tensor cores (mma.sync m16n8k16, f16 operands,
// f32 accumulators). Nothing of size keys x queries is written to memory: a block takes 64 rows of (query token,
// query head) pairs that share one KV head, walks the sequence's keys in tiles that cp.async gathers from the
// paged cache (through the slot table) into shared memory, the next tile in flight while the current one is used,
// and keeps each row's running maximum, sum and weighted values in registers (online softmax).
//
// The scores' C fragments of two adjacent 8-key tiles are, rounded to f16, the A fragment of the weights for
// the P.V product: the softmax never leaves the registers.
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/kv_cache.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/mma.cuh"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kWarpRows = 16;                 // an mma's M
constexpr int kBlockRows = kWarps * kWarpRows;  // (query token, query head) rows per block
constexpr int kMaxHeadDim = 128;              // the output accumulators take head_dim / 2 registers per thread

// D: head_dim rounded up to a multiple of 16 (an mma's K); the dimensions past head_dim are zeros.
template <int D>
struct FlashShape {
  static constexpr int kKeys = D <= 64 ? 64 : 32;  // keys per tile: the scores take kKeys / 2 registers
  static constexpr int kStride = D + 8;            // halves per shared row: 16 spare bytes put the 8 rows of an
                                                   // ldmatrix in different banks
  static constexpr int kChunks = D / 8;            // 16-byte pieces per row
};

struct FlashArgs {
  AttentionParams p;
  const float* q;            // [n_tokens][n_head][head_dim], rotated
  const __half* k_cache;     // [n_slots][n_head_kv][head_dim]
  const __half* v_cache;
  const int32_t* positions;  // [n_tokens]
  const int32_t* blocks;     // the sequence's KV blocks (kv_cache.cuh)
  int row_begin;             // its tokens are row_begin .. row_begin + n_rows - 1 of the step
  int n_rows;
  int n_keys;
  float scale_log2;  // log2(e) / sqrt(head_dim): the softmax runs in base 2
  float* out;        // [n_tokens][n_head][head_dim]
  __half* out16;     // its f16 copy, or null
};

// Grid: (blocks of kBlockRows rows of the sequence, KV heads). Row m of KV head kv is query token row_begin + m / group
// with query head kv * group + m % group, so the block's K/V tiles serve all query heads of the KV head (GQA).
// Token t sees keys 0..positions[t]. The blocks of the latest tokens, which have the most keys, start first.
template <int D>
__global__ void __launch_bounds__(kWarps * 32) flash_prompt_attention_kernel(const FlashArgs a) {
  using Shape = FlashShape<D>;
  constexpr int kKeys = Shape::kKeys, kStride = Shape::kStride, kChunks = Shape::kChunks;
  __shared__ __align__(16) __half k_tile[2][kKeys][kStride];  // [buffer][key][dim]
  __shared__ __align__(16) __half v_tile[2][kKeys][kStride];
  __shared__ int warp_key_counts[kWarps];
  allow_next_kernel();
  wait_for_previous_kernel();

  const AttentionParams& p = a.p;
  const int hd = p.head_dim, group = p.n_head / p.n_head_kv, kv_head = blockIdx.y;
  const int64_t q_dim = static_cast<int64_t>(p.n_head) * hd, kv_dim = static_cast<int64_t>(p.n_head_kv) * hd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int first_row = (gridDim.x - 1 - blockIdx.x) * kBlockRows + warp * kWarpRows;

  // This lane's two rows, first_row + g and first_row + g + 8: their token, query head and key count (0 past the
  // sequence's rows).
  int token[2], head[2], n_visible[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int m = first_row + g + 8 * r, i = m / group;
    token[r] = i < a.n_rows ? a.row_begin + i : -1;
    head[r] = kv_head * group + m % group;
    n_visible[r] = token[r] >= 0 ? min(a.positions[token[r]] + 1, a.n_keys) : 0;
  }
  const int warp_keys = __reduce_max_sync(0xFFFFFFFFu, max(n_visible[0], n_visible[1]));
  if (lane == 0) warp_key_counts[warp] = warp_keys;

  // The queries as A fragments, rounded to f16 (as ggml does before its f16 dot products).
  uint32_t q_frag[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int upper = 0; upper < 2; ++upper) {
      const int dim = kk * 16 + upper * 8 + 2 * t;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float2 v = make_float2(0.0f, 0.0f);
        if (token[r] >= 0 && dim < hd) v = *reinterpret_cast<const float2*>(a.q + token[r] * q_dim + head[r] * hd + dim);
        q_frag[kk][r + 2 * upper] = pack_f16(v.x, v.y);
      }
    }
  }
  __syncthreads();
  int block_keys = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) block_keys = max(block_keys, warp_key_counts[w]);

  // Keys key0.. of the KV head into buffer b (zeros past the block's keys and past head_dim).
  auto load_tile = [&](int key0, int b) {
    for (int c = threadIdx.x; c < kKeys * kChunks; c += kWarps * 32) {
      const int j = c / kChunks, dim = c % kChunks * 8, key = key0 + j;
      const bool valid = key < block_keys && dim < hd;
      const int64_t at = valid ? kv_slot(a.blocks, key, a.p.kv_block_shift) * kv_dim + kv_head * hd + dim : 0;
      copy_16_async_or_zeros(&k_tile[b][j][dim], a.k_cache + at, valid);
      copy_16_async_or_zeros(&v_tile[b][j][dim], a.v_cache + at, valid);
    }
    commit_async_copies();
  };

  float o[D / 8][4] = {};                        // weighted values, unnormalized: [dim tile][C fragment]
  float row_max[2] = {-INFINITY, -INFINITY};    // of the scaled scores so far (base 2)
  float row_sum[2] = {0.0f, 0.0f};              // this lane's share of the sum of weights
  const int n_tiles = (block_keys + kKeys - 1) / kKeys;
  if (n_tiles > 0) load_tile(0, 0);
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int key0 = tile * kKeys, b = tile & 1;
    if (tile + 1 < n_tiles) {
      load_tile(key0 + kKeys, b ^ 1);
      wait_async_copies<1>();
    } else {
      wait_async_copies<0>();
    }
    __syncthreads();
    if (key0 < warp_keys) {
      // s [key tile of 8][C fragment] = Q K^T for this tile's keys.
      float s[kKeys / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int n = 0; n < kKeys / 8; n += 2) {
          uint32_t k_frag[4];  // B fragments of key tiles n and n + 1
          load_matrices(k_frag, &k_tile[b][n * 8 + lane % 8 + lane / 16 * 8][kk * 16 + lane / 8 % 2 * 8]);
          mma_m16n8k16(s[n], q_frag[kk], k_frag[0], k_frag[1]);
          mma_m16n8k16(s[n + 1], q_frag[kk], k_frag[2], k_frag[3]);
        }
      }
      // Online softmax: mask, new maxima, rescale what came before, weights exp2(s - max).
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, key = key0 + n * 8 + 2 * t + e % 2;
          s[n][e] = key < n_visible[r] ? s[n][e] * a.scale_log2 : -INFINITY;
          tile_max[r] = fmaxf(tile_max[r], s[n][e]);
        }
      }
      float base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float new_max = fmaxf(row_max[r], max_of_row(tile_max[r]));
        base[r] = new_max == -INFINITY ? 0.0f : new_max;  // a row with nothing visible yet keeps weights of 0
        const float rescale = exp2f(row_max[r] - base[r]);
        row_max[r] = new_max;
        row_sum[r] *= rescale;
#pragma unroll
        for (int d = 0; d < D / 8; ++d) o[d][2 * r] *= rescale, o[d][2 * r + 1] *= rescale;
      }
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] = exp2f(s[n][e] - base[e / 2]);
          row_sum[e / 2] += s[n][e];
        }
      }
      // o += P V, 16 keys at a time.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t p_frag[4] = {pack_f16(s[2 * kk][0], s[2 * kk][1]), pack_f16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int d = 0; d < D / 8; d += 2) {
          uint32_t v_frag[4];  // B fragments of dim tiles d and d + 1
          load_matrices_transposed(v_frag, &v_tile[b][kk * 16 + lane % 16][d * 8 + lane / 16 * 8]);
          mma_m16n8k16(o[d], p_frag, v_frag[0], v_frag[1]);
          mma_m16n8k16(o[d + 1], p_frag, v_frag[2], v_frag[3]);
        }
      }
    }
    __syncthreads();  // the next iteration refills the buffer read here
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (token[r] < 0) continue;
    const float sum = sum_of_row(row_sum[r]), inv_sum = sum > 0 ? 1.0f / sum : 0.0f;
    const int64_t at = token[r] * q_dim + head[r] * hd;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      const int dim = d * 8 + 2 * t;
      if (dim >= hd) continue;
      const float2 v = make_float2(o[d][2 * r] * inv_sum, o[d][2 * r + 1] * inv_sum);
      *reinterpret_cast<float2*>(a.out + at + dim) = v;
      if (a.out16) *reinterpret_cast<__half2*>(a.out16 + at + dim) = __floats2half2_rn(v.x, v.y);
    }
  }
}

int padded_head_dim(int head_dim) { return (head_dim + 15) / 16 * 16; }

template <int D>
void launch_flash(const FlashArgs& a, cudaStream_t stream) {
  const int blocks = (a.n_rows * (a.p.n_head / a.p.n_head_kv) + kBlockRows - 1) / kBlockRows;
  launch_chained("flash_prompt_attention_kernel", flash_prompt_attention_kernel<D>,
                 dim3(blocks, a.p.n_head_kv), dim3(kWarps * 32), 0, stream, a);
}

}  // namespace

bool prompt_attention_supported(const AttentionParams& p) {
  // Rows of whole 16-byte pieces for cp.async, and at most kMaxHeadDim (registers).
  return p.kv_format == KvFormat::F16 && p.head_dim % 8 == 0 && p.head_dim <= kMaxHeadDim && p.n_head % p.n_head_kv == 0;
}

void prompt_attention(const AttentionParams& p, const float* q, const void* k_cache, const void* v_cache,
                      const int32_t* positions, const int32_t* block_table, const PromptSequence* sequences,
                      int n_sequences, float* out, __half* out16, cudaStream_t stream) {
  if (!prompt_attention_supported(p)) {
    throw std::runtime_error("prompt_attention needs an f16 KV cache and a head dimension that is a multiple of 8 "
                             "up to " + std::to_string(kMaxHeadDim) + ", not " + std::to_string(p.head_dim));
  }
  FlashArgs a{};
  a.p = p;
  a.q = q;
  a.k_cache = static_cast<const __half*>(k_cache);
  a.v_cache = static_cast<const __half*>(v_cache);
  a.positions = positions;
  a.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(p.head_dim)));
  a.out = out;
  a.out16 = out16;
  for (int s = 0; s < n_sequences; ++s) {
    const PromptSequence& seq = sequences[s];
    if (seq.n_rows == 0) continue;
    a.row_begin = seq.row_begin;
    a.blocks = block_table + seq.table_offset;
    a.n_rows = seq.n_rows;
    a.n_keys = seq.n_keys;
    switch (padded_head_dim(p.head_dim)) {
      case 16: launch_flash<16>(a, stream); break;
      case 32: launch_flash<32>(a, stream); break;
      case 48:
      case 64: launch_flash<64>(a, stream); break;
      case 80: launch_flash<80>(a, stream); break;
      case 96: launch_flash<96>(a, stream); break;
      default: launch_flash<128>(a, stream); break;
    }
  }
}

}  // namespace tessera::cuda
