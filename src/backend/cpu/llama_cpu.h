// The llama forward pass on the CPU. Split into embed / layers / output so that the hybrid backend can run some
// layers here and the rest on a GPU.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/huge_page_buffer.h"
#include "backend/cpu/matmul_runner.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/thread_pool.h"
#include "model/llama.h"

namespace tessera::cpu {

class LlamaCpu {
 public:
  // Holds the KV cache of layers [first_layer, last_layer) only (the hybrid backend gives the rest to the GPU).
  LlamaCpu(const model::LlamaModel& model, const BackendOptions& options, int first_layer, int last_layer);

  // x[t] = token_embd row of tokens[t]                                              x: [n_tokens][n_embd]
  void embed(std::span<const int32_t> tokens, float* x);
  // Copies whole KV blocks of this CPU's layers.
  void copy_kv_blocks(std::span<const KvBlockCopy> copies);
  // A context shift in this CPU's layers (Backend::shift, after the block copies).
  void shift_kv(const KvShift& shift);
  // Runs layers [first_layer, last_layer) over x in place. When `last_is_final`, the final layer computes its
  // feed-forward only for the plan's output rows and leaves those rows, compacted, at the front of x.
  void run_layers(const StepPlan& plan, float* x, bool last_is_final);
  // logits[r] = output(rmsnorm(x[r]) * output_norm) for r < n_rows                 logits: [n_rows][n_vocab]
  void output(const float* x, int64_t n_rows, float* logits);

  uint64_t kv_cache_bytes() const { return kv_buffer_.size(); }
  int n_threads() const { return pool_.size(); }
  std::span<const uint8_t> interleaved_weights() const { return matmul_.interleaved_weights(); }

 private:
  void layer(int il, const StepPlan& plan, float* x, bool final_layer);
  void store_kv(int il, const StepPlan& plan);
  void attention(int il, const StepPlan& plan);

  const model::LlamaModel& model_;
  KvFormats kv_format_;
  int n_slots_;
  int block_size_;
  int first_layer_;
  int last_layer_;
  ThreadPool pool_;
  MatmulRunner matmul_;

  // Keys and values of this CPU's layers, in one buffer on huge pages. One layer's keys (or values) are
  // [n_head_kv / heads_per_row][n_slots] rows of heads_per_row * head_dim values in their format (kv_format.h; the
  // quantized formats as ggml's blocks). A row is one KV head's, or, for a quantized format and a head dimension
  // under 32, the heads that share a block. Head-major, so the slots of a sequence's cache block are one
  // contiguous run of rows, which attention reads in one go.
  struct CacheLayout {
    KvFormat format = KvFormat::F16;
    int heads_per_row = 1;
    int row_values = 0;
    size_t row_bytes = 0;
    size_t layer_bytes = 0;
    // The row holding KV head h of `slot`, and where h's values start in it.
    int64_t row(int h, int32_t slot, int n_slots) const {
      return static_cast<int64_t>(h / heads_per_row) * n_slots + slot;
    }
    int offset_in_row(int h, int head_dim) const { return h % heads_per_row * head_dim; }
  };
  CacheLayout cache_layout(KvFormat format) const;
  HugePageBuffer kv_buffer_;
  CacheLayout k_layout_, v_layout_;
  uint8_t* k_cache(int il) const {
    return kv_buffer_.data() + (il - first_layer_) * (k_layout_.layer_bytes + v_layout_.layer_bytes);
  }
  uint8_t* v_cache(int il) const { return k_cache(il) + k_layout_.layer_bytes; }
  // Where the row of KV head h of `slot` starts in cache (a layer's keys or values laid out as `l`).
  uint8_t* row_at(uint8_t* cache, const CacheLayout& l, int h, int32_t slot) const {
    return cache + l.row(h, slot, n_slots_) * l.row_bytes;
  }

  // Activations, grown to the largest step seen and then reused.
  std::vector<RopeAngles> rope_;  // [n_tokens]: depend only on position, so computed once per forward
  std::vector<float> norm_;     // [n_tokens][n_embd]
  std::vector<float> q_;        // [n_tokens][q_dim]
  std::vector<float> k_;        // [n_tokens][kv_dim]
  std::vector<float> v_;        // [n_tokens][kv_dim]
  std::vector<float> attn_;     // [n_tokens][q_dim]
  std::vector<float> proj_;     // [n_tokens][n_embd]
  std::vector<float> gate_;     // [n_tokens][n_ff]
  std::vector<float> up_;       // [n_tokens][n_ff]
  std::vector<std::vector<float>> scratch_;  // per thread: gathered keys, values and scores of one KV head
  std::vector<std::vector<uint8_t>> query_q8_;  // per thread: a block's queries quantized (quantized keys)
};

}  // namespace tessera::cpu
