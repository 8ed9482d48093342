// The llama forward pass on the CPU. Split into embed / layers / output so that the hybrid backend can run some
// layers here and the rest on a GPU.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/huge_page_buffer.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/row_ranges.h"
#include "backend/cpu/thread_pool.h"
#include "model/llama.h"

namespace tessera::cpu {

class LlamaCpu {
 public:
  // Holds the KV cache of layers [first_layer, last_layer) only (the hybrid backend gives the rest to the GPU).
  LlamaCpu(const model::LlamaModel& model, const BackendOptions& options, int first_layer, int last_layer);

  // x[t] = token_embd row of tokens[t]                                              x: [n_tokens][n_embd]
  void embed(std::span<const int32_t> tokens, float* x);
  // Runs layers [first_layer, last_layer) over x in place. When `last_is_final`, the final layer computes its
  // feed-forward only for batch.output_rows and leaves those rows, compacted, at the front of x.
  void run_layers(const ForwardBatch& batch, float* x, bool last_is_final);
  // logits[r] = output(rmsnorm(x[r]) * output_norm) for r < n_rows                 logits: [n_rows][n_vocab]
  void output(const float* x, int64_t n_rows, float* logits);

  uint64_t kv_cache_bytes() const;
  int n_threads() const { return pool_.size(); }
  // The repacked matrices, which decode streams once per token.
  std::span<const uint8_t> interleaved_weights() const {
    return {interleaved_buffer_.data(), interleaved_buffer_.size()};
  }

  // y[t] = W x[t] for each (W, y) pair, all in one parallel loop; x is quantized once per activation type.
  struct MatmulJob {
    const model::MatrixView* w;
    float* y;  // [n_tokens][w->n_rows]
  };
  static constexpr size_t kMaxMatmulJobs = 3;
  void matmuls(std::initializer_list<MatmulJob> jobs, const float* x, int64_t n_tokens);

 private:
  // A job with its weights' layout and its quantized input.
  struct Resolved {
    const model::MatrixView* w;
    float* y;
    const uint8_t* interleaved;  // null: the GGUF layout
    const uint8_t* xq;           // [n_tokens][xq_row_bytes]
    size_t xq_row_bytes;
  };
  Resolved resolve(const MatmulJob& job, const uint8_t* xq, size_t xq_row_bytes) const;
  // Quantizes x into xq_ once per activation format the jobs need; returns the number of jobs resolved.
  size_t prepare(std::initializer_list<MatmulJob> jobs, const float* x, int64_t n_tokens,
                 std::array<Resolved, kMaxMatmulJobs>& resolved);
  void multiply_rows(const Resolved& job, int64_t row_begin, int64_t row_end, int64_t n_tokens);
  // on_claim(claim) for every claim of these jobs' rows, shared out among the threads by ranges_; row_bytes (of
  // the first job) sizes the smallest claim. Defined in llama_cpu.cpp, its only user.
  template <class OnClaim>
  void for_each_claim(std::span<const int64_t> job_rows, size_t row_bytes, const OnClaim& on_claim);
  void run_matmuls(std::span<const Resolved> jobs, int64_t n_tokens);
  // proj = W_down (silu(W_gate x) * W_up x); gate_ holds the SwiGLU afterwards, up_ the up projection.
  void feed_forward(const model::LlamaLayer& w, const float* x, int64_t n_tokens);

  void interleave_weights();
  void layer(int il, const ForwardBatch& batch, float* x, bool final_layer);
  void store_kv(int il, const ForwardBatch& batch);
  void attention(int il, const ForwardBatch& batch);

  const model::LlamaModel& model_;
  KvCacheType kv_type_;
  int n_slots_;
  int first_layer_;
  int last_layer_;
  ThreadPool pool_;

  // The matrices this CPU has an interleaved kernel for, rearranged once (quant/interleaved.h); the file's pages
  // of each are released afterwards, so the model stays resident once.
  HugePageBuffer interleaved_buffer_;
  std::unordered_map<const model::MatrixView*, const uint8_t*> interleaved_;

  // Keys and values of this CPU's layers, each [n_head_kv][n_slots][head_dim] f16 or f32, in one buffer on huge
  // pages. Head-major, so the slots of a sequence's cache block are one contiguous run of a KV head's rows, which
  // attention gathers in one copy.
  HugePageBuffer kv_buffer_;
  size_t kv_layer_bytes_ = 0;  // of one layer's keys (or values)
  uint8_t* k_cache(int il) const { return kv_buffer_.data() + 2 * (il - first_layer_) * kv_layer_bytes_; }
  uint8_t* v_cache(int il) const { return k_cache(il) + kv_layer_bytes_; }
  // Where KV head h of `slot` starts in a layer's keys or values, in elements.
  int64_t kv_offset(int h, int32_t slot) const {
    return (static_cast<int64_t>(h) * n_slots_ + slot) * model_.config.head_dim;
  }

  // Activations, grown to the largest batch seen and then reused.
  std::vector<RopeAngles> rope_;  // [n_tokens]: depend only on position, so computed once per forward
  std::vector<float> norm_;     // [n_tokens][n_embd]
  std::vector<float> q_;        // [n_tokens][q_dim]
  std::vector<float> k_;        // [n_tokens][kv_dim]
  std::vector<float> v_;        // [n_tokens][kv_dim]
  std::vector<float> attn_;     // [n_tokens][q_dim]
  std::vector<float> proj_;     // [n_tokens][n_embd]
  std::vector<float> gate_;     // [n_tokens][n_ff]
  std::vector<float> up_;       // [n_tokens][n_ff]
  std::vector<uint8_t> xq_;     // quantized activations, [n_tokens][activation row bytes]
  std::vector<uint8_t> swiglu_xq_;  // the down projection's quantized input, [n_tokens][activation row bytes]
  std::vector<std::atomic<int64_t>> piece_rows_done_;  // decode feed_forward: gate and up rows done per piece
  RowRanges ranges_;  // matmuls' rows, shared out among the threads
  std::vector<std::vector<float>> scratch_;  // per thread: gathered keys, values and scores of one KV head
};

}  // namespace tessera::cpu
