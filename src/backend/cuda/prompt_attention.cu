// Prompt attention over an f16 KV cache on the tensor cores: per sequence of the step, its keys and values are
// gathered from the paged cache into contiguous f16 matrices, the scores of all query heads of a KV head come
// from one cuBLAS GEMM (f16 in, f32 accumulate), a causal softmax per query row turns them into f16 weights, and
// a second GEMM multiplies the weights with the values. Queries are taken in chunks so that the score matrix fits
// its scratch buffer.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kSoftmaxThreads = 256;

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// k16/v16 [n_head_kv][keys_padded][head_dim] from the cache rows slots[j]; keys n_keys..keys_padded-1 are zero so
// that the padded GEMM columns contribute nothing.
__global__ void gather_kv_kernel(const __half* __restrict__ k_cache, const __half* __restrict__ v_cache,
                                 const int32_t* __restrict__ slots, int n_keys, int keys_padded, int n_head_kv,
                                 int head_dim, __half* __restrict__ k16, __half* __restrict__ v16) {
  const int j = blockIdx.x, kv_dim = n_head_kv * head_dim;
  const bool valid = j < n_keys;
  const int64_t row = valid ? static_cast<int64_t>(slots[j]) * kv_dim : 0;
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    const int kv_head = i / head_dim, d = i % head_dim;
    const int64_t at = (static_cast<int64_t>(kv_head) * keys_padded + j) * head_dim + d;
    k16[at] = valid ? k_cache[row + i] : __float2half_rn(0.0f);
    v16[at] = valid ? v_cache[row + i] : __float2half_rn(0.0f);
  }
}

// q16 [n_head][n_rows][head_dim] from the step's query rows rows[i], rounded to f16 as ggml does before its f16
// dot products. Head-major, so the query rows of one KV head's heads form one GEMM operand.
__global__ void gather_q_kernel(const float* __restrict__ q, const int32_t* __restrict__ rows, int n_rows, int n_head,
                                int head_dim, __half* __restrict__ q16) {
  const int i = blockIdx.x, q_dim = n_head * head_dim;
  const float* src = q + static_cast<int64_t>(rows[i]) * q_dim;
  for (int idx = threadIdx.x; idx < q_dim; idx += blockDim.x) {
    const int h = idx / head_dim, d = idx % head_dim;
    q16[(static_cast<int64_t>(h) * n_rows + i) * head_dim + d] = __float2half_rn(src[idx]);
  }
}

__device__ float block_reduce(float v, bool take_max, float* shared) {
  for (int o = 16; o > 0; o /= 2) {
    const float other = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    v = take_max ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = shared[0];
  for (int w = 1; w < kSoftmaxThreads / 32; ++w) v = take_max ? fmaxf(v, shared[w]) : v + shared[w];
  return v;
}

// One block per score row (head h, query i of the chunk): query token rows[i] sees keys 0..positions[rows[i]].
// Weights exp(s - max) / sum in f32, then rounded to f16 like the CPU reference; masked and padded keys get 0.
__global__ void __launch_bounds__(kSoftmaxThreads)
    causal_softmax_kernel(const float* __restrict__ scores, const int32_t* __restrict__ rows,
                          const int32_t* __restrict__ positions, int n_rows, int keys_padded,
                          __half* __restrict__ weights) {
  __shared__ float partial[kSoftmaxThreads / 32];
  const int64_t r = blockIdx.x;
  const int n_valid = positions[rows[r % n_rows]] + 1;
  const float* s = scores + r * keys_padded;
  __half* w = weights + r * keys_padded;
  float biggest = -INFINITY;
  for (int j = threadIdx.x; j < n_valid; j += kSoftmaxThreads) biggest = fmaxf(biggest, s[j]);
  biggest = block_reduce(biggest, true, partial);
  float sum = 0;
  for (int j = threadIdx.x; j < n_valid; j += kSoftmaxThreads) sum += expf(s[j] - biggest);
  sum = block_reduce(sum, false, partial);
  const float inv_sum = 1.0f / sum;
  for (int j = threadIdx.x; j < keys_padded; j += kSoftmaxThreads) {
    w[j] = __float2half_rn(j < n_valid ? expf(s[j] - biggest) * inv_sum : 0.0f);
  }
}

// out[rows[i]] (and out16, when given) from the GEMM result o [n_head][n_rows][head_dim].
__global__ void scatter_output_kernel(const float* __restrict__ o, const int32_t* __restrict__ rows, int n_rows,
                                      int n_head, int head_dim, float* __restrict__ out, __half* __restrict__ out16) {
  const int i = blockIdx.x, q_dim = n_head * head_dim;
  const int64_t dst = static_cast<int64_t>(rows[i]) * q_dim;
  for (int idx = threadIdx.x; idx < q_dim; idx += blockDim.x) {
    const int h = idx / head_dim, d = idx % head_dim;
    const float v = o[(static_cast<int64_t>(h) * n_rows + i) * head_dim + d];
    out[dst + idx] = v;
    if (out16) out16[dst + idx] = __float2half_rn(v);
  }
}

}  // namespace

int64_t prompt_attention_padded_keys(int64_t n_keys) { return round_up(n_keys, 8); }

void prompt_attention(cublasHandle_t handle, const AttentionParams& p, const float* q, const void* k_cache,
                      const void* v_cache, const int32_t* positions, const int32_t* rows, const int32_t* slot_table,
                      const PromptSequence* sequences, int n_sequences, const PromptAttentionScratch& scratch,
                      float* out, __half* out16, cudaStream_t stream) {
  if (!p.f16_cache) throw std::runtime_error("prompt_attention needs an f16 KV cache");
  TESSERA_CUBLAS_CHECK(cublasSetStream(handle, stream));
  const int hd = p.head_dim, group = p.n_head / p.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd)), zero = 0.0f, one = 1.0f;
  for (int s = 0; s < n_sequences; ++s) {
    const PromptSequence& seq = sequences[s];
    if (seq.n_rows == 0) continue;
    const int64_t keys = prompt_attention_padded_keys(seq.n_keys);
    if (keys > scratch.max_keys) {
      throw std::runtime_error("prompt_attention: " + std::to_string(seq.n_keys) + " keys are over the scratch's " +
                               std::to_string(scratch.max_keys));
    }
    const int64_t rows_fitting = scratch.score_capacity / (static_cast<int64_t>(p.n_head) * keys);
    const int chunk = static_cast<int>(std::min<int64_t>({seq.n_rows, scratch.max_rows, rows_fitting}));
    if (chunk < 1) throw std::runtime_error("prompt_attention: the score scratch cannot hold one query row");
    gather_kv_kernel<<<static_cast<unsigned>(keys), 256, 0, stream>>>(
        static_cast<const __half*>(k_cache), static_cast<const __half*>(v_cache), slot_table + seq.table_offset,
        seq.n_keys, static_cast<int>(keys), p.n_head_kv, hd, scratch.k16, scratch.v16);
    check_launch("gather_kv_kernel");
    for (int begin = 0; begin < seq.n_rows; begin += chunk) {
      const int n = std::min(chunk, seq.n_rows - begin);
      const int32_t* chunk_rows = rows + seq.row_begin + begin;
      gather_q_kernel<<<n, 256, 0, stream>>>(q, chunk_rows, n, p.n_head, hd, scratch.q16);
      check_launch("gather_q_kernel");
      // Column-major views, one batch entry per KV head, m_rows = its group * n query rows: scores (keys x
      // m_rows, ld keys) = K (hd x keys, transposed) * Q (hd x m_rows).
      const int m_rows = group * n;
      TESSERA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(keys), m_rows, hd, &scale, scratch.k16, CUDA_R_16F, hd,
          keys * hd, scratch.q16, CUDA_R_16F, hd, static_cast<int64_t>(m_rows) * hd, &zero, scratch.scores,
          CUDA_R_32F, static_cast<int>(keys), static_cast<int64_t>(m_rows) * keys, p.n_head_kv, CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
      causal_softmax_kernel<<<static_cast<unsigned>(p.n_head) * n, kSoftmaxThreads, 0, stream>>>(
          scratch.scores, chunk_rows, positions, n, static_cast<int>(keys), scratch.weights);
      check_launch("causal_softmax_kernel");
      // o (hd x m_rows) = V (hd x keys) * weights (keys x m_rows).
      TESSERA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          handle, CUBLAS_OP_N, CUBLAS_OP_N, hd, m_rows, static_cast<int>(keys), &one, scratch.v16, CUDA_R_16F, hd,
          keys * hd, scratch.weights, CUDA_R_16F, static_cast<int>(keys), static_cast<int64_t>(m_rows) * keys, &zero,
          scratch.o, CUDA_R_32F, hd, static_cast<int64_t>(m_rows) * hd, p.n_head_kv, CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
      scatter_output_kernel<<<n, 256, 0, stream>>>(scratch.o, chunk_rows, n, p.n_head, hd, out, out16);
      check_launch("scatter_output_kernel");
    }
  }
}

}  // namespace tessera::cuda
