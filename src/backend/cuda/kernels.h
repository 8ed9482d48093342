// Host-side entry points of the CUDA kernels, one op per .cu file. All pointers are device pointers unless a
// comment says otherwise; every function only enqueues work on `stream` (and checks the launch).
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/kv_format.h"
#include "gguf/ggml_type.h"

namespace tessera::cuda {

// A weight matrix in device memory, in its GGUF block format (Q6_K's bytes permuted within each row, see
// device_layout.h): n_rows rows of n_cols values, row_bytes apart.
struct DeviceMatrix {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
  int64_t n_cols = 0;
  int64_t n_rows = 0;
};

// Whether the matrix kernels handle this weight type, and the granule n_cols must be a multiple of.
bool supports_type(GgmlType type);
int column_granule(GgmlType type);

// ---- decode: y = W x for 1..kMaxMatvecTokens activation rows ----------------------------------------------
constexpr int kMaxMatvecTokens = 8;
constexpr int kMaxMatvecJobs = 3;
struct MatvecJob {
  DeviceMatrix w;
  float* y = nullptr;  // y[t * ldy + r]
  int64_t ldy = 0;
  bool accumulate = false;  // y += W x (fuses the residual add)
};

// Activation rows quantized to 8 bits for the integer decode kernels, like llama.cpp's Q8_1: per 32 consecutive
// values of a row, q = round-to-nearest-even(x * 127 / amax), d = amax / 127 and s = d * sum(q) (which carries
// the weights' offset terms). Unlike Q8_1, d and s stay f32 and q and (d, s) are separate planes, so that a lane
// loads 16 values with one aligned 128-bit load. Rows are contiguous: q [n_rows][ld], ds [n_rows][ld / 32].
// Where a kernel takes one optionally, q == nullptr means none.
struct Q8Rows {
  int8_t* q = nullptr;
  float2* ds = nullptr;
  int64_t ld = 0;  // values per row, a multiple of 32
};
constexpr int kQ8Block = 32;
// x [n_rows][ldx] (f32, n_rows <= kMaxMatvecTokens) -> out (its ld columns of each row).
void quantize_q8(const float* x, int64_t ldx, int n_rows, const Q8Rows& out, cudaStream_t stream);

// Whether the decode kernel for this weight type takes x quantized (Q8Rows, int8 dot products) instead of f32.
bool matvec_reads_q8(GgmlType type);
// Whether one matvec launch can take jobs of type `first` followed by jobs of type `second` (Q4_K then Q6_K, as
// in a Q4_K_M layer's Wq, Wk, Wv, for one token).
bool matvec_mixes_types(GgmlType first, GgmlType second, int64_t n_cols, int n_tokens);

// Decode steps fold RMSNorm into the matvecs on either side of it, which saves its launch. A Q8 block's integers
// do not depend on a row's scale, so the producer of the norm's input (the Wo or down matvec, which adds into the
// residual stream y) quantizes y * weight without the 1 / rms factor and leaves the sum of squares of each 32
// values of y; the consumers (Wq/Wk/Wv, gate/up) add those up and scale their outputs by 1 / rms.
struct NormScale {
  const float* sums = nullptr;  // [n_tokens][n / 32]; none: x is quantized as it is
  int n = 0;
  float eps = 0;
};
struct NormOutput {
  const float* weight = nullptr;  // [n]
  Q8Rows q8;                      // y * weight per token, without 1 / rms
  float* sums = nullptr;          // [n_tokens][n / 32]
};
// The widest rows whose sums a consumer block loads at once (a thread per 32 values).
constexpr int kMaxFusedNormWidth = 4096;
// Whether matvec_norm takes this matrix: an integer-kernel type whose rows (n = n_rows) are whole Q8 blocks, at
// most kMaxFusedNormWidth.
bool matvec_fuses_norm(const DeviceMatrix& w);

// Every job must have the same n_cols, and the same weight type except where matvec_mixes_types allows a switch
// (once, at one job); they share x ([n_tokens][ldx] f32) or, for the types of matvec_reads_q8, the same rows
// quantized (xq, ld == n_cols; may be none for the other types). One launch. norm (integer kernels only): x is
// an unscaled fused RMSNorm output (NormScale).
void matvec(const MatvecJob* jobs, int n_jobs, const float* x, int64_t ldx, const Q8Rows& xq, int n_tokens,
            cudaStream_t stream, const NormScale& norm = {});
// y += W xq for one job (accumulate, matvec_fuses_norm) and the next RMSNorm's part (NormOutput). One launch.
void matvec_norm(const MatvecJob& job, const Q8Rows& xq, int n_tokens, const NormOutput& norm, cudaStream_t stream);

// Decode, one token: out = silu(W_gate x) * (W_up x) quantized (out.ld == n_rows), in one launch that writes no
// f32 products: a block owns one Q8 block of the output. Both matrices of one integer-kernel type and shape, rows
// whole Q8 blocks; xq (must not be out) and norm as for matvec.
bool matvec_fuses_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up);
void matvec_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const Q8Rows& xq, const NormScale& norm,
                   const Q8Rows& out, cudaStream_t stream);

// ---- dequantization -----------------------------------------------------------------------------------------
// out[i] = row row_ids[i] of w (all rows in order when row_ids is null) as f32, n_out rows of n_cols.
void dequantize_rows_f32(const DeviceMatrix& w, const int32_t* row_ids, int64_t n_out, float* out, cudaStream_t stream);
void dequantize_rows_f16(const DeviceMatrix& w, const int32_t* row_ids, int64_t n_out, __half* out,
                         cudaStream_t stream);
void convert_f32_to_f16(const float* x, __half* y, int64_t n, cudaStream_t stream);

// ---- prompt processing: y = W x for many rows, on the tensor cores ---------------------------------------
// Dequantizes W to f16 in `w_scratch` (n_rows * n_cols halves) and multiplies with x16 (x as f16, [n_tokens]
// [n_cols]) through cuBLAS with f32 accumulation. F32 weights multiply in f32 straight from x32 instead.
// accumulate: y += W x.
void gemm(cublasHandle_t handle, const DeviceMatrix& w, const float* x32, const __half* x16, int64_t n_tokens, float* y,
          int64_t ldy, bool accumulate, __half* w_scratch, cudaStream_t stream);

// ---- elementwise ops ---------------------------------------------------------------------------------------
// y[r] = x[rows ? rows[r] : r] / sqrt(mean(x^2) + eps) * weight; rows of n values (ld = n). y16 (optional) gets
// an f16 copy for the tensor-core path, q8 (optional; n a multiple of 32, q8.ld == n) y quantized for the decode
// kernels.
void rms_norm(const float* x, const int32_t* rows, const float* weight, float* y, __half* y16, const Q8Rows& q8,
              int64_t n_rows, int n, float eps, cudaStream_t stream);

// out = silu(gate) * up over count values (rows of n, contiguous); out16 (optional) gets an f16 copy, q8
// (optional; n a multiple of 32, q8.ld == n) out quantized for the decode kernels.
void swiglu(const float* gate, const float* up, float* out, __half* out16, const Q8Rows& q8, int64_t count,
            cudaStream_t stream);

// ---- the KV cache ------------------------------------------------------------------------------------------
// One layer's keys (or values): a row of kv_dim = n_head_kv * head_dim values per cache slot, in a KvFormat.
// F32, F16, BF16: data [n_slots][kv_dim] values. Q8_0, Q4_0: the numbers of ggml's blocks of 32 consecutive
// values of a row (kv_format.h) in two planes, data [n_slots][kv_dim] int8 quants (Q4_0: [n_slots][kv_dim / 2]
// bytes, value k of a block in the low nibble of its byte k, value k + 16 in the high nibble, as ggml) and
// scales [n_slots][kv_dim / 32] f16: ggml's 34- and 18-byte blocks would leave a row's quants 2-byte aligned,
// planes keep them 16-byte aligned for the kernels' vector loads.
struct KvCache {
  uint8_t* data = nullptr;
  __half* scales = nullptr;  // the quantized formats'
};
// Bytes of n values' data (the quants of the quantized formats; n a multiple of 32 for them).
__host__ __device__ constexpr int64_t kv_data_bytes(KvFormat format, int64_t n) {
  return format == KvFormat::F32 ? 4 * n : format == KvFormat::Q8_0 ? n : format == KvFormat::Q4_0 ? n / 2 : 2 * n;
}
// Device bytes of a cache of n_slots rows (both planes, each 256-byte aligned), and the cache at `base`.
size_t kv_cache_device_bytes(KvFormat format, int64_t n_slots, int kv_dim);
KvCache kv_cache_at(void* base, KvFormat format, int64_t n_slots, int kv_dim);
// Copies rows [from, from + n) to rows [to, to + n), both planes (whole KV blocks).
void copy_kv_rows(const KvCache& cache, KvFormat format, int kv_dim, int64_t from, int64_t to, int64_t n,
                  cudaStream_t stream);

// The keys each token of a step sees beyond its own position's: with a sliding window, (window_begin, sink_end)
// = its oldest visible position apart from the sinks and the end of its sinks (at most window_begin); without,
// (0, 0). A token at position p sees [0, sink_end) and [window_begin, p]. The kernels take the step's windows or
// null, which means no token has a window.
using KeyWindow = int2;

// RoPE ("normal" mode: adjacent pairs) on q [n_tokens][n_head][head_dim] in place and on k, whose rotated rows
// go, with v's, straight into the cache rows slots[t] (in formats.k and formats.v); the k buffer itself is left
// unrotated.
struct RopeParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_dims = 0;
  float theta_scale = 1;  // freq_base^(-2/n_dims)
  float freq_scale = 1;
  const float* freq_factors = nullptr;  // [n_dims/2] or null
};
void rope_and_store_kv(const RopeParams& p, float* q, const float* k, const float* v, const int32_t* positions,
                       const int32_t* slots, int n_tokens, const KvCache& k_cache, const KvCache& v_cache,
                       KvFormats formats, cudaStream_t stream);

// Context shift (Backend::shift): copies the keys and values of slot copies[i].x to slot copies[i].y, then turns
// the keys of `slots` by RoPE's angles of `delta` positions, in place (through f32 for the f16 and quantized
// formats).
void copy_kv_slots(const KvCache& cache, KvFormat format, int kv_dim, const int2* copies, int n_copies,
                   cudaStream_t stream);
void rotate_cached_keys(const RopeParams& p, const KvCache& k_cache, KvFormat format, int delta, const int32_t* slots,
                        int n_slots, cudaStream_t stream);

// ---- attention ---------------------------------------------------------------------------------------------
// For each token t and query head h: out = softmax(q.k / sqrt(head_dim)) V over the keys token t sees (positions
// up to positions[t], within its KeyWindow windows[t]) of its sequence, whose KV blocks are
// block_table[table_offsets[t] ...] (kv_cache.cuh). GQA: query head h uses KV head h / (n_head / n_head_kv). Keys
// are split over n_splits blocks (flash decoding) when n_splits > 1; then `partials` needs
// n_tokens * n_head * n_splits * (head_dim + 2) floats. With f16 keys and values the query is rounded to f16 first,
// as ggml does before its f16 dot products.
struct AttentionParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  KvFormat k_format = KvFormat::F16;
  KvFormat v_format = KvFormat::F16;
  int kv_block_shift = 4;  // log2 of the KV cache's block size
  // decode_attention: at most this many query heads of a KV head per block (8: all of a group of up to 8, each
  // K/V row read by one block); 0 for the default (2, or TESSERA_DECODE_HEADS).
  int max_decode_heads = 0;
};
void attention(const AttentionParams& p, const float* q, const KvCache& k_cache, const KvCache& v_cache,
               const int32_t* positions, const KeyWindow* windows, const int32_t* table_offsets,
               const int32_t* block_table, int n_tokens, int n_splits, float* partials, float* out,
               cudaStream_t stream);
size_t attention_partials_floats(const AttentionParams& p, int n_tokens, int n_splits);

// Decode steps (1..kMaxMatvecTokens tokens): the same attention with RoPE and the KV-cache store fused in. q, k
// and v are the step's projections ([n_tokens][q_dim], [n_tokens][kv_dim] x2, none rotated, none changed); the
// rotated key and the value of token t go into cache slot write_slots[t] (as rope_and_store_kv would), and the
// keys a token sees that tokens of this step write (its own, and those of earlier tokens of its sequence) are
// taken from k and v, not from the cache. n_splits as above; out_q8 (optional; needs
// decode_attention_fuses_q8, out_q8.ld == q_dim) gets out quantized for the Wo matvec. Quantized keys meet the
// query quantized to 8 bits per 32 values in integer dot products (as the CPU backend's), values are decoded in
// registers.
// Supported: keys and values in one format; head_dim even, <= 256, rows of whole 16 bytes; the quantized formats
// with head_dim a multiple of 32.
bool decode_attention_supported(const AttentionParams& p);
bool decode_attention_fuses_q8(const AttentionParams& p);   // head_dim a multiple of 32
// The split count for a step whose longest sequence has max_keys keys: the fewest (a power of two, at most
// max_splits) whose blocks each hold their keys in shared memory at once.
int decode_attention_splits(const AttentionParams& p, int max_keys, int max_splits);
// Configures the kernel for p (its shared memory); call once before capturing a graph that launches it.
void decode_attention_prepare(const AttentionParams& p);
void decode_attention(const AttentionParams& p, const RopeParams& rope, const float* q, const float* k, const float* v,
                      const int32_t* positions, const KeyWindow* windows, const int32_t* write_slots,
                      const int32_t* table_offsets, const int32_t* block_table, int n_tokens, int n_splits,
                      const KvCache& k_cache, const KvCache& v_cache, float* partials, float* out,
                      const Q8Rows& out_q8, cudaStream_t stream);

// ---- prompt attention on the tensor cores -------------------------------------------------------------------
// The same result for the tokens of a prompt step, sequence by sequence, as flash attention (no score matrix in
// memory): a sequence's tokens are the step's tokens row_begin .. row_begin + n_rows - 1, its keys positions
// 0 .. n_keys - 1 (n_keys = its largest position in the step + 1; each token sees those of its KeyWindow) in the
// KV blocks block_table[table_offset ...]. Keys and values in f16, q8_0 or q4_0 each; the quantized ones are
// decoded to f16 tile by tile on the way into shared memory.
struct PromptSequence {
  int row_begin = 0;
  int n_rows = 0;
  int table_offset = 0;
  int n_keys = 0;
};
// Keys and values each f16, q8_0 or q4_0, and a head dimension that is a multiple of 8, up to 128.
bool prompt_attention_supported(const AttentionParams& p);
// out [n_tokens][q_dim] (and out16, when given, its f16 copy) for every row of the sequences.
void prompt_attention(const AttentionParams& p, const float* q, const KvCache& k_cache, const KvCache& v_cache,
                      const int32_t* positions, const KeyWindow* windows, const int32_t* block_table,
                      const PromptSequence* sequences, int n_sequences, float* out, __half* out16,
                      cudaStream_t stream);

}  // namespace tessera::cuda
